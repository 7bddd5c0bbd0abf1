"""Pointing game and faithfulness of every method on 2 x 2 collages of the sample photos.

Four sample photos (cat, espresso, tripod, military uniform) are pasted into a 2 x 2
collage in three arrangements; each arrangement is explained once per tile's class (12
trials). A trial is a hit when the method's saliency peaks in the tile of the requested
class. Alongside: the share of the positive saliency inside that tile (chance 0.25) and the
faithfulness scores (deletion and insertion areas, average drop, increase in confidence) of
the same maps, averaged over the 12 trials.

    python benchmarks/pointing.py                     # every method, Markdown table
    python benchmarks/pointing.py --methods gradcam,rise --rise-masks 1000

Uses the embedded EfficientNet-Lite0 on the CPU (or --device cuda).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from camcli.io.decode import load_rgb, model_input  # noqa: E402
from camcli.methods.batch import MethodOptions, compute_methods  # noqa: E402
from camcli.methods.metrics import pixel_order_saliency  # noqa: E402
from camcli.methods.names import (  # noqa: E402
    ALL_METHODS,
    METRICS,
    parse_methods,
)
from camcli.models.registry import EMBEDDED_MODEL, load_model  # noqa: E402

SAMPLES = REPO / "sample_images"
TILES = [
    ("tiger_cat/chelsea.png", "tiger cat"),
    ("espresso/coffee.png", "espresso"),
    ("tripod/camera.png", "tripod"),
    ("military_uniform/grace_hopper.jpg", "military uniform"),
]
ARRANGEMENTS = ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2])


def collage(order: list[int], size: int = 224) -> Image.Image:
    """Four sample photos in a 2 x 2 grid, ``order[k]`` in position k (row-major)."""
    image = Image.new("RGB", (2 * size, 2 * size))
    for k, tile in enumerate(order):
        photo = load_rgb(SAMPLES / TILES[tile][0]).resize((size, size), Image.Resampling.BICUBIC)
        image.paste(photo, ((k % 2) * size, (k // 2) * size))
    return image


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--rise-masks", type=int, default=4000)
    parser.add_argument("--metric-steps", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--layer", action="append", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    methods = parse_methods([args.methods])
    torch.set_grad_enabled(True)
    device = torch.device(args.device)
    loaded = load_model(EMBEDDED_MODEL, offline=True)
    prep = loaded.preprocessing
    if args.input_size:
        from dataclasses import replace

        prep = replace(prep, size=args.input_size)
    model = loaded.module.eval().to(device).to(memory_format=torch.channels_last)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    options = MethodOptions(
        chunk_size=args.chunk_size,
        rise_masks=args.rise_masks,
        metrics=METRICS,
        metric_steps=args.metric_steps,
        black=tuple((-mean / std).flatten().tolist()),
    )
    layers = args.layer or [loaded.default_layer]
    hits = dict.fromkeys(methods, 0)
    share: dict[str, list[float]] = {m: [] for m in methods}
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for order in ARRANGEMENTS:
        array, _ = model_input(collage(order), prep, False)
        x = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float().to(device) / 255
        x = ((x - mean) / std).expand(4, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        targets = torch.tensor([loaded.classes.resolve(TILES[t][1]) for t in order])
        size = x.shape[-1]
        half = size // 2
        for method in methods:
            start = time.perf_counter()
            result = compute_methods(model, x, layers, [method], targets, options)
            seconds[method] += time.perf_counter() - start
            if method in result.maps:
                saliency = pixel_order_saliency(method, result.unit_map(method), size)
            else:
                saliency = pixel_order_saliency(method, result.images[method], size)
            for k in range(4):
                peak = int(saliency[k].flatten().argmax())
                py, px = divmod(peak, size)
                hits[method] += int(((py >= half) * 2 + (px >= half)) == k)
                positive = saliency[k].clamp(min=0)
                tile = positive[
                    (k // 2) * half : (k // 2 + 1) * half, (k % 2) * half : (k % 2 + 1) * half
                ]
                share[method].append(float(tile.sum() / positive.sum().clamp(min=1e-12)))
            for name, values in result.metrics[method].items():
                scores[method].setdefault(name, []).extend(values.tolist())
            print(f"{method}: {hits[method]} hits so far", file=sys.stderr, flush=True)
    trials = 4 * len(ARRANGEMENTS)
    print(
        f"| method | pointing game (of {trials}) | tile share | deletion (lower better) "
        "| insertion (higher better) | average drop % (lower better) | increase % | "
        "seconds per image |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for method in methods:
        s = scores[method]
        print(
            f"| `{method}` | {hits[method]}/{trials} | {np.mean(share[method]):.2f} "
            f"| {np.mean(s['deletion']):.3f} | {np.mean(s['insertion']):.3f} "
            f"| {100 * np.mean(s['drop']):.1f} | {100 * np.mean(s['increase']):.0f} "
            f"| {seconds[method] / trials:.2f} |"
        )


if __name__ == "__main__":
    main()
