"""Start-up: wall time and peak memory of ``camcli --help`` against ``import click``.

The command line imports torch only when a command runs, so ``--help``, ``--version`` and
``COMMAND --help`` should cost about what Python and Click cost. Each command runs
``--repeat`` times in a fresh process; the table gives the median wall time, the largest
peak resident memory (``ru_maxrss`` of the child), and both as ratios to the bound: a bare
``python -c "import click"`` in the same run. Target: within 3 x of the bound and under
100 MB.

    python benchmarks/startup.py --repeat 7
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
    "import click (bound)": [sys.executable, "-c", "import click"],
    "camcli --help": [sys.executable, "-m", "camcli", "--help"],
    "camcli --version": [sys.executable, "-m", "camcli", "--version"],
    "camcli explain --help": [sys.executable, "-m", "camcli", "explain", "--help"],
    "camcli compare --help": [sys.executable, "-m", "camcli", "compare", "--help"],
    "import camcli": [sys.executable, "-c", "import camcli"],
}


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one fresh process."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: become the command, so its own peak is measured
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.execv(command[0], command)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    subprocess.run(COMMANDS["camcli --help"], capture_output=True, check=True)  # warm caches
    figures = {}
    for name, command in COMMANDS.items():
        runs = [measure(command) for _ in range(args.repeat)]
        figures[name] = {
            "seconds": statistics.median(s for s, _ in runs),
            "peak_mib": max(m for _, m in runs),
        }
    bound = figures["import click (bound)"]
    print(f"{'command':24} {'median s':>9} {'x bound':>8} {'peak MiB':>9} {'x bound':>8}")
    for name, row in figures.items():
        row["time_ratio"] = row["seconds"] / bound["seconds"]
        row["memory_ratio"] = row["peak_mib"] / bound["peak_mib"]
        print(
            f"{name:24} {row['seconds']:9.3f} {row['time_ratio']:8.2f} "
            f"{row['peak_mib']:9.1f} {row['memory_ratio']:8.2f}"
        )
    worst = max(r["time_ratio"] for n, r in figures.items() if n.startswith("camcli"))
    peak = max(r["peak_mib"] for n, r in figures.items() if n.startswith("camcli"))
    print(
        f"worst camcli command: {worst:.2f} x the bound (target <= 3), peak {peak:.1f} MiB "
        f"(target < 100)"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
