"""scripts/demo.sh's Fashion-MNIST install step, with apt-get, apt-cache and python replaced by stubs
that log their calls: a fresh machine (no package lists) and stale lists (install fails) both get one
`apt-get update` before the install that works."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.sh"


def stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        # No package lists: apt-cache does not know the package; update once, then install.
        ("fresh", ["apt-cache show", "apt-get update", "apt-get install"]),
        # Old lists: the package is known but its file is gone from the mirror; install, update, install.
        ("stale", ["apt-cache show", "apt-get install", "apt-get update", "apt-get install"]),
    ],
)
def test_demo_refreshes_package_lists_once_when_the_package_is_not_found(tmp_path, lists, expected):
    bin_dir, repo = tmp_path / "bin", tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    bin_dir.mkdir()
    calls, updated = tmp_path / "calls", tmp_path / "updated"
    # The same script, with the Debian package's data folder pointed somewhere empty.
    text = DEMO.read_text().replace("SYSTEM_DIR=/usr/share/datasets/fashion-mnist", f"SYSTEM_DIR={tmp_path}/none")
    (repo / "scripts" / "demo.sh").write_text(text)
    known = "exit 0" if lists == "stale" else f"[ -f {updated} ] && exit 0; exit 100"
    stub(bin_dir / "apt-cache", f'echo "apt-cache $1" >> {calls}\n{known}\n')
    stub(
        bin_dir / "apt-get",
        f'echo "apt-get $1" >> {calls}\ncase "$1" in update) touch {updated}; exit 0;; esac\n'
        f"[ -f {updated} ] && exit 0; exit 100\n",
    )
    stub(bin_dir / "py", f'case "$*" in *default_data_dir*) echo {tmp_path}/nodata;; esac\nexit 0\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON_BIN": str(bin_dir / "py")}
    env.update(DEMO_OUT=str(tmp_path / "out"))
    if os.geteuid() != 0:
        stub(bin_dir / "sudo", '"$@"\n')  # the script uses sudo when not root
    result = subprocess.run(["bash", str(repo / "scripts" / "demo.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == expected
    assert "refreshing the package lists" in result.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("threads", "expected"), [(None, "1"), ("2", "2")])
def test_demo_pins_its_thread_count_and_says_which_one_the_band_holds_for(tmp_path, threads, expected):
    """The thread count changes the result (another summation order): training runs with
    OMP_NUM_THREADS=DEMO_THREADS (default 1, the measured setting), and a run with another count is told
    that the printed band is not for its setting. Training is a stub; the result step is the real one."""
    import json
    import sys

    bin_dir, out, data = tmp_path / "bin", tmp_path / "out", tmp_path / "data"
    bin_dir.mkdir()
    (data / "FashionMNIST" / "raw").mkdir(parents=True)
    (data / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    out.mkdir()
    row = {"iter": 1000, "test_error": 12.5, "train_error": 13.0, "eval_split": "test"}
    (out / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    seen = tmp_path / "threads"
    stub(
        bin_dir / "py",
        f'case "$*" in *default_data_dir*) echo {data}; exit 0;; esac\n'
        f'case "$1 $2 $3" in "-m resnetlab train") echo "$OMP_NUM_THREADS" > {seen}; exit 0;; esac\n'
        f'[ "$1" = "-" ] && exec {sys.executable} "$@"\nexit 0\n',
    )
    env = {**os.environ, "PYTHON_BIN": str(bin_dir / "py"), "DEMO_OUT": str(out)}
    env.pop("DEMO_THREADS", None)
    if threads:
        env["DEMO_THREADS"] = threads
    result = subprocess.run(["bash", str(DEMO)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert seen.read_text().strip() == expected
    assert f"seed 0, {expected} thread(s)" in result.stdout
    assert "measured with 1 thread: 12.16 % for seed 0" in result.stdout
    assert ("this run used 2 threads" in result.stdout) == (expected == "2")
