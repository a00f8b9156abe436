"""Every preset against the ledger's table of the paper's numbers (docs/fidelity.md, "Preset numbers").

The table is the expected side, written from the paper (and [32] for detection), not from the code:
a preset edited away from the paper, or a default that drifts, fails here.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import torch
import yaml

from resnetlab.config import apply_overrides, list_presets, load_preset, to_dict
from resnetlab.detection.config import list_detection_presets, load_detection_config

LEDGER = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"


def ledger_rows() -> list[tuple[list[str], str, object]]:
    """(preset patterns, key, expected value) of every row between the table's markers."""
    text = LEDGER.read_text()
    table = text[text.index("<!-- preset-numbers:start -->") : text.index("<!-- preset-numbers:end -->")]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("presets", "---") or set(cells[0]) <= {"-"}:
            continue
        patterns = [p.strip() for p in cells[0].split(",")]
        rows.append((patterns, cells[1], yaml.safe_load(cells[2])))
    return rows


def all_presets() -> dict[str, dict]:
    """name -> resolved config as a plain dict (detection presets as `detection/NAME`)."""
    out = {name: to_dict(load_preset(name)) for name in list_presets()}
    out.update({f"detection/{n}": to_dict(load_detection_config(n)) for n in list_detection_presets()})
    return out


PRESETS = all_presets()
ROWS = ledger_rows()


def matching(patterns: list[str]) -> list[str]:
    return [name for name in PRESETS if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def test_the_ledger_table_is_there_and_covers_every_preset():
    assert len(ROWS) > 50
    covered = {name for patterns, _, _ in ROWS for name in matching(patterns)}
    uncovered = sorted(set(PRESETS) - covered)
    assert not uncovered, f"presets with no row in docs/fidelity.md: {uncovered}"
    for patterns, key, _ in ROWS:
        assert matching(patterns), f"row {patterns} {key} matches no preset"


@pytest.mark.parametrize(("patterns", "key", "expected"), ROWS, ids=[f"{','.join(p)}:{k}" for p, k, _ in ROWS])
def test_preset_numbers_are_the_papers(patterns, key, expected):
    section, name = key.split(".")
    for preset in matching(patterns):
        got = PRESETS[preset][section][name]
        if isinstance(expected, float) or isinstance(got, float):
            assert got == pytest.approx(expected), f"{preset}: {key} = {got!r}, the paper's is {expected!r}"
        else:
            assert got == expected, f"{preset}: {key} = {got!r}, the paper's is {expected!r}"


def test_every_classification_preset_and_the_default_train_in_fp32():
    from resnetlab.config import Config

    assert Config().train.precision == "fp32"
    for name in list_presets():
        assert PRESETS[name]["train"]["precision"] == "fp32", name


def test_fb_resnet_torch_schedule_is_30_60_90_epochs():
    # The named alternative to the plateau rule, as the ledger writes it.
    line = next(ln for ln in LEDGER.read_text().splitlines() if "fb.resnet.torch schedule" in ln)
    overrides = re.search(r"`--set (.+?)`", line).group(1).replace('"', "").split()
    cfg = apply_overrides(load_preset("imagenet-resnet50"), overrides)
    per_epoch = -(-1_281_167 // 256)  # ImageNet-1k's training images at batch 256, rounded up: 5005
    assert cfg.optim.schedule == "multistep"
    assert list(cfg.optim.milestones) == [30 * per_epoch, 60 * per_epoch]
    assert cfg.train.max_iters == 90 * per_epoch


@pytest.mark.parametrize("name", ["cifar_resnet110", "cifar_plain56", "resnet152", "plain34"])
def test_no_dropout_anywhere(name):
    from resnetlab.models import create_model

    with torch.device("meta"):
        model = create_model(name)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
