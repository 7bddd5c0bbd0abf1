"""Integrated Gradients: completeness error against passes, midpoint rule and Gauss-Legendre.

On the sample photos with the embedded model (black baseline, the top-1 class), prints per
image the completeness error ``|sum of attributions - (f(x) - f(b))| / |f(x) - f(b)|`` of:

* the midpoint rule at 32, 96 and 288 steps (each level reuses the previous one's points:
  the refinement camcli's adaptive IG makes);
* Gauss-Legendre quadrature (captum's default ``gausslegendre``) at 32 and 96 points
  (its points do not nest: each count is computed from scratch);
* camcli's adaptive IG at the default settings (start 32, tolerance 5 %, at most 1280 passes),
  with the steps each image took.

One step is one forward + backward pass per image.

    python benchmarks/ig_steps.py
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from camcli.io.decode import load_rgb, model_input
from camcli.methods.integrated import _gradient_sums, adaptive_integrated_gradients, ig_baseline
from camcli.models import EMBEDDED_MODEL
from camcli.models.registry import load_model

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def error(attributions: torch.Tensor, differences: torch.Tensor) -> list[float]:
    totals = attributions.flatten(1).sum(1)
    return ((totals - differences).abs() / differences.abs()).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(EMBEDDED_MODEL)
    module = model.module.eval()
    prep = model.preprocessing
    paths = sorted(p for p in SAMPLES.glob("*/*") if p.suffix in (".png", ".jpg"))
    arrays = [model_input(load_rgb(p), prep, crop=False)[0] for p in paths]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    black = tuple(-m / s for m, s in zip(prep.mean, prep.std, strict=True))
    b = ig_baseline(x, "black", black)
    with torch.no_grad():
        targets = module(x).argmax(1)
    n = len(paths)
    delta = x.float() - b.float()
    rows: dict[str, list[float]] = {}

    # midpoint levels, nested
    reference = adaptive_integrated_gradients(
        module, x, b, targets, 32, args.chunk_size, tolerance=0.0, max_steps=32
    )
    differences = reference.differences
    sums = torch.zeros_like(delta)
    alphas = (torch.arange(32, dtype=torch.float32) + 0.5) / 32
    passes = 0
    for level in (32, 96, 288):
        owners = torch.arange(n).repeat_interleave(len(alphas))
        fractions = alphas.repeat(n)
        sums += _gradient_sums(
            module, x, b.float(), delta, targets, owners, fractions, args.chunk_size, None
        )
        passes += len(alphas)
        rows[f"midpoint {level} ({passes} passes)"] = error(delta * sums / level, differences)
        k = torch.arange(level, dtype=torch.float32)
        alphas = torch.cat([(k + 1 / 6) / level, (k + 5 / 6) / level])

    # Gauss-Legendre, from scratch per count
    for points in (32, 96):
        nodes, weights = np.polynomial.legendre.leggauss(points)
        total = torch.zeros_like(delta)
        for node, weight in zip(nodes, weights, strict=True):
            alpha = torch.full((n,), float((node + 1) / 2))
            gradient = _gradient_sums(
                module, x, b.float(), delta, targets, torch.arange(n), alpha, args.chunk_size,
                None,
            )  # fmt: skip
            total += gradient * float(weight / 2)
        rows[f"gauss-legendre {points} ({points} passes)"] = error(delta * total, differences)

    adaptive = adaptive_integrated_gradients(module, x, b, targets, 32, args.chunk_size)
    rows["camcli adaptive (default)"] = adaptive.errors.tolist()

    names = [p.name for p in paths]
    print(f"{'rule':34} " + " ".join(f"{name[:12]:>12}" for name in names) + "   median")
    for rule, errors in rows.items():
        cells = " ".join(f"{100 * e:11.2f}%" for e in errors)
        print(f"{rule:34} {cells}  {100 * statistics.median(errors):6.2f}%")
    print(
        f"{'camcli adaptive: steps used':34} "
        + " ".join(f"{int(s):12d}" for s in adaptive.steps.tolist())
        + f"   mean {float(adaptive.steps.float().mean()):.0f}"
    )
    print("logit differences f(x) - f(b): " + ", ".join(f"{d:.2f}" for d in differences.tolist()))


if __name__ == "__main__":
    main()
