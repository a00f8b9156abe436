"""ONNX export against onnxruntime, TorchScript and torch.export (.pt2) round trips, torchvision
weights import, predict."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnetlab.errors import UserError
from resnetlab.evaluate import evaluate_checkpoints, export_checkpoint, import_weights, load_model, predict

CLASSES10 = [f"class{i}" for i in range(10)]


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def check_onnx(tmp_path, tree, write_checkpoint, model: str, size: int, classes=CLASSES10):
    ck = write_checkpoint(tmp_path / f"{model}.pt", tree, model=model, classes=classes)
    out = export_checkpoint(ck, "onnx", tmp_path / f"{model}.onnx", image_size=size)
    net = load_model(ck, torch.device("cpu")).model
    for batch in (1, 3):  # the batch dimension is dynamic
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            expected = net(x)
        got = run_onnx(out, x)
        assert got.shape == (batch, len(classes))
        assert (got - expected).abs().max().item() < 1e-4
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["resnetlab.model"] == model and props["resnetlab.classes"].startswith('["class0"')


@pytest.mark.parametrize(("model", "size"), [("cifar_resnet20", 32), ("resnet18", 64)])
def test_onnx_matches_pytorch(tmp_path, tree, write_ck, model, size):
    check_onnx(tmp_path, tree, write_ck, model, size)


@pytest.mark.slow
def test_onnx_resnet50_matches_pytorch(tmp_path, tree, write_ck):
    check_onnx(tmp_path, tree, write_ck, "resnet50", 64)


def test_torchscript_round_trip(tmp_path, tree, write_ck):
    ck = write_ck(tmp_path / "c.pt", tree, model="cifar_resnet20")
    out = export_checkpoint(ck, "torchscript", tmp_path / "c.ts")
    loaded = torch.jit.load(str(out))
    net = load_model(ck, torch.device("cpu")).model
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x))


@pytest.mark.parametrize(("model", "size"), [("cifar_resnet20", 32), ("resnet18", 64)])
def test_pt2_loads_back_and_matches_eager(tmp_path, tree, write_ck, model, size):
    """torch.export's program, saved and loaded back, against the eager model at two batch sizes."""
    import json

    ck = write_ck(tmp_path / "c.pt", tree, model=model, classes=CLASSES10)
    out = export_checkpoint(ck, "pt2", tmp_path / "c.pt2", image_size=size)
    extra = {"resnetlab.json": ""}
    loaded = torch.export.load(str(out), extra_files=extra).module()
    net = load_model(ck, torch.device("cpu")).model
    for batch in (1, 3):  # the batch dimension is dynamic
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)
    meta = json.loads(extra["resnetlab.json"])
    assert meta["resnetlab.model"] == model and json.loads(meta["resnetlab.classes"]) == CLASSES10
    assert meta["resnetlab.image_size"] == str(size)  # the size the graph takes, not the training crop


def test_onnx_without_the_export_extra_says_how_to_install_it(tmp_path, checkpoints, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(UserError, match=r"^--format onnx needs the export extra: pip install 'resnetlab\[export\]'"):
        export_checkpoint(checkpoints["a"], "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_format(tmp_path, checkpoints):
    with pytest.raises(UserError, match="format"):
        export_checkpoint(checkpoints["a"], "tflite", tmp_path / "x")


def test_predict_gives_five_classes(tmp_path, tree, write_ck):
    ck = write_ck(tmp_path / "c.pt", tree, model="resnet18", classes=CLASSES10)
    images = sorted(str(p) for p in (tree / "val").rglob("*.JPEG"))[:2]
    results = predict(images, [ck], device="cpu")
    assert [r["image"] for r in results] == images
    for r in results:
        names, probs = zip(*r["top"])
        assert len(names) == 5 and set(names) <= set(CLASSES10)
        assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_import_torchvision_weights(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=1000).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the comparison means something
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    pth = tmp_path / "resnet18-test.pth"
    torch.save(tv.state_dict(), pth)
    meta = import_weights(pth, "resnet18", tmp_path / "r18.pt")
    assert meta["classes"][0] == "tench" and meta["num_classes"] == 1000
    loaded = load_model(tmp_path / "r18.pt", torch.device("cpu"))
    torch.testing.assert_close(loaded.meta["mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), tv(x))
    # Normalised as torchvision does: (x / 255 - mean) / std.
    raw = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (raw.float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    torch.testing.assert_close(loaded.normalize(raw), expected)


def test_a_one_channel_torchvision_file_gets_grey_statistics_and_predicts(tmp_path):
    """A conv1 of one input channel: ImageNet's mean as PIL turns it to grey, not the 3-channel one
    that no checkpoint of one channel can be rebuilt with."""
    from PIL import Image

    tv = torchvision.models.resnet18(num_classes=4)
    tv.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(tv.state_dict(), tmp_path / "grey.pth")
    meta = import_weights(tmp_path / "grey.pth", "resnet18", tmp_path / "grey.pt")
    mean_rgb = tuple(round(255 * m) for m in (0.485, 0.456, 0.406))
    grey_mean = Image.new("RGB", (1, 1), mean_rgb).convert("L").getpixel((0, 0)) / 255  # PIL's luma
    assert meta["mean"].shape == (1, 1, 1) and meta["std"].shape == (1, 1, 1)
    assert abs(meta["mean"].item() - grey_mean) < 1.5 / 255
    Image.new("RGB", (40, 30), (200, 10, 90)).save(tmp_path / "a.png")
    rows = predict([str(tmp_path / "a.png")], [str(tmp_path / "grey.pt")], top=2, device="cpu", workers=0)
    assert rows[0]["error"] is None and len(rows[0]["top"]) == 2
    # evaluate reads the images as grey too (it fed the grey model 3 channels); no folder of this
    # machine is stored as the data to evaluate on ($RESNETLAB_DATA or --data-dir decide)
    assert "dir" not in torch.load(tmp_path / "grey.pt", weights_only=True)["config"]["data"]
    for label in ("0", "1", "2", "3"):
        folder = tmp_path / "data" / "imagenet" / "val" / label
        folder.mkdir(parents=True)
        Image.new("RGB", (40, 30), (60 * int(label), 10, 90)).save(folder / "x.png")
    for protocol in ("center", "10crop"):
        r = evaluate_checkpoints([str(tmp_path / "grey.pt")], protocol=protocol, data_dir=str(tmp_path / "data"),
                                 workers=0, device="cpu")  # fmt: skip
        assert r["images"] == 4


def test_import_refuses_a_mismatched_file(tmp_path):
    pth = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pth)
    with pytest.raises(UserError, match="not a torchvision resnet50 state dict .* missing keys, e.g. layer"):
        import_weights(pth, "resnet50", tmp_path / "x.pt")
    with pytest.raises(UserError, match="resnet18/34/50/101/152"):
        import_weights(pth, "cifar_resnet20", tmp_path / "x.pt")


def test_import_of_a_full_pickle_says_how_to_convert_safely(tmp_path):
    """A file that pickles a whole module: refused without loading it, one plain line, and the advice
    never is weights_only=False (what torch's own message suggests)."""
    pth = tmp_path / "whole-model.pth"
    torch.save(torchvision.models.resnet18(), pth)
    with pytest.raises(UserError) as e:
        import_weights(pth, "resnet18", tmp_path / "x.pt")
    msg = str(e.value)
    assert "not a plain tensor dictionary" in msg and "torch.save(model.state_dict()" in msg
    assert "weights_only" not in msg and "\x1b" not in msg and "\n" not in msg
    assert not (tmp_path / "x.pt").exists()


def test_import_of_a_truncated_file(tmp_path):
    pth = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pth)
    pth.write_bytes(pth.read_bytes()[:1000])
    with pytest.raises(UserError, match="unreadable or truncated"):
        import_weights(pth, "resnet18", tmp_path / "x.pt")


def test_a_failed_export_leaves_nothing_and_makes_no_folder(tmp_path, tree, write_ck, monkeypatch):
    ck = write_ck(tmp_path / "c.pt", tree, model="cifar_resnet20")
    before = sorted(p.name for p in tmp_path.iterdir())

    def broken(*args, **kwargs):
        raise RuntimeError("exporter failed half-way")

    monkeypatch.setattr(torch.jit, "save", lambda module, path: (open(path, "wb").write(b"half"), broken()))
    with pytest.raises(RuntimeError, match="half-way"):
        export_checkpoint(ck, "torchscript", tmp_path / "c.ts")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no c.ts, no temp file
    with pytest.raises(UserError, match=r"folder .*missing does not exist"):
        export_checkpoint(ck, "torchscript", tmp_path / "missing" / "c.ts")
    with pytest.raises(UserError, match=r"is a folder; name the file to write, e.g. --out .*model.pt2"):
        export_checkpoint(ck, "pt2", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("fmt", ["weights", "weights-fp16"])
def test_weights_export_drops_the_training_state_and_evaluates_as_the_original(tmp_path, tree, write_ck, fmt):
    """The slim file holds the original's weights (rounded to fp16 for weights-fp16), its meta and
    config, no optimizer; it rebuilds through load_model and computes what the original computes."""
    from resnetlab.utils.checkpoint import load, save_atomic

    ck = write_ck(tmp_path / "c.pt", tree, model="cifar_resnet20", classes=CLASSES10)
    full = load(ck)
    full.pop("format")
    momentum = {k: torch.randn_like(v) for k, v in full["model"].items() if v.is_floating_point()}
    save_atomic({**full, "optimizer": {"state": momentum}, "iteration": 7}, ck)  # as training writes it
    out = export_checkpoint(ck, fmt, tmp_path / "slim.pt")

    stored = torch.load(out, map_location="cpu", weights_only=True)
    assert "optimizer" not in stored and "iteration" not in stored
    assert stored["meta"]["model"] == "cifar_resnet20" and torch.equal(stored["meta"]["mean"], full["meta"]["mean"])
    half = fmt == "weights-fp16"
    for k, v in full["model"].items():
        expected = v.to(torch.float16) if half and v.dtype == torch.float32 else v
        assert stored["model"][k].dtype == expected.dtype and torch.equal(stored["model"][k], expected), k
    assert out.stat().st_size < ck.stat().st_size * (0.3 if half else 0.55)  # no momentum; fp16 halves again

    original, slim = (load_model(p, torch.device("cpu")).model for p in (ck, out))
    assert all(p.dtype == torch.float32 for p in slim.parameters())  # fp16 storage, fp32 compute
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = original(x), slim(x)
    if half:  # weights rounded to 11 significant bits: logits move by ~1e-3 of their range, not more
        assert not torch.equal(a, b)
        assert (a - b).abs().max() < 1e-2 * a.abs().max()
        assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.95
    else:
        assert torch.equal(a, b)
    # Exported again as `weights`: fp32 storage, and the label still says the values were rounded to fp16.
    again = torch.load(export_checkpoint(out, "weights", tmp_path / "again.pt"), map_location="cpu", weights_only=True)
    assert again["meta"]["weights_dtype"] == ("fp16" if half else "fp32")
    assert all(v.dtype == torch.float32 for v in again["model"].values() if v.is_floating_point())


def test_weights_fp16_keeps_in_fp32_a_tensor_fp16_cannot_hold(tmp_path, tree, write_ck):
    """A BN running variance of 3e5 (a trained plain-56's first layers hold such) is inf in fp16: that
    tensor stays fp32, every other is fp16, and the network computes as the original, not as one
    whose BN divides by inf."""
    from resnetlab.utils.checkpoint import load, save_atomic

    ck = write_ck(tmp_path / "c.pt", tree, model="cifar_resnet20", classes=CLASSES10)
    full = load(ck)
    full.pop("format")
    var = "layer1.0.bn1.running_var"
    full["model"][var] = full["model"][var].clone().fill_(3.0e5)
    full["model"]["layer1.0.conv1.weight"] = full["model"]["layer1.0.conv1.weight"] * 300.0  # BN's input as large
    save_atomic(full, ck)
    assert torch.isinf(full["model"][var].half()).all()
    stored = torch.load(
        export_checkpoint(ck, "weights-fp16", tmp_path / "slim.pt"), map_location="cpu", weights_only=True
    )
    assert stored["model"][var].dtype == torch.float32 and torch.equal(stored["model"][var], full["model"][var])
    assert {v.dtype for k, v in stored["model"].items() if k != var and v.is_floating_point()} == {torch.float16}

    original, slim = (load_model(p, torch.device("cpu")).model for p in (ck, tmp_path / "slim.pt"))
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = original(x), slim(x)
    assert (a - b).abs().max() < 1e-2 * a.abs().max()
    with torch.no_grad():  # what plain fp16 storage did: BN divides by sqrt(inf), the layer's output is its bias
        slim.get_submodule("layer1.0.bn1").running_var.fill_(float("inf"))
        assert (slim(x) - a).abs().max() > 1e-1 * a.abs().max()
