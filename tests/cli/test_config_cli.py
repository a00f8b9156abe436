"""`resnetlab config show|keys` and the presets in `train --help`."""

import json

import yaml

from resnetlab.cli import main
from resnetlab.config import Config, configs_dir, list_presets, load_preset, valid_keys


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_the_preset_with_overrides(capsys):
    code, out, _ = run(capsys, "config", "show", "--preset", "cifar10-resnet56", "--set", "train.max_iters=600")
    assert code == 0
    d = yaml.safe_load(out)
    preset = yaml.safe_load((configs_dir() / "cifar10-resnet56.yaml").read_text())
    assert d["model"]["name"] == preset["model"]["name"] == "cifar_resnet56"
    assert d["train"]["max_iters"] == 600
    assert d["optim"]["milestones"] == list(load_preset("cifar10-resnet56").optim.milestones)


def test_show_bad_override_is_one_line(capsys):
    code, out, err = run(capsys, "config", "show", "--preset", "cifar10-resnet20", "--set", "train.nope=1")
    assert code == 2 and out == "" and err.startswith("error: unknown config key train.nope")


def test_keys_cover_every_key_with_a_meaning(capsys):
    code, out, _ = run(capsys, "config", "keys", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["key"] for r in rows] == valid_keys(Config)
    assert all(r["meaning"] for r in rows), [r["key"] for r in rows if not r["meaning"]]
    by_key = {r["key"]: r for r in rows}
    assert by_key["optim.lr"]["default"] == 0.1 and by_key["optim.lr"]["type"] == "float"  # sec. 3.4
    assert by_key["optim.milestones"]["default"] == [32000, 48000]  # sec. 4.2: 32k and 48k iterations


def test_keys_detection_tree(capsys):
    code, out, _ = run(capsys, "config", "keys", "--detection")
    assert code == 0 and "model.name" in out and "data.name" in out and "model.freeze_bn" in out


def test_train_help_lists_presets(capsys):
    try:
        main(["train", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out.replace("\n", " ")
    assert all(name in out for name in list_presets()) and "cifar10-resnet110" in out
