"""`resnetlab analyze curves|responses` and `resnetlab reproduce` from the command line."""

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

import resnetlab.data
from resnetlab.cli import main
from resnetlab.config import Config, ModelConfig, to_dict
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic


def make_run(path, name):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": {"name": name}}))
    rows = [{"iter": i, "train_error": 90 - i / 10, "test_error": 91 - i / 10} for i in (100, 200, 300)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_curves(tmp_path, capsys):
    runs = [make_run(tmp_path / n, n) for n in ("cifar_plain20", "cifar_resnet20", "cifar_resnet56")]
    assert main(["analyze", "curves", *runs, "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_curves_without_metrics_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main(["analyze", "curves", str(tmp_path / "nothing"), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.jsonl" in err and len(err.splitlines()) == 1


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A cifar_resnet8 checkpoint on a fake 1-channel 12x12 test set of 20 images."""
    options = {"depth": 8, "num_classes": 10, "in_channels": 1}
    model = create_model("cifar_resnet", **options)
    cfg = Config(model=ModelConfig(name="cifar_resnet", depth=8))
    path = tmp_path / "final.pt"
    meta = {"model": "cifar_resnet", "model_options": options}
    save_atomic({"model": model.state_dict(), "config": to_dict(cfg), "meta": meta}, path)
    images = torch.randn(20, 1, 12, 12, generator=torch.Generator().manual_seed(0))

    class FakeTest:  # the EvalSource contract: batches() and len()
        def batches(self):
            return iter([(images[:8], None), (images[8:], None)])

        def __len__(self):
            return len(images)

    test = FakeTest()
    monkeypatch.setattr(resnetlab.data, "build_data", lambda cfg, device: SimpleNamespace(test=test))
    return path


def test_responses_json_and_figure(checkpoint, tmp_path, capsys):
    out = tmp_path / "r.png"
    code = main(["analyze", "responses", "--checkpoint", str(checkpoint), str(checkpoint), "--json"]
                + ["--out", str(out), "--max-images", "10", "--device", "cpu"])  # fmt: skip
    assert code == 0 and out.is_file()
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2 and results[0]["label"] == "ResNet-8" and results[0]["images"] == 10
    assert results[0]["test_error"] is None  # the fake test set has no labels
    assert list(results[0]["layers"]) == [f"layer{s}.0.bn{b}" for s in (1, 2, 3) for b in (1, 2)]


def test_responses_needs_an_output(checkpoint, capsys):
    assert main(["analyze", "responses", "--checkpoint", str(checkpoint)]) == 2
    assert "--out" in capsys.readouterr().err


def test_reproduce_rejects_unknown_grid(capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "table7"])
    assert e.value.code == 2
