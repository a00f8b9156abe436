"""The CLI parses its arguments without importing torch: `--help` must not wait for it (issue 14).

A test of *what* is imported, not a timed test; benchmarks/cli_startup.py measures the time.
"""

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "numpy", "matplotlib", "PIL")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["predict", "--help"],
        ["analyze", "responses", "--help"],
        ["reproduce", "--help"],
        ["detect", "train", "--help"],
        ["bench", "--help"],
        ["info", "--help"],
        ["config", "keys"],
        ["config", "show", "--preset", "cifar10-resnet20"],
    ],
)
def test_help_imports_no_torch(argv):
    code = (
        "import sys\n"
        "from resnetlab.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", f"resnetlab {' '.join(argv)} imported {out.splitlines()[-1]}"
