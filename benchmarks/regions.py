"""Detectors and segmenters: camcli explain against the bare passes the work needs (CPU).

A torchvision detector (Faster R-CNN, MobileNet-V3 FPN at 320) and segmenter (LR-ASPP,
MobileNet-V3) with seeded random weights; the detector's class head is biased so that it finds
objects (random weights spread its scores under its own 0.05 floor). On ``--images`` photos
made from the sample photos, in one process:

* bare: the model's forward pass on a batch and one backward pass per detection (or per class
  present) to the Grad-CAM layer, as camcli needs them, nothing else;
* camcli: ``run_explain`` end to end with Grad-CAM (decode, detect, maps per detection,
  pictures at the photo's size, records, index).

Prints images/s, detections (or segments) per second and camcli / bare.

    python benchmarks/regions.py --images 32 --batch-size 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

from camcli.io.discover import discover_images
from camcli.methods.detection import box_iou
from camcli.models.classes import ClassIndex
from camcli.models.own import IMAGENET_MEAN, IMAGENET_STD, dense_model
from camcli.models.preprocessing import Preprocessing
from camcli.runs.explain import run_explain
from camcli.runs.settings import Settings

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


class _Quiet:
    def record(self, record: dict[str, Any]) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def passes(self, done: int, planned: int, method: str) -> None:
        pass


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> None:
    """Crops of the sample photos, ``size`` (width, height), as JPEG."""
    sources = [
        Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*/*.*")) if p.suffix != ".md"
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        photo = sources[k % len(sources)].resize(size)
        photo.save(folder / f"p{k:04d}.jpg", quality=90)


def _bare_detect(
    module: torch.nn.Module, layer: str, photos: list[torch.Tensor], batch: int
) -> tuple[float, int]:
    from camcli.models.hooks import LayerCapture, frozen_eval

    start, found = time.perf_counter(), 0
    with frozen_eval(module), torch.enable_grad():
        for i in range(0, len(photos), batch):
            with LayerCapture(module, [layer], detach=True) as capture:
                outputs = module(photos[i : i + batch])
            acts = capture.activations[layer]
            kept = [(o["scores"] >= 0.5).nonzero()[:, 0][:20] for o in outputs]
            slots = max((len(k) for k in kept), default=0)
            found += sum(len(k) for k in kept)
            for slot in range(slots):
                target = acts.new_zeros(())
                for o, k in zip(outputs, kept, strict=True):
                    if len(k) > slot:
                        d = int(k[slot])
                        box = o["boxes"][d : d + 1]
                        target = target + o["scores"][d] + box_iou(box, box.detach())[0, 0]
                torch.autograd.grad(target, acts, retain_graph=slot + 1 < slots)
    return time.perf_counter() - start, found


def _bare_segment(
    module: torch.nn.Module, layer: str, inputs: torch.Tensor, batch: int
) -> tuple[float, int]:
    from camcli.models.hooks import LayerCapture, frozen_eval

    start, found = time.perf_counter(), 0
    with frozen_eval(module), torch.enable_grad():
        for i in range(0, len(inputs), batch):
            with LayerCapture(module, [layer], detach=True) as capture:
                logits = module(inputs[i : i + batch])["out"]
            acts = capture.activations[layer]
            mask = logits.argmax(1)
            present = [
                [c for c in m.unique().tolist() if c != 0 and (m == c).float().mean() >= 0.01]
                for m in mask
            ]
            slots = max((len(p) for p in present), default=0)
            found += sum(len(p) for p in present)
            for slot in range(slots):
                target = logits.new_zeros(())
                for j, p in enumerate(present):
                    if len(p) > slot:
                        target = target + (logits[j, p[slot]] * (mask[j] == p[slot])).sum()
                torch.autograd.grad(target, acts, retain_graph=slot + 1 < slots)
    return time.perf_counter() - start, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", default="320x240", help="photo WxH")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None
    )
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    segmenter = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21
    )
    with torch.no_grad():
        segmenter.classifier.high_classifier.bias[:3] = torch.tensor([0.0, 2.0, 2.0])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        make_photos(folder, args.images, (width, height))
        items = discover_images(folder)
        prep_d = Preprocessing(64, 64, IMAGENET_MEAN, IMAGENET_STD)
        loaded_d = dense_model(
            "fasterrcnn", detector, prep_d, "random", "detect", ClassIndex.numbered(91)
        )
        prep_s = Preprocessing(256, 256, IMAGENET_MEAN, IMAGENET_STD)
        loaded_s = dense_model(
            "lraspp", segmenter, prep_s, "random", "segment", ClassIndex.numbered(21)
        )
        photos = [
            torch.from_numpy(np.array(Image.open(i.path).convert("RGB"))).permute(2, 0, 1).float()
            / 255
            for i in items
        ]
        threads = torch.get_num_threads()
        print(
            f"{len(items)} photos of {width} x {height}, batch {args.batch_size}, {threads} threads"
        )
        for task, loaded in (("detect", loaded_d), ("segment", loaded_s)):
            if task == "detect":
                bare_s, found = _bare_detect(
                    loaded.module, loaded.default_layer, photos, args.batch_size
                )
            else:
                mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
                std = torch.tensor(IMAGENET_STD)[:, None, None]
                inputs = torch.stack(
                    [
                        torch.nn.functional.interpolate(p[None], size=(256, 256), mode="bilinear")[
                            0
                        ]
                        for p in photos
                    ]
                )
                bare_s, found = _bare_segment(
                    loaded.module, loaded.default_layer, (inputs - mean) / std, args.batch_size
                )
            settings = Settings(
                output_dir=Path(tmp) / task,
                layers=(loaded.default_layer,),
                methods=("gradcam",),
                batch_size=args.batch_size,
                workers=1,
                write_threads=1,
                task=task,
            )
            start = time.perf_counter()
            summary = run_explain(items, loaded, settings, _Quiet())
            camcli_s = time.perf_counter() - start
            assert summary.explained == len(items), summary
            unit = "detections" if task == "detect" else "segments"
            print(
                f"{task:8s} bare fwd + 1 bwd per {unit[:-1]}: {len(items) / bare_s:6.2f} images/s, "
                f"{found / bare_s:6.2f} {unit}/s | camcli: {len(items) / camcli_s:6.2f} images/s, "
                f"{found / camcli_s:6.2f} {unit}/s | camcli / bare {bare_s / camcli_s:.2f} "
                f"({found} {unit})"
            )


if __name__ == "__main__":
    main()
