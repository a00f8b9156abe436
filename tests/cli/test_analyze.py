"""`resnetlab analyze curves|responses` and `resnetlab reproduce` from the command line."""

import json
from types import SimpleNamespace

import numpy as np
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


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(f in err for f in fragments), err
    return err


@pytest.mark.parametrize(
    "flags, typed", [(["--procs", "2"], "--procs 2"), (["--threads", "1"], "--threads 1")], ids=["procs", "threads"]
)
def test_reproduce_cpu_flags_on_cuda_are_refused(tmp_path, capsys, monkeypatch, flags, typed):
    """On a GPU machine (--device auto resolves to cuda), --procs / --threads: one line naming what was
    typed and what to use instead, nothing written."""
    import resnetlab.utils.device

    monkeypatch.setattr(resnetlab.utils.device, "resolve_device", lambda name="auto": torch.device("cuda"))
    assert main(["reproduce", "degradation", "--out", str(tmp_path / "rep"), *flags]) == 2
    one_line_error(capsys, typed, "--device auto is cuda", "--device cpu", "--jobs-per-gpu")
    assert not (tmp_path / "rep").exists()


def test_reproduce_unknown_net_is_one_line(tmp_path, capsys):
    assert main(["reproduce", "degradation", "--out", str(tmp_path / "rep"), "--nets", "resnet20", "resnet19"]) == 2
    one_line_error(capsys, "--nets resnet19", "plain20, plain56, resnet20, resnet56")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["cifar-section", "--out", "o", "--rerun-changed", "--set", "optim.lr=0.2"],
        ["table6", "--seeds", "3", "--dataset", "imagefolder", "--data-dir", "d x", "--schedule", "short",
         "--iters", "80", "--eval-every", "20", "--procs", "2", "--threads", "1", "--budget-s", "60",
         "--nets", "resnet20", "resnet56", "--with-1202", "--no-responses", "--no-tf32", "--batch-runs", "2",
         "--report-only"],
    ],
)  # fmt: skip
def test_the_recorded_command_line_parses_back_to_the_same_grid(argv):
    """commands.txt's line for a `reproduce` call, parsed again, gives the same arguments (all but
    --status and --quiet, which change what is printed, not what is trained)."""
    import shlex

    from resnetlab.cli import build_parser
    from resnetlab.cli.analyze import _command_line

    parser = build_parser()
    args = parser.parse_args(["reproduce", *argv])
    line = _command_line(args)
    words = shlex.split(line)
    assert words[:2] == ["resnetlab", "reproduce"]
    again = parser.parse_args(words[1:])
    same = {k: v for k, v in vars(args).items() if k not in ("status", "quiet", "func")}
    assert {k: v for k, v in vars(again).items() if k in same} == same, line


def jpeg_folder(root, size=16, train=4, test=2):
    """A two-class ImageFolder (train/ + test/, CIFAR-10's JPEG layout) of `size`-pixel noise images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.jpg"
                )
    return root


def test_reproduce_procs_end_to_end(tmp_path, capsys):
    """The real worker, two CPU processes of one thread: `--nets` trains two of the degradation grid's
    runs and reports them; the same command without --nets trains the other two and reports all four."""
    data, out = jpeg_folder(tmp_path / "jpeg"), tmp_path / "rep"
    argv = ["reproduce", "degradation", "--dataset", "imagefolder", "--data-dir", str(data), "--out", str(out)]
    argv += ["--schedule", "short", "--iters", "4", "--eval-every", "2", "--device", "cpu", "--max-images", "4"]
    argv += ["--procs", "2", "--threads", "1", "--quiet"]
    argv += ["--set", "train.batch_size=4", "train.eval_batch_size=8", "data.workers=0"]
    assert main([*argv, "--nets", "resnet20", "plain20"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["plain20-seed0", "resnet20-seed0"]
    assert [json.loads(line)["iter"] for line in (out / "plain20-seed0" / "metrics.jsonl").open()] == [2, 4]
    assert [r["label"] for r in json.loads((out / "responses.json").read_text())] == ["plain-20", "ResNet-20"]
    assert main(argv) == 0
    runs = ["plain20-seed0", "plain56-seed0", "resnet20-seed0", "resnet56-seed0"]
    assert all((out / run / "final.pt").is_file() for run in runs)
    for run in runs:  # each trained by a worker with one intra-op thread, told so in its job.yaml
        assert "intra-op threads: 1" in (out / run / "train.log").read_text()
        assert yaml.safe_load((out / run / "job.yaml").read_text())["train"]["device"] == "cpu"
    table = (out / "table.md").read_text()
    assert all(f"| {label} |" in table for label in ("plain-20", "plain-56", "ResNet-20", "ResNet-56"))
    assert len(json.loads((out / "responses.json").read_text())) == 4 and (out / "curves.png").is_file()
    commands = (out / "commands.txt").read_text().splitlines()
    assert commands[0].endswith("--procs 2 --threads 1 --nets resnet20 plain20") and len(commands) == 2
    assert "--procs 2 --threads 1" in commands[1] and "--nets" not in commands[1]


def test_report_only_reports_the_finished_runs_and_trains_nothing(tmp_path, capsys):
    """--report-only: the table and figures of the runs finished so far, the others named, none trained;
    a grid with none finished is one line."""
    data, out = jpeg_folder(tmp_path / "jpeg"), tmp_path / "rep"
    argv = ["reproduce", "degradation", "--dataset", "imagefolder", "--data-dir", str(data), "--out", str(out)]
    argv += ["--schedule", "short", "--iters", "4", "--eval-every", "2", "--device", "cpu", "--max-images", "4"]
    argv += ["--quiet", "--set", "train.batch_size=4", "train.eval_batch_size=8", "data.workers=0"]
    argv += ["--nets", "resnet20", "plain20"]
    assert main(argv) == 0
    (out / "plain20-seed0" / "final.pt").unlink()  # as if still training: its checkpoint of iteration 2 is there
    for name in ("table.md", "responses.json"):
        (out / name).unlink()
    capsys.readouterr()
    assert main([*argv, "--report-only"]) == 0
    printed = capsys.readouterr().out
    assert "report of 1 of 2 runs; not finished: plain20-seed0" in printed
    table = (out / "table.md").read_text()
    assert "| ResNet-20 |" in table and "plain-20" not in table
    assert [r["label"] for r in json.loads((out / "responses.json").read_text())] == ["ResNet-20"]
    assert not (out / "plain20-seed0" / "final.pt").exists()  # not trained on
    assert (out / "commands.txt").read_text().splitlines()[-1].endswith("--report-only")
    (out / "resnet20-seed0" / "final.pt").unlink()
    assert main([*argv, "--report-only"]) == 2
    one_line_error(capsys, f"no finished runs under {out}")


def test_a_refused_reproduce_leaves_no_line_in_commands_txt(tmp_path, capsys):
    """commands.txt says how the results were made: an invocation refused for a folder of another
    recipe trained nothing and is not in it. An --out that is a file is one line, not "unexpected"."""
    out = tmp_path / "rep"
    (out / "plain20-seed0").mkdir(parents=True)
    (out / "plain20-seed0" / "config.yaml").write_text("optim: {lr: 0.5}\n")  # a run of another recipe
    argv = ["reproduce", "degradation", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "fm")]
    argv += ["--schedule", "short", "--iters", "4", "--device", "cpu", "--nets", "plain20"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "holds a run of another recipe: " in capsys.readouterr().err
    assert not (out / "commands.txt").exists()
    (tmp_path / "afile").write_text("")
    assert main([*argv, "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path / 'afile'}: cannot write the grid there") and "unexpected" not in err
