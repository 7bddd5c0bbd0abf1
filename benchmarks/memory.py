"""Resident memory over a long run: does it stay flat?

Makes N small JPEGs, explains them with a tiny CNN on the CPU through the real pipeline
(decode workers, explain, render, write pool, index), and samples the process's resident
set size (RSS) as images finish. Prints RSS at each checkpoint and the growth between the
first checkpoint and the end.

    python benchmarks/memory.py --images 5000 --checkpoints 500,1000,2500,5000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from camcli.io.discover import discover_images
from camcli.models.classes import imagenet_classes
from camcli.models.loaded import LoadedModel, Preprocessing
from camcli.runs.explain import run_explain
from camcli.runs.settings import Settings


def rss_mib() -> float:
    """Current resident set size of this process, MiB (from /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(32, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class Sampler:
    def __init__(self, checkpoints: list[int]) -> None:
        self.checkpoints = sorted(checkpoints)
        self.done = 0
        self.samples: dict[int, float] = {}

    def record(self, record: dict[str, Any]) -> None:
        pass

    def advance(self, count: int) -> None:
        self.done += count
        while self.checkpoints and self.done >= self.checkpoints[0]:
            self.samples[self.checkpoints.pop(0)] = rss_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--checkpoints", default="500,1000,2500,5000")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LoadedModel(
        "tiny",
        Tiny().eval(),
        Preprocessing(64, 72, (0.5,) * 3, (0.25,) * 3),
        imagenet_classes(),
        "features.2",
        "random",
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "in"
        rng = np.random.default_rng(0)
        for i in range(args.images):
            folder = root / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)
        items = discover_images(root)
        sampler = Sampler([int(c) for c in args.checkpoints.split(",")])
        settings = Settings(
            output_dir=Path(tmp) / "out",
            layers=("features.2",),
            batch_size=args.batch_size,
            workers=args.workers,
        )
        start = time.perf_counter()
        baseline = rss_mib()
        summary = run_explain(items, model, settings, sampler)
        seconds = time.perf_counter() - start
    first, last = min(sampler.samples), max(sampler.samples)
    growth = sampler.samples[last] - sampler.samples[first]
    print(
        f"images: {summary.explained} explained in {seconds:.1f} s "
        f"({summary.explained / seconds:.1f} images/s), RSS before the run {baseline:.1f} MiB"
    )
    for count, value in sorted(sampler.samples.items()):
        print(f"  RSS after {count:>6} images: {value:8.1f} MiB")
    print(
        f"growth from {first} to {last} images: {growth:+.1f} MiB "
        f"({growth / sampler.samples[first] * 100:+.1f} %)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rss_mib": sampler.samples, "growth_mib": growth, "seconds": seconds}, indent=2
            )
        )


if __name__ == "__main__":
    main()
