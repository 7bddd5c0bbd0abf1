"""The Ray engine against the local engine on one machine: images per second, driver memory.

The same photos (500 x 375 JPEGs made from the sample photos), the same command and options,
run as a user runs them: ``camcli explain PHOTOS -o OUT`` (the local engine) and
``camcli explain PHOTOS -o OUT --engine ray --ray-address ADDR`` against a Ray head started
on this machine beforehand (``ray start --head``, as a cluster is already up when a job is
submitted), each in a process of its own, the engines taking turns. The figure compared is
what a user waits for: the images over the command's whole time (the Python start-up, the
imports, the model, and for Ray the actors' start). Each run's ``run.json`` figure is printed
too (its ``wall_seconds`` counts from the loop's start: the local engine's model is loaded by
then, the Ray actors' are not). One untimed run of each engine on 8 photos comes first (the
files torch loads are then in the page cache for both, and Ray Data's helper actors, which the
first Ray Data job of a cluster creates and keeps, exist). The driver's peak resident memory
is the command's process's (the Ray workers live under the head, not under the driver).

    python benchmarks/ray_engine.py --images 200 --repeats 3

Needs the ``ray`` extra (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import make_images

_WRAPPER = (
    "import resource, subprocess, sys; "
    "code = subprocess.run(sys.argv[1:]).returncode; "
    "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr); sys.exit(code)"
)


def run_cli(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float, float]:
    """Run ``camcli explain`` in its own process: its run.json, peak RSS (MiB), process seconds."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "camcli", "explain", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"camcli failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak = next(
        int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak-rss")
    )
    output = Path(args[args.index("-o") + 1])
    return json.loads((output / "run.json").read_text()), peak / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None, help="--model of camcli (default: its own)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray head CPUs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="camcli-ray-bench-"))
    photos = work / "photos"
    make_images(photos, args.images)
    # Ray's token authentication: the head and the driver read the same ~/.ray/auth_token.
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        ["ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True
    )
    port = "6390"
    subprocess.run(
        ["ray", "start", "--head", f"--port={port}", f"--num-cpus={args.cpus}",
         "--include-dashboard=false", "--disable-usage-stats"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    figures: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    try:
        extra = ["--model", args.model] if args.model else []
        # Untimed, one run of each engine on a few photos: the files torch loads are in the
        # page cache for both, and Ray Data's cluster-wide helper actors (created by the
        # first Ray Data job of a cluster, kept after it) exist, as on a cluster in use.
        warm = work / "warm"
        make_images(warm, 8)
        for engine in ("local", "ray"):
            options = [str(warm), "-o", str(work / f"warm-{engine}"), *extra]
            if engine == "ray":
                options += ["--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
            run_cli(options, env)
        for repeat in range(args.repeats):
            for engine in ("local", "ray"):
                out = work / f"out-{engine}-{repeat}"
                options = [str(photos), "-o", str(out), *extra]
                if engine == "ray":
                    options += ["--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
                summary, peak, seconds = run_cli(options, env)
                assert summary["counts"]["explained"] == args.images, summary["counts"]
                figures[engine].append(
                    {
                        "process_seconds": round(seconds, 2),
                        "images_per_second": round(args.images / seconds, 2),
                        "run_seconds": summary["wall_seconds"],
                        "run_images_per_second": summary["images_per_second"],
                        "driver_peak_rss_mib": round(peak, 1),
                    }
                )
                print(
                    f"{engine:>5} run {repeat + 1}: {args.images / seconds:.2f} images/s "
                    f"({seconds:.1f} s for the command; its run.json: "
                    f"{summary['wall_seconds']:.1f} s, {summary['images_per_second']:.2f} images/s)"
                    f", driver peak RSS {peak:.0f} MiB",
                    flush=True,
                )
                shutil.rmtree(out)
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    best = {e: max(f["images_per_second"] for f in figures[e]) for e in figures}
    ratios = [
        r["images_per_second"] / loc["images_per_second"]
        for loc, r in zip(figures["local"], figures["ray"], strict=True)
    ]
    print()
    print(f"{args.images} photos of 500 x 375, {args.cpus} CPUs for Ray, no GPU")
    print(f"{'engine':<8}{'images/s (best)':>18}")
    print(f"{'local':<8}{best['local']:>18.2f}")
    print(f"{'ray':<8}{best['ray']:>18.2f}")
    print(f"ray / local per repeat: {', '.join(f'{r:.2f}' for r in ratios)} (target >= 0.75)")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
