"""scripts/carry_wheels.sh: wheels packed into parts here and unpacked there without pip or an index.
Packed from local wheels (pip's own PIP_NO_INDEX / PIP_FIND_LINKS, no network); the parts are joined
and checked by the script, the unpacked files compared with what the wheels hold."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "carry_wheels.sh"


def wheel(folder: Path, name: str, files: dict[str, bytes]) -> None:
    info = f"{name}-1.0.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    entries = {**files, **meta}
    record = "".join(f"{p},,\n" for p in entries) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as z:
        for path, data in {**entries, f"{info}/RECORD": record.encode()}.items():
            z.writestr(path, data)


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_pack_then_install_without_an_index(tmp_path):
    here, wheels = tmp_path / "here", tmp_path / "wheels"
    (here / ".venv" / "bin").mkdir(parents=True)
    wheels.mkdir()
    pip = here / ".venv" / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pip "$@"\n')
    pip.chmod(0o755)
    payload = os.urandom(300_000)  # incompressible: the archive is split into parts
    wheel(
        wheels,
        "carried",
        {
            "carried/__init__.py": b"X = 1\n",
            "carried/lib.bin": payload,
            "carried/ext.cpython-312-x86_64-linux-gnu.so": b"312",
            "carried/ext.cpython-311-x86_64-linux-gnu.so": b"311",
        },
    )
    wheel(wheels, "present", {"present/__init__.py": b""})
    pip_env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    script = SCRIPT.read_text().replace("PART_BYTES=60000000", "PART_BYTES=100000")
    (here / "carry.sh").write_text(script)  # small parts, so that joining is exercised
    proc = subprocess.run(
        ["bash", "carry.sh", "pack", "--python", "3.12", "--skip", "present", "carried", "present"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **pip_env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parts = sorted((here / ".carry").glob("part-*"))
    assert len(parts) >= 3 and "skipped: present-1.0-py3-none-any.whl" in proc.stdout

    there = tmp_path / "there"  # a copy: what the lent machine gets, call by call
    (there / ".carry").mkdir(parents=True)
    for f in [*parts, here / ".carry" / "MANIFEST"]:
        (there / ".carry" / f.name).write_bytes(f.read_bytes())
    target = tmp_path / "site"
    proc = run(there, "install", str(target))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "carried" / "lib.bin").read_bytes() == payload
    assert (target / "carried" / "ext.cpython-312-x86_64-linux-gnu.so").exists()
    assert not (target / "carried" / "ext.cpython-311-x86_64-linux-gnu.so").exists()  # another Python's
    assert not (target / "present").exists()  # --skip
    out = subprocess.run(
        [sys.executable, "-c", "import carried; print(carried.X)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert out.stdout.strip() == "1"


def test_install_refuses_a_damaged_or_missing_part(tmp_path):
    carry = tmp_path / ".carry"
    carry.mkdir()
    (carry / "part-00").write_bytes(b"a" * 10)
    (carry / "part-01").write_bytes(b"b" * 10)
    digest = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    (carry / "MANIFEST").write_text(
        f"{digest(b'a' * 10 + b'b' * 10)}  site.tar.xz\n{digest(b'a' * 10)}  part-00\n{digest(b'b' * 10)}  part-01\n"
    )
    (carry / "part-01").write_bytes(b"c" * 10)
    proc = run(tmp_path, "install", str(tmp_path / "site"))
    assert proc.returncode == 2 and "a part is missing or damaged" in proc.stderr
    (carry / "part-01").unlink()
    proc = run(tmp_path, "install", str(tmp_path / "site"))
    assert proc.returncode == 2 and "a part is missing or damaged" in proc.stderr
    assert not (tmp_path / "site").exists()
