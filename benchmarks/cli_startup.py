"""Start-up time of the CLI against `python -c "import torch"`, on the same machine, in one run.

Each command is a fresh interpreter (`sys.executable`), run in alternating rounds (the order reversed
on every other round) so a busy patch of a shared machine falls on all of them. Prints per-command
median and min wall time, the ratio of each CLI command's median to torch's, and the load average
before and after. The goal of issue 14: `resnetlab --help` and `resnetlab train --help` at most 0.3x
`import torch`.

    python benchmarks/cli_startup.py --rounds 10
    python benchmarks/cli_startup.py --rounds 10 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "resnetlab --help": [sys.executable, "-m", "resnetlab", "--help"],
    "resnetlab train --help": [sys.executable, "-m", "resnetlab", "train", "--help"],
    "resnetlab config keys": [sys.executable, "-m", "resnetlab", "config", "keys"],
}
BASELINE = "import torch"
GOAL = 0.3


def time_once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="timed runs of each command (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    names = list(COMMANDS)
    for name in names:  # one untimed run each: page cache, .pyc files
        time_once(COMMANDS[name])
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(time_once(COMMANDS[name]))
    load_after = os.getloadavg()

    base = statistics.median(times[BASELINE])
    result = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "commands": {
            n: {
                "median_s": statistics.median(t),
                "min_s": min(t),
                "ratio_to_import_torch": statistics.median(t) / base,
                # the ratio within each round, to show how stable the comparison is
                "ratio_per_round": [a / b for a, b in zip(t, times[BASELINE])],
            }
            for n, t in times.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"python {result['python']}, {result['cpus']} CPUs, {args.rounds} alternating rounds")
    print(
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )
    print(f"{'command':<26}{'median s':>10}{'min s':>8}{'ratio':>8}  {'goal':>6}")
    for n, r in result["commands"].items():
        goal = "" if n == BASELINE else ("ok" if r["ratio_to_import_torch"] <= GOAL else "MISSED")
        print(f"{n:<26}{r['median_s']:>10.3f}{r['min_s']:>8.3f}{r['ratio_to_import_torch']:>8.2f}  {goal:>6}")
    print(f"ratio = median / median of `import torch`; goal <= {GOAL} for --help and train --help")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
