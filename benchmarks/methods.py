"""Each chunked method and the faithfulness scores against the bare passes they need.

For the embedded model (or ``--model``), on ``--images`` sample photos, one process measures:

* the method through ``compute_methods`` (one forward pass for the batch plus the method's
  own passes), best of ``--repeat``;
* the bound: the same number of bare passes of the model, with the same chunk size and
  memory layout, on random inputs (forward only for Score-CAM, RISE and the scores; forward
  + backward to the input for SmoothGrad, IG and LRP), plus the batch's one forward pass;

and prints images per second of both and their ratio (the bound's time over the method's:
1.0 means the method costs nothing beyond its passes; the target is 0.8).

    python benchmarks/methods.py --images 2 --rise-masks 512 --chunk-size 32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from camcli.io.decode import load_rgb, model_input
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.names import METRICS
from camcli.models import EMBEDDED_MODEL
from camcli.models.registry import load_model

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def best(function, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--rise-masks", type=int, default=512)
    parser.add_argument("--smooth-samples", type=int, default=16)
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--metric-steps", type=int, default=16)
    parser.add_argument("--scorecam", action="store_true", help="also Score-CAM (slow on a CPU)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated method rows to run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = load_model(args.model)
    model = loaded.module.eval().to(memory_format=torch.channels_last)
    for param in model.parameters():
        param.requires_grad_(False)
    prep = loaded.preprocessing
    paths = sorted(p for p in SAMPLES.glob("*/*") if p.suffix in (".png", ".jpg"))
    paths = (paths * args.images)[: args.images]
    arrays = [model_input(load_rgb(p), prep, crop=False)[0] for p in paths]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    n, chunk, size = len(paths), args.chunk_size, prep.size
    with torch.no_grad():
        channels = model.forward_features(x).shape[1] if hasattr(model, "forward_features") else 0
    black = tuple(-m / s for m, s in zip(prep.mean, prep.std, strict=True))
    options = MethodOptions(
        chunk_size=chunk,
        smooth_samples=args.smooth_samples,
        rise_masks=args.rise_masks,
        ig_steps=args.ig_steps,
        ig_max_steps=args.ig_steps,  # fixed: the bound counts these passes
        black=black,
        metrics=METRICS,
        metric_steps=args.metric_steps,
    )
    layer = loaded.default_layer
    # (method, passes per image, backward?, methods to compute, compute the scores?)
    cases = [
        ("rise", args.rise_masks, False, ["rise"]),
        ("smoothgrad", args.smooth_samples, True, ["smoothgrad"]),
        ("ig", args.ig_steps + 0.5, True, ["ig"]),  # + the f(x), f(b) pass per image pair
        ("lrp", 1, True, ["lrp"]),
        # deletion + insertion: 2 (steps + 1) passes, drop: 1, per image and method
        ("metrics (gradcam)", 2 * (args.metric_steps + 1) + 1, False, ["gradcam"]),
    ]
    if args.scorecam and channels:
        cases.insert(0, ("scorecam", channels, False, ["scorecam"]))
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        cases = [case for case in cases if case[0].split(" ")[0] in wanted]

    def bare(passes_per_image: float, backward: bool) -> None:
        total = round(n * passes_per_image)
        for start in range(0, total, chunk):
            part = torch.randn(min(chunk, total - start), 3, size, size).contiguous(
                memory_format=torch.channels_last
            )
            if backward:
                part.requires_grad_(True)
                with torch.enable_grad():
                    out = model(part)
                    torch.autograd.grad(out[:, 0].sum(), part)
            else:
                with torch.no_grad():
                    model(part)
        with torch.enable_grad():  # the batch's own forward (and gradient to the layer)
            model(x.clone().requires_grad_(True))[:, 0].sum().backward()

    print(
        f"{args.model}, {n} images, chunk {chunk}, channels-last, {torch.get_num_threads()} threads"
    )
    print(f"{'method':20} {'passes/img':>10} {'method img/s':>13} {'bound img/s':>12} {'ratio':>6}")
    for name, passes, backward, methods in cases:
        metric_options = (
            options
            if name.startswith("metrics")
            else MethodOptions(**{**options.__dict__, "metrics": ()})
        )

        def run(methods: list[str] = methods, metric_options: MethodOptions = metric_options):
            compute_methods(model, x, [layer], methods, None, metric_options)

        run()  # warm-up
        method_s = best(run, args.repeat)
        bound_s = best(lambda p=passes, b=backward: bare(p, b), args.repeat)
        print(
            f"{name:20} {passes:10.0f} {n / method_s:13.3f} {n / bound_s:12.3f} "
            f"{bound_s / method_s:6.2f}"
        )
        if name == "lrp":
            # LRP's rules make passes of their own (z+ runs each convolution again with the
            # positive and the negative weights): its real bound is zennit's own attributor
            from zennit.attribution import Gradient
            from zennit.composites import EpsilonPlusFlat

            from camcli.methods.lrp import lrp_canonizers

            composite = EpsilonPlusFlat(canonizers=lrp_canonizers(model))
            with torch.no_grad():
                logits = model(x)
            onehot = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).float()
            with Gradient(model=model, composite=composite) as attributor:
                attributor(x, onehot)
                zennit_s = best(lambda a=attributor, o=onehot: a(x, o), args.repeat)
            print(
                f"{'lrp vs zennit':20} {'':>10} {n / method_s:13.3f} {n / zennit_s:12.3f} "
                f"{zennit_s / method_s:6.2f}"
            )


if __name__ == "__main__":
    main()
