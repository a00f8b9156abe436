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


def test_keys_one_key_per_line_with_choices_and_notes_apart():
    """Through the real command: every key starts exactly one line, in the tree's order; a comment
    above a group of fields is its own `#` line, never run into a key's meaning; a Literal type
    shows its choices (torch.compile's modes for train.compile_mode), not its alias name."""
    import os
    import subprocess
    import sys

    import torch._inductor

    r = subprocess.run(
        [sys.executable, "-m", "resnetlab", "config", "keys"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = [line for line in r.stdout.splitlines() if not line.startswith("# ")]
    by_key = {line.split()[0]: line for line in lines}
    assert [line.split()[0] for line in lines] == valid_keys(Config)
    assert by_key["optim.plateau_patience"].endswith("  plateau: evaluations without a new best before dividing")
    assert "autocast" not in by_key["train.precision"] and "fp32 | bf16 | fp16" in by_key["train.precision"]
    assert "Fine-tuning" not in by_key["train.init_from"] and "CompileMode" not in r.stdout
    modes = by_key["train.compile_mode"].split('"default"')[0].split()[1:]
    choices = [m for m in modes if m != "|"]
    assert choices[0] == "default" and set(choices) <= set(torch._inductor.list_mode_options()), modes
    assert "# plateau (the paper does not define it" in r.stdout  # the note is kept, on its own line
    assert "int | null" in by_key["optim.base_batch_size"] and "A | B | C | null" in by_key["model.shortcut"]


def test_unknown_key_suggests_the_closest_in_one_short_line():
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "resnetlab", "config", "show", "--set", "train.frezze=[stem]"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ)
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr
        == "error: unknown config key train.frezze; did you mean train.freeze? (valid keys: `resnetlab config keys`)\n"
    )
