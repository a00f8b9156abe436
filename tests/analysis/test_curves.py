"""Error curves from metrics.jsonl (figs. 1/4/6)."""

import json
from pathlib import Path

import pytest
import yaml

from resnetlab.analysis.curves import plot_curves
from resnetlab.analysis.runs import load_run, parse_model_name
from resnetlab.errors import UserError


def make_run(path, name, errors, depth=None):
    """A synthetic run folder: config.yaml + metrics.jsonl with (train, test) errors per 100 iterations."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": {"name": name, "depth": depth}}))
    rows = [
        {"iter": 100 * (i + 1), "lr": 0.1, "train_loss": 1.0, "train_error": tr, "test_error": te, "time": i}
        for i, (tr, te) in enumerate(errors)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("name", "depth", "expected"),
    [
        ("cifar_plain56", None, ("plain", 56)),
        ("cifar_resnet110", None, ("resnet", 110)),
        ("cifar_resnet", 32, ("resnet", 32)),
        ("resnet50", None, ("resnet", 50)),
        ("plain34", None, ("plain", 34)),
    ],
)
def test_parse_model_name(name, depth, expected):
    assert parse_model_name(name, depth) == expected


def test_unknown_model_name():
    with pytest.raises(UserError):
        parse_model_name("vgg16")


def test_load_run_keeps_last_of_repeated_iterations(tmp_path):
    run = make_run(tmp_path / "r", "cifar_resnet20", [(50, 40), (30, 20)])
    with open(run / "metrics.jsonl", "a") as f:  # a resumed run re-evaluating iteration 200
        f.write(json.dumps({"iter": 200, "train_error": 29.0, "test_error": 19.0}) + "\n")
    loaded = load_run(run)
    assert [m["iter"] for m in loaded.metrics] == [100, 200]
    assert loaded.final_test_error == 19.0 and loaded.label == "ResNet-20"



def test_a_line_torn_by_a_kill_is_left_out_and_a_bad_line_inside_is_an_error(tmp_path):
    """A run killed while writing its last line still plots (status and resume treat it so); a bad
    line followed by others is damage, named with its line number."""
    run = make_run(tmp_path / "r", "cifar_resnet20", [(50, 40), (30, 20)])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iter": 300, "train_err')
    assert [m["iter"] for m in load_run(run).metrics] == [100, 200]
    with open(run / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps({"iter": 300, "train_error": 9.0, "test_error": 9.0}) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:3: not a JSON line"):
        load_run(run)

def test_plot_two_panels(tmp_path):
    runs = [load_run(make_run(tmp_path / n, n, [(60, 55), (40, 42)])) for n in ("cifar_plain20", "cifar_plain56")] + [
        load_run(make_run(tmp_path / "g", "cifar_resnet", [(50, 45), (20, 25)], depth=20))
    ]
    out = plot_curves(runs, tmp_path / "fig" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_metrics_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metrics.jsonl"):
        load_run(tmp_path / "empty")



def test_a_figure_that_fails_to_write_leaves_the_previous_one(tmp_path, monkeypatch):
    """A report stopped (or a disk filled) half-way through a figure keeps the last good one."""
    from matplotlib.figure import Figure

    runs = [load_run(make_run(tmp_path / "r", "cifar_resnet20", [(60, 55), (40, 42)]))]
    out = plot_curves(runs, tmp_path / "curves.png")
    good = out.read_bytes()

    def torn(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", torn)
    with pytest.raises(OSError):
        plot_curves(runs, out)
    assert out.read_bytes() == good and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("out", ["figure.txt", "figure"])
def test_curves_and_responses_check_the_figure_name_before_any_work(tmp_path, capsys, out):
    """Measuring responses takes minutes: a name matplotlib cannot write (or writes elsewhere, adding
    .png) is refused first."""
    from resnetlab.cli import main

    for argv in (["analyze", "curves", str(tmp_path / "no-run")], ["analyze", "responses", "--checkpoint", "x.pt"]):
        with pytest.raises(SystemExit) as e:  # argparse's one line
            main([*argv, "--out", str(tmp_path / out)])
        assert e.value.code == 2 and "the file name must end in one of .png" in capsys.readouterr().err
