"""`resnetlab` commands run as forked children of one server process that imported torch, torchvision
and the command modules once: `python -m resnetlab` spends ~3-6 s of CPU importing them, and the
bad-input table runs ~190 commands.

To the command, a child is a process of its own: its pid, working folder, environment, stdin closed,
stdout and stderr files, exit status (killed after `timeout`), shutdown (`SystemExit`, atexit
handlers, stdout and stderr flushed). What differs from `python -m resnetlab`: the modules are imported
before the command starts, so a warning printed at import time would not reach the child's stderr, and
import-time settings come from the server's environment; and the child ends with `os._exit` once the
atexit handlers have run, without the interpreter's teardown of every module and object. That teardown
touches every object torch created, so each page the child shares with the server is copied: 1.6-1.8 s
a command against 0.1-0.2 s (AMD EPYC, 2 cores, beside a training run), ~190 commands in the table.
`gc.freeze()` in the server keeps the child's collector off the server's objects for the same reason.
`test_bad_inputs` therefore starts the server with the cases' environment and holds a sample of cases
to the real command as well.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SERVER = r"""
import atexit, gc, json, os, signal, sys, time

import torch, torchvision  # noqa: F401  (no thread is started by these imports: forking after them is safe)
import resnetlab.cli, resnetlab.train.loop, resnetlab.evaluate.run, resnetlab.runner.pool  # noqa: F401

gc.freeze()  # the imported objects: a child's collections do not write to (copy) the pages that hold them

for line in sys.stdin:
    req = json.loads(line)
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the command, ended as SystemExit ends `python -m resnetlab`, less the module teardown
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["resnetlab", *req["argv"]]
        try:
            code = resnetlab.cli.main(req["argv"])
        except SystemExit as e:
            code = e.code
        if code is not None and not isinstance(code, int):  # SystemExit("text"): printed, status 1
            print(code, file=sys.stderr)
            code = 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    os.close(out)
    os.close(err)
    deadline, timed_out = time.monotonic() + req["timeout"], False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline and not timed_out:
            os.kill(pid, signal.SIGKILL)
            timed_out = True
        time.sleep(0.005)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "timed_out": timed_out}), flush=True)
"""


class ForkServer:
    """`run(argv, cwd)` -> CompletedProcess, like subprocess.run([python, -m, resnetlab, *argv])."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env, self.folder = env, folder
        self.log = folder / "server.err"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
            )

    def run(self, argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        out, err = self.folder / "out.txt", self.folder / "err.txt"
        req = {
            "argv": argv,
            "cwd": str(cwd),
            "env": self.env,
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the fork server ended: {self.log.read_text()[-3000:]}")
        reply = json.loads(reply)
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(argv, timeout)
        return subprocess.CompletedProcess(argv, reply["returncode"], out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
