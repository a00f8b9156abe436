"""Table 6 formatting: best (mean ± std) over seeds, against numbers computed by hand."""

import csv

import pytest

from resnetlab.analysis.table import Row, best_mean_std, format_best_mean_std, to_markdown, write_csv


def test_best_mean_std_by_hand():
    # errors 6.43, 6.60, 6.80: best 6.43; mean 19.83 / 3 = 6.61;
    # deviations -0.18, -0.01, +0.19 -> squares 0.0324 + 0.0001 + 0.0361 = 0.0686; / (3 - 1) = 0.0343;
    # sqrt(0.0343) = 0.18520...
    best, mean, std = best_mean_std([6.60, 6.43, 6.80])
    assert best == 6.43
    assert mean == pytest.approx(6.61)
    assert std == pytest.approx(0.185203, abs=1e-6)
    assert format_best_mean_std([6.60, 6.43, 6.80]) == "6.43 (6.61 ± 0.19)"


def test_single_run_has_no_spread():
    assert best_mean_std([8.75]) == (8.75, 8.75, None)
    assert format_best_mean_std([8.754]) == "8.75"


def test_markdown_and_csv(tmp_path):
    rows = [
        Row("ResNet-110", "resnet", 110, 1_730_714, (7.0, 6.0), (0.5, 0.25)),
        Row("plain-20", "plain", 20, 269_722, (10.0,)),
    ]
    md = to_markdown(rows, dataset="cifar10").splitlines()
    # mean 6.5, sample std sqrt(0.5) = 0.7071; train: best 0.25, mean 0.375, std sqrt(0.03125) = 0.1768
    assert (
        md[2]
        == "| ResNet-110 | 110 | 1.73M | 2 | 0.25 (0.38 ± 0.18) | 6.00 (6.50 ± 0.71) | 6.43 (6.61 ± 0.16) | 1.7M |"
    )
    assert md[3] == "| plain-20 | 20 | 0.27M | 1 | – | 10.00 | – | – |"  # plain nets: only fig. 6 in the paper
    write_csv(rows, tmp_path / "t.csv")
    got = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert got[0]["best"] == "6.0000" and got[0]["mean"] == "6.5000" and got[0]["std"] == "0.7071"
    assert got[1]["std"] == "" and got[1]["paper"] == ""
