"""`resnetlab bench`: the JSON is one parseable object with the figures; bad input is one-line error."""

from __future__ import annotations

import json

import pytest

from resnetlab.cli import main

SMALL = ["--device", "cpu", "--batch-size", "4", "--iters", "2", "--warmup", "1", "--train-images", "64"]


def test_train_json_vs_reference(capsys):
    argv = ["bench", "train", "--model", "cifar_resnet20", *SMALL, "--json", "--vs-reference", "--ref-workers", "0"]
    assert main([*argv, "--rounds", "2", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["mode"] == "train" and res["precision"] == "fp32" and res["threads"] == 1
    for name in ("ours", "reference"):
        assert res[name]["images_per_s"] > 0
        assert res[name]["step_time_s"]["n"] == 2 * 2
        assert res[name]["peak_memory_bytes"] > 0
    assert len(res["speedup_vs_reference"]["per_round"]) == 2
    assert set(res["ours"]["breakdown"]) >= {"data_fraction", "optimizer_fraction", "outside_fwd_bwd_fraction"}


def test_infer_text(capsys):
    assert main(["bench", "infer", "--model", "cifar_resnet20", *SMALL, "--channels-last"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "channels_last" in out


def test_bad_input_is_a_user_error(capsys):
    assert main(["bench", "train", "--model", "nope", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model")
    with pytest.raises(SystemExit) as e:  # argparse checks it: one line, exit status 2
        main(["bench", "train", "--iters", "0", "--device", "cpu"])
    assert e.value.code == 2
