"""`resnetlab evaluate | predict | import-weights | export` end to end, through `main(argv)`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.transforms import functional as TV

from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic

CLASSES = [f"c{i}" for i in range(6)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint) -> tuple[Path, Path]:
    """A val split of real JPEGs (6 classes, one image each, two sizes) and a cifar_resnet20 checkpoint
    that sees them as 32-pixel crops (a cheap stand-in for an ImageNet model)."""
    root = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate(CLASSES):
        (root / "val" / name).mkdir(parents=True)
        h, w = (40, 52) if i % 2 else (48, 36)
        TV.to_pil_image(torch.rand(3, h, w, generator=g)).save(root / "val" / name / "img.JPEG")
    ck = root / "ck.pt"
    tiny_checkpoint(ck, CLASSES, {"data": {"dir": str(root)}})
    return root, ck


@pytest.mark.parametrize("protocol", ["center", "10crop", "multiscale"])
def test_evaluate_json(setup, capsys, protocol):
    _, ck = setup
    argv = ["evaluate", "--checkpoint", str(ck), "--protocol", protocol, "--json", "--workers", "0"]
    scales = ["--scales", "224", "256"] if protocol == "multiscale" else []
    assert main([*argv, "--device", "cpu", *scales]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 6 and r["protocol"] == protocol and 0 <= r["top5_error"] <= r["top1_error"] <= 100


def test_evaluate_text_and_ensemble(setup, capsys):
    _, ck = setup
    assert main(["evaluate", "--checkpoint", str(ck), str(ck), "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2" in out and "top-1 error" in out and "top-5 error" in out


def test_predict_prints_five_classes(setup, capsys):
    root, ck = setup
    image = str(root / "val" / "c0" / "img.JPEG")
    assert main(["predict", image, "--checkpoint", str(ck), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 6
    assert [line.split()[0] for line in lines[1:]] == ["1.", "2.", "3.", "4.", "5."]
    assert all(line.split()[-1] in CLASSES for line in lines[1:])



def test_predict_with_the_images_after_checkpoint_says_where_they_went(setup, capsys):
    """`--checkpoint CK IMAGE` hands the image to the checkpoint list: one line that says so and how
    to write it, not argparse's "IMAGE is required"; after `--` the images are images."""
    root, ck = setup
    image = str(root / "val" / "c0" / "img.JPEG")
    assert main(["predict", "--checkpoint", str(ck), image, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no IMAGE given: --checkpoint took every path after it ({ck} {image})")
    assert "predict IMAGE... --checkpoint CK" in err and "Traceback" not in err
    assert main(["predict", "--checkpoint", str(ck), "--device", "cpu", "--", image]) == 0
    assert capsys.readouterr().out.splitlines()[0] == image

def test_import_weights_then_predict_imagenet_names(setup, tmp_path, capsys):
    root, _ = setup
    pth = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pth)
    out = tmp_path / "r18.pt"
    assert main(["import-weights", str(pth), "--model", "resnet18", "--out", str(out)]) == 0
    assert "resnet18" in capsys.readouterr().out
    image = str(root / "val" / "c1" / "img.JPEG")
    assert main(["predict", image, "--checkpoint", str(out), "--device", "cpu", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(r["top"]) == 5 and all(name in categories for name, _ in r["top"])


def test_errors_are_one_line(setup, tmp_path, capsys):
    _, ck = setup
    bad = tmp_path / "tree" / "val" / "c0"
    bad.mkdir(parents=True)
    (bad / "broken.JPEG").write_bytes(b"garbage")
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "tree"), "--workers", "0"]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.JPEG" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx", "--out", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(ck), "--protocol", "10crop", "--split", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_predict_folder_with_a_corrupt_file_csv_and_json(setup, tmp_path, capsys):
    root, ck = setup
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in CLASSES[:3]:
        (folder / f"{name}.JPEG").write_bytes((root / "val" / name / "img.JPEG").read_bytes())
    (folder / "b_broken.jpg").write_bytes(b"not an image")
    argv = ["predict", str(folder), "--checkpoint", str(ck), "--device", "cpu", "--workers", "0", "--batch-size", "2"]
    assert main([*argv, "--json"]) == 1  # one row failed; the others are there
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in rows] == ["b_broken.jpg", "c0.JPEG", "c1.JPEG", "c2.JPEG"]
    assert rows[0]["error"].startswith("cannot read") and rows[0]["top"] == []
    assert all(r["error"] is None and len(r["top"]) == 5 for r in rows[1:])

    # The probabilities, computed here the plain way: model(normalised centre view), softmax.
    from resnetlab.data.images import center_view, read_image
    from resnetlab.evaluate import load_model

    m = load_model(ck, torch.device("cpu"))
    for r in rows[1:]:
        with torch.no_grad():
            view = center_view(read_image(r["image"]), 32)
            probs = m.model(m.normalize(view[None])).softmax(-1)[0]
        name, p = r["top"][0]
        assert name == CLASSES[int(probs.argmax())] and p == pytest.approx(float(probs.max()), rel=1e-5)

    assert main([*argv, "--csv", "--top", "2"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "image,class_1,prob_1,class_2,prob_2,error"
    assert lines[1].endswith(",,,,cannot read: corrupt or not an image") and len(lines) == 5
    assert "1 of 4 images could not be read" in err


def test_predict_glob_and_missing_file(setup, capsys):
    root, ck = setup
    argv = ["predict", str(root / "val" / "c[01]" / "*.JPEG"), str(root / "nope.jpg"), "--checkpoint", str(ck)]
    assert main([*argv, "--device", "cpu", "--workers", "0", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).parent.name for r in rows[:2]] == ["c0", "c1"]
    assert rows[2]["error"] == "does not exist"
    assert main(["predict", str(root / "*.png"), "--checkpoint", str(ck)]) == 2
    assert "no file matches" in capsys.readouterr().err


def test_evaluate_per_class_and_confusion_by_hand(setup, tmp_path, capsys):
    """A network whose head always says class c2 (fc weight 0, bias one-hot): by hand, every image is
    predicted c2, so the confusion matrix is a column of ones at c2, c2's accuracy 100 %, the others 0 %."""
    root, ck = setup
    from resnetlab.utils.checkpoint import load

    obj = load(ck)
    obj["model"]["fc.weight"].zero_()
    obj["model"]["fc.bias"].copy_(torch.eye(len(CLASSES))[2] * 10)
    save_atomic({k: v for k, v in obj.items() if k != "format"}, tmp_path / "c2.pt")
    fig = tmp_path / "confusion.png"
    argv = ["evaluate", "--checkpoint", str(tmp_path / "c2.pt"), "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--json", "--plot", str(fig)]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert r["classes"] == CLASSES and f"wrote {fig}" in err
    assert r["confusion_matrix"] == [[1 if j == 2 else 0 for j in range(6)] for _ in range(6)]
    assert [(c["class"], c["images"], c["accuracy"]) for c in r["per_class"]] == [
        (name, 1, 100.0 if name == "c2" else 0.0) for name in CLASSES
    ]
    assert r["top1_error"] == pytest.approx(100 * 5 / 6)
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "per-class top-1 accuracy (6 classes)" in text and text.strip().endswith("c2  100.00%  (1 images)")


def test_per_class_accuracy_matches_a_plain_loop(setup, capsys):
    """The batched confusion matrix against one forward per image, counted by hand."""
    root, ck = setup
    from resnetlab.data.images import center_view, read_image
    from resnetlab.evaluate import load_model

    m = load_model(ck, torch.device("cpu"))
    want = [[0] * 6 for _ in range(6)]
    for i, name in enumerate(CLASSES):
        with torch.no_grad():
            x = m.normalize(center_view(read_image(str(root / "val" / name / "img.JPEG")), 32)[None])
            want[i][int(m.model(x).argmax())] += 1
    assert main(["evaluate", "--checkpoint", str(ck), "--workers", "0", "--batch-size", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confusion_matrix"] == want


# ---- odd files, names and outputs (issue 22) -----------------------------------------------------


def test_folders_of_other_classes_are_refused_not_mapped_by_position(setup, tmp_path, capsys):
    """A folder with the checkpoint's number of classes, four of them its own and two not (c4, c5 ->
    x4, x5): by position x4 would be scored as c4 and x5 as c5, and c0..c3 kept, a wrong error with no
    word. Refused in one line naming the folders that are not its classes. Folders none of which are
    its classes (imported torchvision weights and synset folders) still map by position."""
    root, ck = setup
    mixed = _copy_split(root, tmp_path / "mixed", names=["c0", "c1", "c2", "c3", "x4", "x5"])
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(mixed), "--workers", "0", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: 2 of the 6 class folders are not classes of {ck}: x4, x5 (its classes: c0,")
    other = _copy_split(root, tmp_path / "other", names=[f"n{i:08d}" for i in range(6)])
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(other), "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6


def test_scales_too_small_for_the_crop_and_flags_of_another_protocol_are_one_line(setup, capsys):
    """The checkpoint sees 32-pixel crops: --scales 10 gives round(10 x 32 / 224) = 1 pixel (torch's
    antialiased resize failed there: an internal assert), 11 gives 2. --scales / --flip with another
    protocol did nothing, without a word."""
    root, ck = setup
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(root), "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--protocol", "multiscale", "--scales", "224", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --scales 10: for {ck}, trained on 32-pixel crops, that is a side of 1 pixel(s) "
        "(the scales are given for 224-pixel crops); give S >= 11"
    )
    assert main([*argv, "--protocol", "multiscale", "--scales", "11", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6
    for extra in (["--scales", "224"], ["--flip"]):
        assert main([*argv, "--protocol", "10crop", *extra]) == 2
        assert (
            capsys.readouterr().err.strip()
            == f"error: {extra[0]} applies to --protocol multiscale, not to --protocol 10crop"
        )


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command in a subprocess (PYTHONPATH inherited): a FIFO that blocked would time out."""
    return subprocess.run(
        [sys.executable, "-m", "resnetlab", *argv], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _copy_split(root: Path, dest: Path, names=CLASSES) -> Path:
    for name, folder in zip(names, CLASSES):
        (dest / "val" / name).mkdir(parents=True)
        shutil.copy(root / "val" / folder / "img.JPEG", dest / "val" / name / "img.JPEG")
    return dest


def test_a_link_cycle_and_a_second_link_count_each_image_once(setup, tmp_path, capsys):
    root, ck = setup
    tree = _copy_split(root, tmp_path / "tree")
    (tree / "val" / "c0" / "sub").mkdir()
    (tree / "val" / "c0" / "sub" / "loop").symlink_to("..")  # c0/sub/loop -> c0: torchvision's scan follows it
    again = tree / "val" / "c1" / "z_again.JPEG"
    again.symlink_to("img.JPEG")  # after img.JPEG in the scan's order: the second path, not counted
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(tree), "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 6 and [c["images"] for c in out["per_class"]] == [1] * 6
    assert out["counted_once"] == 1 and out["counted_once_files"] == [str(again)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "6 images" in text and f"were not counted again: {again}" in text


def test_skipped_files_are_named(setup, tmp_path, capsys):
    root, ck = setup
    tree = _copy_split(root, tmp_path / "tree")
    for i in range(5):
        (tree / "val" / "c2" / f"broken{i}.jpg").write_bytes(b"not an image")
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(tree), "--workers", "0", "--skip-corrupt"]
    broken = [str(tree / "val" / "c2" / f"broken{i}.jpg") for i in range(5)]
    assert main(argv) == 0
    assert f"skipped 5 unreadable images: {', '.join(broken[:3])} and 2 more" in capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_files"] == broken


def test_class_names_are_printed_escaped(setup, tmp_path):
    """Folder names holding a newline and a terminal escape: shown as Python literals, on one line each."""
    root, ck = setup
    names = ["a\nb", "\x1b[31mred", "c2", "c3", "c4", "c5"]
    tree = _copy_split(root, tmp_path / "tree", names)
    from resnetlab.utils.checkpoint import load

    obj = load(ck)
    obj["meta"]["classes"] = names
    obj["config"] = {"data": {"dir": str(tree)}}
    save_atomic({k: v for k, v in obj.items() if k != "format"}, tmp_path / "odd.pt")
    r = _cli("evaluate", "--checkpoint", str(tmp_path / "odd.pt"), "--workers", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\x1b" not in r.stdout and "a\\nb " in r.stdout and "\\x1b[31mred" in r.stdout
    image = tree / "val" / "\x1b[31mred" / "img.JPEG"
    r = _cli(
        "predict", str(image), "--checkpoint", str(tmp_path / "odd.pt"), "--top", "6", "--workers", "0", cwd=tmp_path
    )
    assert r.returncode == 0 and "\x1b" not in r.stdout and "a\\nb" in r.stdout and "\\x1b[31mred" in r.stdout
    assert len(r.stdout.splitlines()) == 7  # the image, then its six classes: no line broken by a name

    from resnetlab.analysis import confusion

    figures = []
    result = {"confusion_matrix": [[1, 0], [0, 1]], "classes": names[:2], "checkpoints": ["x.pt"],
              "protocol": "center", "split": "val", "images": 2, "top1_error": 0.0}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(confusion, "save_figure", lambda fig, out: figures.append(fig))
        confusion.plot_confusion(result, tmp_path / "cm.png")
    labels = [t.get_text() for t in figures[0].axes[0].get_xticklabels()]
    assert labels == ["a\\nb", "\\x1b[31mred"]


def test_results_are_printed_before_a_plot_that_fails(setup, tmp_path, capsys, monkeypatch):
    _, ck = setup
    from resnetlab.analysis import confusion

    def full_disk(result, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(confusion, "plot_confusion", full_disk)
    argv = ["evaluate", "--checkpoint", str(ck), "--workers", "0", "--plot", str(tmp_path / "cm.png")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "top-1 error" in out and "per-class top-1 accuracy" in out
    assert err.splitlines() == [f"error: --plot {tmp_path / 'cm.png'}: cannot write it (No space left on device); "
                                "the results are above"]  # fmt: skip


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_predict_names_a_fifo_and_does_not_follow_a_link_cycle(setup, tmp_path):
    root, ck = setup
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(root / "val" / "c0" / "img.JPEG", folder / "sub" / "a.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "sub" / "loop").symlink_to("..")
    for target in (str(folder), str(folder / "**" / "*.jpg")):
        r = _cli("predict", target, "--checkpoint", str(ck), "--json", "--workers", "0", cwd=tmp_path)
        rows = {Path(row["image"]).name: row for row in json.loads(r.stdout)}
        assert r.returncode == 1 and sorted(rows) == ["a.jpg", "pipe.jpg"], r.stdout[-2000:]
        assert rows["pipe.jpg"]["error"] == "cannot read: a FIFO, not a regular file" and len(rows["a.jpg"]["top"]) == 5


def test_predict_refuses_a_float_image_outside_0_1_in_its_row(setup, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    _, ck = setup
    Image.fromarray(np.linspace(0, 300, 48 * 40, dtype=np.float32).reshape(40, 48)).save(tmp_path / "f.tif")
    assert main(["predict", str(tmp_path / "f.tif"), "--checkpoint", str(ck), "--workers", "0", "--json"]) == 1
    row = json.loads(capsys.readouterr().out)[0]
    assert row["error"].startswith("cannot read: mode F (32-bit float pixels from 0 to 300)") and row["top"] == []


# ---- checkpoints of small-image folders (the CIFAR recipe, issue 27) -----------------------------


def _small_checkpoint(path: Path, channels: int, classes=("a", "b")) -> None:
    """A cifar_resnet20 as `train` saves it for a small-image folder under the CIFAR recipe."""
    torch.manual_seed(channels)
    net = create_model("cifar_resnet20", num_classes=len(classes), in_channels=channels)
    mean = torch.rand(channels, 32, 32, generator=torch.Generator().manual_seed(1))
    meta = {"dataset": "imagefolder", "classes": list(classes), "num_classes": len(classes), "in_channels": channels,
            "image_size": 32, "mean": mean, "std": None, "recipe": "cifar", "model": "cifar_resnet20",
            "model_options": {"num_classes": len(classes), "in_channels": channels}}  # fmt: skip
    config = {"data": {"name": "imagefolder", "recipe": "cifar", "eval_split": "test"}}
    save_atomic({"model": net.state_dict(), "config": config, "meta": meta}, path)


def test_an_ensemble_of_grey_and_rgb_models_is_refused(tmp_path):
    """The first model decides how the images are decoded: grey first, the colour model would score
    grey images without a word; colour first, the grey model's conv1 fails."""
    from resnetlab.evaluate.checkpoints import load_models

    _small_checkpoint(tmp_path / "grey.pt", 1)
    _small_checkpoint(tmp_path / "rgb.pt", 3)
    with pytest.raises(UserError, match=r"different inputs \(32 px, 3 channel\(s\), .* and 32 px, 1 channel\(s\)"):
        load_models([str(tmp_path / "grey.pt"), str(tmp_path / "rgb.pt")], torch.device("cpu"))


def _small_tree(root: Path, mode: str = "RGB", per_class: int = 3) -> Path:
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = g.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).convert(mode).save(root / split / c / f"{i}.png")
    return root


def _error_by_hand(ck: Path, tree: Path, split: str, mode: str) -> float:
    """Top-1 error (%) of the checkpoint on tree/split, each file read by PIL and converted to `mode`
    (L for a grey network, RGB else) and normalised with the checkpoint's mean: a loop written here."""
    import numpy as np
    from PIL import Image

    obj = torch.load(ck, weights_only=True)
    meta = obj["meta"]
    net = create_model("cifar_resnet20", **meta["model_options"])
    net.load_state_dict(obj["model"])
    net.eval()
    wrong = total = 0
    for label, c in enumerate(meta["classes"]):
        for path in sorted((tree / split / c).iterdir()):
            with Image.open(path) as im:
                a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
            x = torch.from_numpy(a.reshape(32, 32, -1)).permute(2, 0, 1) - meta["mean"]
            with torch.no_grad():
                wrong += int(net(x[None]).argmax(1).item() != label)
            total += 1
    return 100.0 * wrong / total


@pytest.mark.parametrize("net, images", [(1, "RGB"), (3, "L"), (3, "RGB")])
def test_a_small_folder_checkpoint_is_tested_on_its_split_with_its_channels(tmp_path, capsys, monkeypatch, net, images):
    """Only the evaluated folder is decoded (a corrupt training image does not matter), with the
    checkpoint's channels (a grey network on RGB files, or the reverse, as training converts them),
    by --workers processes; the error is the one a plain loop over the files gives."""
    from resnetlab.data import smallfolder

    tree = _small_tree(tmp_path / "tree", images)
    (tree / "train" / "a" / "0.png").write_bytes(b"broken")
    ck = tmp_path / "ck.pt"
    _small_checkpoint(ck, net)
    calls = []
    real = smallfolder.decode_images
    monkeypatch.setattr(
        smallfolder, "decode_images", lambda s, **k: calls.append((len(s), k["workers"])) or real(s, **k)
    )
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(tree), "--split", "test", "--workers", "0"]
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert calls == [(6, 0)] and r["images"] == 6 and r["split"] == "test"
    assert r["top1_error"] == pytest.approx(_error_by_hand(ck, tree, "test", "L" if net == 1 else "RGB"))


def test_a_small_folder_checkpoint_takes_skip_corrupt_and_names_its_own_flags(tmp_path, capsys):
    tree = _small_tree(tmp_path / "tree")
    bad = tree / "test" / "b" / "1.png"
    bad.write_bytes(b"broken")
    ck = tmp_path / "ck.pt"
    _small_checkpoint(ck, 3)
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(tree), "--split", "test", "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot read image {bad}") and err.endswith("(--skip-corrupt skips it)"), err
    assert "data." not in err and "\n" not in err
    assert main([*argv, "--skip-corrupt", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 5 and r["skipped"] == 1 and r["skipped_files"] == [str(bad)]


def test_a_model_of_five_classes_or_fewer_has_no_top5_error(tmp_path, tiny_checkpoint, capsys):
    """Every label is in the top 5 of 5 classes: a 0.00 % top-5 error would be a figure of nothing."""
    classes = CLASSES[:5]
    for name in classes:
        (tmp_path / "val" / name).mkdir(parents=True)
        TV.to_pil_image(torch.rand(3, 36, 36)).save(tmp_path / "val" / name / "img.JPEG")
    ck = tmp_path / "ck.pt"
    tiny_checkpoint(ck, classes, {"data": {"dir": str(tmp_path)}})
    argv = ["evaluate", "--checkpoint", str(ck), "--workers", "0", "--device", "cpu"]
    assert main(argv) == 0
    assert "top-5 error n/a with 5 classes or fewer" in capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top5_error"] is None
