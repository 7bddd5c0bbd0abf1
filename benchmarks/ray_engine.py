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
Under each run, the CPU seconds this machine spent while it ran, by role (the driver, its child
processes, Ray Data's model actors, Ray's task workers, Ray's own processes; sampled from
``/proc`` every half second): on a machine whose cores are all busy, this is where a ratio
below 1 comes from.

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
import threading
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


def _processes() -> dict[int, tuple[int, float, str]]:
    """Every process of this machine: parent, CPU seconds so far (user + system), command line."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        found[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, command)
    return found


ROLES = ("driver", "driver's processes", "model actors", "Ray tasks", "Ray's own")


class CpuByRole:
    """CPU seconds spent on this machine while one command runs, by role (Linux ``/proc``).

    Sampled every ``interval`` seconds: a process that lives less than that is missed. Roles:
    the ``camcli`` process (the driver), its child processes (the local engine's decoders),
    Ray Data's model actors, Ray's task workers (decoding, writing), and Ray's own processes
    (raylet, GCS, the helper actors of Ray Data).
    """

    def __init__(self, wrapper: int, interval: float = 0.5) -> None:
        self.wrapper, self.interval = wrapper, interval
        self.before = {pid: cpu for pid, (_, cpu, _) in _processes().items()}
        self.latest: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while True:
            self._scan()
            if self.done.wait(self.interval):
                self._scan()
                return

    def _scan(self) -> None:
        table = _processes()
        parents = {pid: parent for pid, (parent, _, _) in table.items()}
        driver = next((pid for pid, parent in parents.items() if parent == self.wrapper), None)
        for pid, (_, cpu, command) in table.items():
            role = self._classify(pid, command, driver, parents)
            if role is None:
                continue
            if self.role.get(pid) != "model actors":  # an actor's worker was idle first
                self.role[pid] = role
            self.latest[pid] = cpu

    @staticmethod
    def _classify(
        pid: int, command: str, driver: int | None, parents: dict[int, int]
    ) -> str | None:
        if pid == driver:
            return "driver"
        ancestor, hops = parents.get(pid), 0
        while ancestor and hops < 8:
            if ancestor == driver:
                return "driver's processes"
            ancestor, hops = parents.get(ancestor), hops + 1
        if "MapWorker(" in command:
            return "model actors"
        if command.startswith("ray::") and not command.startswith(("ray::_", "ray::Actor")):
            return "Ray tasks"
        if command.startswith("ray::") or "site-packages/ray/" in command:
            return "Ray's own"
        return None

    def stop(self) -> dict[str, dict[str, float]]:
        """End the sampling; CPU seconds and process count per role."""
        self.done.set()
        self.thread.join()
        totals = {role: {"cpu_seconds": 0.0, "processes": 0} for role in ROLES}
        for pid, cpu in self.latest.items():
            spent = cpu - self.before.get(pid, 0.0)
            if spent > 0.05:
                totals[self.role[pid]]["cpu_seconds"] += round(spent, 2)
                totals[self.role[pid]]["processes"] += 1
        return totals


def run_cli(
    args: list[str], env: dict[str, str]
) -> tuple[dict[str, Any], float, float, dict[str, dict[str, float]] | None]:
    """Run ``camcli explain`` in its own process.

    Returns:
        its run.json, peak RSS (MiB), process seconds and CPU seconds by role (``None``
        without ``/proc``).

    """
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "camcli", "explain", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = CpuByRole(process.pid) if Path("/proc/self/stat").exists() else None
    _, stderr = process.communicate()
    seconds = time.perf_counter() - began
    cpu = sampler.stop() if sampler is not None else None
    if process.returncode != 0:
        raise SystemExit(f"camcli failed ({process.returncode}):\n{stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in stderr.splitlines() if line.startswith("peak-rss"))
    output = Path(args[args.index("-o") + 1])
    return json.loads((output / "run.json").read_text()), peak / 1024, seconds, cpu


def cpu_line(cpu: dict[str, dict[str, float]] | None, seconds: float) -> str:
    """CPU seconds by role, their total and the share of the machine's cores they used."""
    if cpu is None:
        return "CPU by role: n/a (no /proc)"
    parts = [
        f"{role} {figures['cpu_seconds']:.1f} s ({int(figures['processes'])})"
        for role, figures in cpu.items()
        if figures["processes"]
    ]
    total = sum(figures["cpu_seconds"] for figures in cpu.values())
    cores = os.cpu_count() or 1
    return (
        f"CPU seconds (processes): {', '.join(parts)}; total {total:.1f} s, "
        f"{100 * total / (seconds * cores):.0f} % of {cores} cores over the command"
    )


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
    figures: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
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
                summary, peak, seconds, cpu = run_cli(options, env)
                assert summary["counts"]["explained"] == args.images, summary["counts"]
                figures[engine].append(
                    {
                        "process_seconds": round(seconds, 2),
                        "images_per_second": round(args.images / seconds, 2),
                        "run_seconds": summary["wall_seconds"],
                        "run_images_per_second": summary["images_per_second"],
                        "driver_peak_rss_mib": round(peak, 1),
                        "cpu_by_role": cpu or {},
                    }
                )
                print(
                    f"{engine:>5} run {repeat + 1}: {args.images / seconds:.2f} images/s "
                    f"({seconds:.1f} s for the command; its run.json: "
                    f"{summary['wall_seconds']:.1f} s, {summary['images_per_second']:.2f} images/s)"
                    f", driver peak RSS {peak:.0f} MiB",
                    flush=True,
                )
                print(f"      {cpu_line(cpu, seconds)}", flush=True)
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
