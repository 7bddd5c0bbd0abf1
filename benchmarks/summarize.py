"""How long ``camcli summarize`` takes on a large run, and how much memory it needs.

Writes a synthetic explain run of ``--images`` records in ``--classes`` classes (each record
as explain writes it: its small map in ``maps.gradcam.grid`` and an overlay PNG of the
photo's size), then runs ``camcli summarize`` on it in a process of its own and prints the
wall time, the peak resident memory (the child's ``ru_maxrss``) and whether each class's
planted shortcut (a fifth of its images whose maps all peak on the top-left corner, the rest
on an object anywhere) was ranked first. The target on the 2-core machine: 10,000 records in
under 2 minutes and under 2 GB.

    python benchmarks/summarize.py --images 10000 --classes 100
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from camcli.io.mapgrid import SUMMARY_GRID, encode_grid
from camcli.io.write import encode_png
from camcli.pictures.style import jet_rgb

WIDTH, HEIGHT = 500, 375  # an ImageNet-sized photo


def _map(rng: np.random.Generator, marked: bool) -> np.ndarray:
    """A map on the summary's grid: on the corner mark, or on an object anywhere."""
    yy, xx = np.mgrid[0:SUMMARY_GRID, 0:SUMMARY_GRID].astype(np.float32)
    if marked:
        cx, cy, sigma = 2.5 + rng.normal(0, 0.5), 2.5 + rng.normal(0, 0.5), 2.0
    else:
        cx, cy = rng.uniform(6, SUMMARY_GRID - 6, size=2)
        sigma = rng.uniform(3.0, 6.0)
    values = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    values += rng.uniform(0, 0.05, values.shape).astype(np.float32)
    return values / values.max()


def write_run(out: Path, images: int, classes: int, seed: int = 0) -> dict[str, set[str]]:
    """A synthetic explain run; returns each class's planted (marked) images."""
    rng = np.random.default_rng(seed)
    lut = jet_rgb()
    names = [f"class {k:03d}" for k in range(classes)]
    planted: dict[str, set[str]] = {name: set() for name in names}
    jobs = []
    for i in range(images):
        k = i % classes
        name = names[k]
        marked = rng.uniform() < 0.2
        values = _map(rng, marked)
        grid = np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)
        relative = f"c{k:03d}/img{i:05d}.jpg"
        if marked:
            planted[name].add(relative)
        wrong = rng.uniform() < 0.1
        predicted = names[(k + 1) % classes] if wrong else name
        record = {
            "image": relative,
            "status": "ok",
            "width": WIDTH,
            "height": HEIGHT,
            "model": "synthetic",
            "layers": ["features"],
            "methods": ["gradcam", "guided"],
            "label": {"folder": f"c{k:03d}", "index": k, "name": name},
            "predictions": [{"rank": 1, "index": k, "name": predicted, "probability": 0.9}],
            "correct": not wrong,
            "target": {"mode": "pred", "index": k, "name": predicted, "probability": 0.9},
            "maps": {
                "gradcam": {
                    "peak": {"x": 0, "y": 0},
                    "grid": encode_grid(grid),
                    "layer": "features",
                    "max": 1.0,
                }
            },
            "files": {
                "gradcam": {
                    "heatmap": f"img{i:05d}.jpg.gradcam.png",
                    "overlay": f"img{i:05d}.jpg.gradcam.overlay.png",
                },
                "guided": {"image": f"img{i:05d}.jpg.guided.png"},
            },
        }
        jobs.append((out / relative, grid, record))

    def write(job: tuple[Path, np.ndarray, dict]) -> None:
        path, grid, record = job
        path.parent.mkdir(parents=True, exist_ok=True)
        big = cv2.resize(grid, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
        overlay = lut[big]
        Path(f"{path}.gradcam.overlay.png").write_bytes(encode_png(overlay))
        Path(f"{path}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, jobs))
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--keep", type=Path, default=None, help="write the run here and keep it")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep or Path(scratch) / "run"
        started = time.perf_counter()
        planted = write_run(out, args.images, args.classes)
        print(f"wrote {args.images} records in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        process = subprocess.run(
            # Grouped by label: the shortcut is planted per label (a tenth of the images are
            # predicted as another class, and the explained class is the prediction).
            [sys.executable, "-m", "camcli", "summarize", str(out), "--group", "label"],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if process.returncode != 0:
            raise SystemExit(process.stderr)
        print(process.stderr.strip())
        summary = json.loads((out / "summary.json").read_text())
        found = 0
        for name, members in planted.items():
            clusters = summary["classes"].get(name, {}).get("clusters") or []
            if clusters and members:
                first = set(clusters[0]["images"])
                found += len(first & members) >= 0.8 * len(members) and len(
                    first - members
                ) <= 0.2 * len(first)
        figures = {
            "images": args.images,
            "classes": args.classes,
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak_mb, 1),
            "shortcut_ranked_first": found,
            "target": {"seconds": 120, "peak_rss_mb": 2048},
        }
        print(
            f"summarize: {args.images} records, {args.classes} classes in {seconds:.1f} s "
            f"({seconds / 120:.2f} of the 2-minute target), peak memory {peak_mb:.0f} MB "
            f"({peak_mb / 2048:.2f} of 2 GB); planted shortcut ranked first in {found} of "
            f"{args.classes} classes"
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
