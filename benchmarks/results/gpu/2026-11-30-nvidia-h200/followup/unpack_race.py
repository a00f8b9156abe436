"""The old Fashion-MNIST unpacking (one temporary name shared by all processes) against the fixed one
(one per process, commit 5790d45): four processes start within 0.6 s of each other, each unpacks
train-images if it is missing and reads it as a training run does; a read is wrong when its MD5 differs
from the true file's (zeros: all-zero images in it). `python unpack_race.py old|new TRIALS`."""

import gzip
import hashlib
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

SRC = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def old_gunzip(src, dest):
    tmp = dest.with_name(f".{dest.name}.part")
    with gzip.open(src, "rb") as f, open(tmp, "wb") as out:
        shutil.copyfileobj(f, out)
    tmp.replace(dest)


def new_gunzip(src, dest):
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    with gzip.open(src, "rb") as f, open(tmp, "wb") as out:
        shutil.copyfileobj(f, out)
    tmp.replace(dest)


def job(args):
    fn, dest, barrier = args
    barrier.wait()
    time.sleep(random.random() * 0.6)  # the runs of a grid start within a fraction of a second
    try:
        if not dest.is_file():
            fn(SRC, dest)
    except OSError as e:
        return "error " + type(e).__name__
    data = dest.read_bytes()
    zeros = sum(1 for i in range(16, len(data), 784) if not any(data[i : i + 784]))
    return hashlib.md5(data).hexdigest()[:8], len(data), zeros


if __name__ == "__main__":
    truth = hashlib.md5(gzip.open(SRC).read()).hexdigest()[:8]
    fn = old_gunzip if sys.argv[1] == "old" else new_gunzip
    bad = 0
    for trial in range(int(sys.argv[2])):
        d = Path(tempfile.mkdtemp(prefix="unpack-race-"))
        m = mp.Manager()
        b = m.Barrier(4)
        with mp.Pool(4) as p:
            res = p.map(job, [(fn, d / "train-images-idx3-ubyte", b)] * 4)
        wrong = [r for r in res if isinstance(r, str) or r[0] != truth]
        bad += bool(wrong)
        print(trial, "truth", truth, res)
        shutil.rmtree(d)
    print(sys.argv[1], f"trials with a wrong read: {bad}/{sys.argv[2]}")
