"""`resnetlab info`: expected values from the paper (tables 1, 6) and torchvision's weight metadata."""

import json

import pytest
import torch
import torchvision

from resnetlab.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()  # shared cores: see tests/models/conftest.py
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["info", *argv])
    except SystemExit as e:  # a value argparse itself refuses (--input-size 0): one line, exit 2
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_model_json(capsys):
    code, out, _ = run(capsys, "resnet18", "--json")
    assert code == 0
    d = json.loads(out)
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta
    assert d["model"] == "resnet18" and d["params"] == meta["num_params"]
    assert d["mult_adds"] / 1e9 == pytest.approx(meta["_ops"], abs=0.0006)
    assert d["input_shape"] == [1, 3, 224, 224] and d["output_shape"] == [1, 1000]
    assert list(d["stages"]) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert d["stages"]["layer4"]["shape"] == [1, 512, 7, 7]  # table 1: conv5_x at 7x7


def test_model_text_with_options(capsys):
    code, out, _ = run(capsys, "resnet50", "--v1.5", "--shortcut", "C", "--num-classes", "10", "--input-size", "64")
    assert code == 0
    assert "stride_in_1x1=False" in out and "shortcut=C" in out
    assert "1x2048x2x2" in out and "1x10" in out
    assert "params" in out and "mult-adds" in out


def test_v15_resnet50_is_torchvision_4_09g(capsys):
    _, out, _ = run(capsys, "resnet50", "--v1.5", "--json")
    ops = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_ops"]
    assert json.loads(out)["mult_adds"] / 1e9 == pytest.approx(ops, abs=0.0006)


def test_cifar_one_channel_28x28(capsys):
    code, out, _ = run(capsys, "cifar_plain20", "--in-channels", "1", "--input-size", "28", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["input_shape"] == [1, 1, 28, 28] and d["stages"]["layer3"]["shape"] == [1, 64, 7, 7]
    assert d["params"] == 269_722 - 16 * 2 * 9  # table 6's 0.27M, conv1 seeing one channel instead of three


def test_generic_cifar_needs_depth(capsys):
    code, out, _ = run(capsys, "cifar_resnet", "--depth", "32", "--json")
    assert code == 0 and json.loads(out)["params"] == 464_154  # table 6: 0.46M
    code, _, err = run(capsys, "cifar_resnet")
    assert code == 2 and "--depth" in err


def test_list(capsys):
    code, out, _ = run(capsys, "--list", "--json")
    names = json.loads(out)
    assert code == 0 and {"resnet152", "plain34", "cifar_resnet1202", "vgg19"} <= set(names)
    _, text, _ = run(capsys, "--list")
    assert text.split() == names


@pytest.mark.parametrize(
    "argv, message",
    [
        (["resnet51"], "valid models: resnet18"),
        (["cifar_resnet20", "--v1.5"], "--v1.5"),
        (["vgg19", "--shortcut", "A"], "shortcut"),
        (["cifar_resnet", "--depth", "21"], "6n+2"),
        (["vgg19", "--input-size", "16"], "cannot run"),
        (["resnet18", "--input-size", "0"], "--input-size"),
        ([], "MODEL"),
    ],
)
def test_errors_are_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_paper_tables_json(capsys, monkeypatch):
    # The full tables take seconds (1202 layers); one row of each exercises the same code.
    from resnetlab.models import complexity  # read by `info --paper` when it runs

    monkeypatch.setattr(complexity, "PAPER_MULT_ADDS", {"resnet50": 3.8e9, "vgg19": 19.6e9})
    monkeypatch.setattr(complexity, "PAPER_CIFAR_PARAMS", {56: 0.85e6})
    code, out, _ = run(capsys, "--paper", "--json")
    assert code == 0
    d = json.loads(out)
    r50, vgg = d["table1"]
    assert (
        r50["model"] == "resnet50"
        and abs(r50["rel_diff"]) < 0.02
        and r50["measured"] / 1e9 == pytest.approx(3.8, rel=0.02)
    )
    assert round(r50["v1.5"] / 1e9, 2) == 4.09 and vgg["v1.5"] is None
    assert d["table6"] == [
        {
            "depth": 56,
            "n": 9,
            "paper": 0.85e6,
            "measured": 853_018,
            "plain": 853_018,
            "rel_diff": pytest.approx(3018 / 0.85e6),
        }
    ]


@pytest.mark.slow
def test_paper_tables_text(capsys):
    code, out, _ = run(capsys, "--paper")
    assert code == 0
    for expected in ("resnet152", "11.3G", "vgg19", "19.6G", "1,727,962", "19,421,274", "19.40M"):
        assert expected in out
