"""How long a RISE run takes to stop after SIGTERM (or SIGINT), with the embedded model.

Starts ``camcli explain sample_images --method rise --rise-masks 4000`` (minutes of forward
passes per batch on a CPU), waits until the batch loop has started and ``--wait`` seconds
more, sends the signal and measures the time until the process has exited, with its exit
code. Kubernetes sends SIGKILL 30 s after SIGTERM, systemd 90 s: the target is under 5 s.

    python benchmarks/stop_latency.py --repeat 3
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def once(signum: int, wait: float, chunk: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out"
        command = [
            sys.executable, "-m", "camcli", "explain", str(SAMPLES), "-o", str(out),
            "--method", "rise", "--rise-masks", "4000", "--chunk-size", str(chunk),
            "--device", "cpu",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not (out / "index.jsonl.partial").exists():
            if process.poll() is not None:
                raise SystemExit(process.stderr.read().decode() if process.stderr else "failed")
            time.sleep(0.05)
        time.sleep(wait)
        sent = time.perf_counter()
        process.send_signal(signum)
        process.wait(timeout=600)
        return time.perf_counter() - sent, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds into the first batch")
    parser.add_argument("--chunk-size", type=int, default=32)
    args = parser.parse_args()
    for signum in (signal.SIGTERM, signal.SIGINT):
        runs = [once(signum, args.wait, args.chunk_size) for _ in range(args.repeat)]
        latencies = [latency for latency, _ in runs]
        codes = sorted({code for _, code in runs})
        print(
            f"{signal.Signals(signum).name}: stopped in {statistics.median(latencies):.2f} s "
            f"median, {max(latencies):.2f} s worst of {len(runs)} (exit {codes}); "
            "target < 5 s"
        )


if __name__ == "__main__":
    main()
