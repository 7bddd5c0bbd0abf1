"""End-to-end throughput: camcli against the peers and against the model's own speed.

Work per image in every contender: top-5 JSON, Grad-CAM heatmap PNG, overlay PNG and
guided-backprop PNG, all at the image's original size. Measured in one process, on the same
images, model, device, batch size and precision:

* ``bare``: the model's forward + backward to the input on pre-loaded batches (no decoding,
  no maths, no files): the bound a pipeline can approach;
* ``camcli``: ``run_explain`` end to end, files written to a temporary directory and counted;
* ``readme``: pytorch-grad-cam used as its README shows (batched ``GradCAM``,
  ``GuidedBackpropReLUModel`` per image, ``show_cam_on_image``, ``cv2.imwrite``);
* ``tuned``: a careful assembly of the peers (pytorch-grad-cam batched ``GradCAM``, captum
  batched ``GuidedBackprop``, cv2 writes in a thread pool).

The peers need the ``bench`` extra (``pip install -e '.[bench]'``). Weights are random unless
``--weights`` is given: throughput does not depend on the weights' values.

    python benchmarks/throughput.py --model resnet18 --images 64 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image

from camcli.io.discover import discover_images
from camcli.models.classes import imagenet_classes
from camcli.models.layers import default_layer
from camcli.models.loaded import LoadedModel, Preprocessing, load_state_dict_file
from camcli.runs.explain import run_explain
from camcli.runs.settings import Settings, host_parallelism

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def make_images(folder: Path, count: int, size: tuple[int, int] = (500, 375)) -> None:
    """Realistic JPEGs: crops of the sample photos, flipped and colour-jittered, 500 x 375."""
    sources = [
        Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*/*.*")) if p.suffix != ".md"
    ]
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = sources[i % len(sources)]
        scale = rng.uniform(0.6, 1.0)
        w, h = int(image.width * scale), int(image.height * scale)
        x, y = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
        tile = image.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
        if i % 2:
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(tile, dtype=np.float32) * rng.uniform(0.8, 1.2)
        sub = folder / f"c{i % 4}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(
            sub / f"{i:05d}.jpg", quality=90
        )


def build_model(name: str, weights: Path | None) -> LoadedModel:
    module = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        module.load_state_dict(load_state_dict_file(weights))
    t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    prep = Preprocessing(
        int(t.crop_size[0]),
        int(t.resize_size[0]),
        tuple(t.mean),
        tuple(t.std),
        str(t.interpolation.value),
    )
    return LoadedModel(
        name,
        module.eval(),
        prep,
        imagenet_classes(),
        default_layer(name, module),
        str(weights or "random"),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def bare(
    model: LoadedModel,
    count: int,
    batch: int,
    device: torch.device,
    precision: str,
    channels_last: bool = False,
) -> float:
    """Forward + backward to the input, frozen parameters, batches already on the device."""
    module = copy.deepcopy(model.module).to(device).eval().requires_grad_(False)
    size = model.preprocessing.size
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    done = 0
    for _ in range(2):  # warm-up
        xx = x.clone().requires_grad_(True)
        with autocast(device, precision):
            out = module(xx)
        torch.autograd.grad(out.max(1).values.sum(), xx)
    sync(device)
    start = time.perf_counter()
    while done < count:
        xx = x.clone().requires_grad_(True)
        with autocast(device, precision):
            out = module(xx)
        torch.autograd.grad(out.max(1).values.sum(), xx)
        done += batch
    sync(device)
    return done / (time.perf_counter() - start)


class _Quiet:
    def record(self, record: dict[str, Any]) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


def camcli_run(
    model: LoadedModel,
    folder: Path,
    out: Path,
    batch: int,
    device: torch.device,
    precision: str,
    workers: int | None,
    channels_last: bool = False,
) -> tuple[float, int]:
    default_workers, write_threads = host_parallelism(device.type, os.cpu_count() or 1)
    items = discover_images(folder)
    settings = Settings(
        output_dir=out,
        layers=(model.default_layer,),
        batch_size=batch,
        workers=default_workers if workers is None else workers,
        device=device,
        precision=precision,
        channels_last=channels_last,
        resize_on_device=device.type == "cuda",  # as the CLI's --resize-on auto
        write_threads=write_threads,
    )
    start = time.perf_counter()
    summary = run_explain(items, copy.deepcopy(model), settings, _Quiet())
    seconds = time.perf_counter() - start
    files = sum(1 for p in out.rglob("*") if p.is_file() and p.suffix in (".png", ".json"))
    assert summary.explained == len(items), summary
    return len(items) / seconds, files


def _preprocess(rgb: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    from pytorch_grad_cam.utils.image import preprocess_image

    resized = cv2.resize(rgb, (prep.size, prep.size))
    return preprocess_image(resized, mean=list(prep.mean), std=list(prep.std))


def _top5_json(path: Path, logits: torch.Tensor, names: list[str]) -> None:
    p, i = logits.softmax(0).topk(5)
    path.write_text(
        json.dumps(
            [
                {"index": int(k), "name": names[int(k)], "probability": float(v)}
                for v, k in zip(p, i, strict=True)
            ]
        )
    )


def readme_loop(
    model: LoadedModel, folder: Path, out: Path, batch: int, device: torch.device
) -> tuple[float, int]:
    """pytorch-grad-cam as its README shows it."""
    from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.image import deprocess_image, show_cam_on_image

    module = copy.deepcopy(model.module).to(device).eval()
    paths = sorted(folder.rglob("*.jpg"))
    names = list(model.classes.names)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    layer = module.get_submodule(model.default_layer)
    with GradCAM(model=module, target_layers=[layer]) as cam:
        guided_model = GuidedBackpropReLUModel(model=module, device=device)
        for b in range(0, len(paths), batch):
            chunk = paths[b : b + batch]
            rgbs = [np.float32(cv2.imread(str(p))[:, :, ::-1]) / 255 for p in chunk]
            inputs = torch.cat([_preprocess(rgb, model.preprocessing) for rgb in rgbs]).to(device)
            grayscale = cam(input_tensor=inputs, targets=None)
            for j, (path, rgb) in enumerate(zip(chunk, rgbs, strict=True)):
                height, width = rgb.shape[:2]
                mask = cv2.resize(grayscale[j], (width, height))
                overlay = show_cam_on_image(rgb, mask, use_rgb=True)
                heat = cv2.applyColorMap(np.uint8(255 * mask), cv2.COLORMAP_JET)
                gb = guided_model(inputs[j : j + 1], target_category=None)
                gb = cv2.resize(deprocess_image(gb), (width, height))
                stem = out / path.name
                cv2.imwrite(f"{stem}.gradcam.png", heat)
                cv2.imwrite(f"{stem}.overlay.png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                cv2.imwrite(f"{stem}.guided.png", gb)
                _top5_json(Path(f"{stem}.json"), cam.outputs[j].detach().cpu(), names)
    seconds = time.perf_counter() - start
    return len(paths) / seconds, sum(1 for _ in out.iterdir())


def tuned_assembly(
    model: LoadedModel, folder: Path, out: Path, batch: int, device: torch.device, threads: int
) -> tuple[float, int]:
    """pytorch-grad-cam batched Grad-CAM + captum batched guided backprop + threaded writes."""
    from captum.attr import GuidedBackprop
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import deprocess_image, show_cam_on_image

    module = copy.deepcopy(model.module).to(device).eval()
    for m in module.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    paths = sorted(folder.rglob("*.jpg"))
    names = list(model.classes.names)
    out.mkdir(parents=True, exist_ok=True)
    guided = GuidedBackprop(module)

    def write(
        stem: Path, rgb: np.ndarray, mask: np.ndarray, gb: np.ndarray, logits: torch.Tensor
    ) -> None:
        height, width = rgb.shape[:2]
        mask = cv2.resize(mask, (width, height))
        overlay = show_cam_on_image(rgb, mask, use_rgb=True)
        cv2.imwrite(
            f"{stem}.gradcam.png", cv2.applyColorMap(np.uint8(255 * mask), cv2.COLORMAP_JET)
        )
        cv2.imwrite(f"{stem}.overlay.png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        cv2.imwrite(f"{stem}.guided.png", cv2.resize(deprocess_image(gb), (width, height)))
        _top5_json(Path(f"{stem}.json"), logits, names)

    start = time.perf_counter()
    layer = module.get_submodule(model.default_layer)
    with GradCAM(model=module, target_layers=[layer]) as cam, ThreadPoolExecutor(threads) as pool:
        futures = []
        for b in range(0, len(paths), batch):
            chunk = paths[b : b + batch]
            rgbs = [np.float32(cv2.imread(str(p))[:, :, ::-1]) / 255 for p in chunk]
            inputs = torch.cat([_preprocess(rgb, model.preprocessing) for rgb in rgbs]).to(device)
            grayscale = cam(input_tensor=inputs, targets=None)
            logits = cam.outputs.detach()
            top1 = logits.argmax(1)
            gb = guided.attribute(inputs.clone(), target=top1).detach()
            gb_np = gb.permute(0, 2, 3, 1).cpu().numpy()
            logits_cpu = logits.cpu()
            for j, path in enumerate(chunk):
                futures.append(
                    pool.submit(
                        write, out / path.name, rgbs[j], grayscale[j], gb_np[j], logits_cpu[j]
                    )
                )
        for f in futures:
            f.result()
    seconds = time.perf_counter() - start
    return len(paths) / seconds, sum(1 for _ in out.iterdir())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--input", type=Path, help="a folder of images instead of made ones")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="camcli and the bound in channels-last memory format",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: as camcli's CLI)"
    )
    parser.add_argument(
        "--peers", default="readme,tuned", help="comma-separated: readme, tuned (empty: none)"
    )
    parser.add_argument(
        "--readme-images",
        type=int,
        default=None,
        help="images for the (slow) README loop (default: all)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="GIL switch interval (s) during camcli's run (default: camcli's own)",
    )
    args = parser.parse_args()
    if args.switch_interval is not None:
        import camcli.runs.work

        camcli.runs.work.SWITCH_INTERVAL_S = args.switch_interval
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    model = build_model(args.model, args.weights)
    results: dict[str, Any] = {
        "model": args.model,
        "device": str(device),
        "batch_size": args.batch_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "images": args.images,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.input or Path(tmp) / "images"
        if args.input is None:
            make_images(folder, args.images)
        count = len(discover_images(folder))
        figures: dict[str, float] = {}
        figures["bare"] = bare(
            model, count, args.batch_size, device, args.precision, args.channels_last
        )
        print(f"bare forward+backward to input: {figures['bare']:.1f} images/s", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rate, files = camcli_run(
            model,
            folder,
            Path(tmp) / "camcli",
            args.batch_size,
            device,
            args.precision,
            args.workers,
            args.channels_last,
        )
        figures["camcli"] = rate
        results["camcli_files"] = files
        results["camcli_peak_rss_mib"] = round(peak_rss_mib(), 1)
        if device.type == "cuda":
            results["camcli_peak_gpu_mib"] = round(
                torch.cuda.max_memory_allocated(device) / 2**20, 1
            )
        print(f"camcli: {rate:.1f} images/s ({files} files)", file=sys.stderr)
        peers = [p for p in args.peers.split(",") if p]
        if "tuned" in peers:
            figures["tuned"], _ = tuned_assembly(
                model, folder, Path(tmp) / "tuned", args.batch_size, device, os.cpu_count() or 2
            )
            print(f"tuned assembly: {figures['tuned']:.1f} images/s", file=sys.stderr)
        if "readme" in peers:
            sub = folder
            if args.readme_images and args.readme_images < count:
                sub = Path(tmp) / "readme-images"
                for path in sorted(folder.rglob("*.jpg"))[: args.readme_images]:
                    (sub / path.parent.name).mkdir(parents=True, exist_ok=True)
                    (sub / path.parent.name / path.name).write_bytes(path.read_bytes())
            figures["readme"], _ = readme_loop(
                model, sub, Path(tmp) / "readme", args.batch_size, device
            )
            print(f"README loop: {figures['readme']:.2f} images/s", file=sys.stderr)
    results["images_per_second"] = {k: round(v, 2) for k, v in figures.items()}
    ratios = {
        f"camcli / {k}": round(figures["camcli"] / v, 2)
        for k, v in figures.items()
        if k != "camcli"
    }
    results["ratios"] = ratios
    print(
        f"\n{args.model} on {results.get('gpu', device)}, batch {args.batch_size}, "
        f"{args.precision}, {count} images of 500 x 375"
    )
    print(f"{'contender':<28}{'images/s':>12}")
    for key, label in [
        ("bare", "model fwd+bwd (bound)"),
        ("camcli", "camcli end to end"),
        ("tuned", "tuned peer assembly"),
        ("readme", "pytorch-grad-cam README"),
    ]:
        if key in figures:
            print(f"{label:<28}{figures[key]:>12.2f}")
    for name, value in ratios.items():
        print(f"{name:<28}{value:>12.2f}")
    print(
        f"peak RSS {results['camcli_peak_rss_mib']} MiB"
        + (
            f", peak GPU {results['camcli_peak_gpu_mib']} MiB"
            if "camcli_peak_gpu_mib" in results
            else ""
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
