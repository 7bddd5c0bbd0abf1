"""Peak memory of RISE and the faithfulness scores does not grow with the number of images.

Runs ``camcli explain`` (the embedded model, on the CPU) in a fresh process on 2 and on 20
images (500 x 375 JPEGs made from the sample photos) with RISE and every score at
``--chunk-size 8``, and compares the processes' peak resident set sizes (``ru_maxrss`` of
the child). The promise: the 20-image run's peak is within 10 % of the 2-image run's.

    python benchmarks/memory_bound.py --rise-masks 64 --metric-steps 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTOS = sorted(p for p in (REPO / "sample_images").rglob("*") if p.suffix in (".png", ".jpg"))

CHILD = """
import resource, sys
from camcli.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"PEAK_KIB {peak}", file=sys.stderr)
"""


def make_images(folder: Path, count: int) -> None:
    """``count`` 500 x 375 JPEGs from the sample photos, in ``folder``."""
    folder.mkdir(parents=True)
    for i in range(count):
        photo = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB").resize((500, 375))
        photo.save(folder / f"{i:03d}.jpg", quality=90)


def peak_mib(images: Path, out: Path, extra: list[str]) -> float:
    """Peak RSS of one ``camcli explain`` process, MiB."""
    args = ["explain", str(images), "-o", str(out), "-j", "0", "--offline", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"camcli failed ({done.returncode}):\n{done.stderr}")
    line = next(x for x in done.stderr.splitlines() if x.startswith("PEAK_KIB"))
    return int(line.split()[1]) / 1024


def main() -> None:
    """Measure and print the two peaks and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rise-masks", default="64")
    parser.add_argument("--metric-steps", default="8")
    parser.add_argument("--chunk-size", default="8")
    parser.add_argument("--methods", default="gradcam,rise")
    args = parser.parse_args()
    extra = [
        "--method",
        args.methods,
        "--rise-masks",
        args.rise_masks,
        "--metrics",
        "all",
        "--metric-steps",
        args.metric_steps,
        "--chunk-size",
        args.chunk_size,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        peaks = {}
        for count in (2, 20):
            make_images(root / f"in{count}", count)
            peaks[count] = peak_mib(root / f"in{count}", root / f"out{count}", extra)
            print(f"{count} images: peak RSS {peaks[count]:.0f} MiB", flush=True)
    ratio = peaks[20] / peaks[2]
    print(f"ratio 20 / 2 images: {ratio:.3f} ({'within' if ratio <= 1.10 else 'over'} 10 %)")


if __name__ == "__main__":
    main()
