"""Explaining an object detector, per detection: the Grad-CAM family, Eigen-CAM and D-RISE.

The detector follows torchvision's convention: it takes a list of ``3 x H x W`` float images
in [0, 1] at their own sizes and returns one dict per image with ``boxes`` (x1, y1, x2, y2 in
that image's pixels), ``labels`` and ``scores``, sorted by score; it resizes and normalises
itself.

* The Grad-CAM family: one forward pass for the batch, then one gradient of a detection's
  target to the layer per detection slot: slot ``k`` sums the ``k``-th detection of every
  image (images do not mix in a detector in eval mode, so their maps stay separate). The
  target is the one of pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``: the detection's score
  plus the IoU of its box with the box found first (a detection that moves or changes class
  loses both).
* ``eigencam``: the first principal component of the layer, one map per image (class- and
  detection-agnostic).
* ``guided``: guided backpropagation of each detection's target to the photo (the rule of
  :mod:`camcli.methods.guided`, from the same forward pass as the CAMs);
* ``drise`` (Petsiuk et al. 2021): random masks of the photo; each masked photo's detections
  are scored against the target detection by IoU x class match x score (the best one counts)
  and the masks are averaged with those weights.

Layer maps of a torchvision detector cover its resized and padded batch
(``GeneralizedRCNNTransform``): each image's part is cropped and resized back to the image,
so a map lies on the photo's pixels (pytorch-grad-cam's tutorial stretches the padded map
over the image instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camcli.methods.activation import eigencam
from camcli.methods.gradient import gradcam, gradcam_plus_plus, hirescam, layercam, xgradcam
from camcli.methods.guided import GuidedActivations
from camcli.methods.rise import RiseMasks
from camcli.methods.stopping import check_stop, passes_done, plan_passes, planned_passes
from camcli.models.hooks import LayerCapture, frozen_eval
from camcli.models.tasks import describe_output

__all__ = [
    "DETECTION_METHODS",
    "Detection",
    "DetectionResult",
    "box_iou",
    "drise",
    "explain_detections",
    "run_detector",
]

GRADIENT_CAMS = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
}
DETECTION_METHODS = (*GRADIENT_CAMS, "eigencam", "drise", "guided")


@dataclass(frozen=True)
class Detection:
    """One detection kept for explaining (boxes in the image's pixels)."""

    box: tuple[float, float, float, float]
    label: int
    score: float


@dataclass
class DetectionResult:
    """One image's detections and their maps.

    Attributes:
        detections: the detections kept (score at least the threshold, at most the limit).
        maps: per method, ``(K, H, W)`` float maps on the image's pixels, one per detection;
            ``eigencam``'s is ``(1, H, W)`` (one per image).
        gradients: ``guided``'s input gradients, ``(K, 3, H, W)``, one per detection.
    """

    detections: list[Detection]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: torch.Tensor | None = None


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``(n, 4)`` and ``(m, 4)`` (x1, y1, x2, y2): ``(n, m)``, differentiable."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12)


def run_detector(module: nn.Module, images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """The detector's outputs for ``images``, checked against torchvision's convention.

    Raises:
        ValueError: naming what the model returned when it is not one dict per image with
            ``boxes``, ``labels`` and ``scores``.
    """
    outputs = module(list(images))
    if (
        not isinstance(outputs, (list, tuple))
        or len(outputs) != len(images)
        or not all(isinstance(o, dict) and {"boxes", "labels", "scores"} <= set(o) for o in outputs)
    ):
        raise ValueError(
            f"a detector must return one dict per image with boxes, labels and scores; "
            f"this one returned {describe_output(outputs)}"
        )
    return list(outputs)


def _kept(output: dict[str, Any], threshold: float, limit: int) -> torch.Tensor:
    """Indices of the detections explained: score >= threshold, best first, at most limit."""
    scores = output["scores"].detach()
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= threshold]
    return order[:limit]


class _FrameCapture:
    """Where each image lies in the detector's resized and padded batch (torchvision)."""

    def __init__(self, module: nn.Module) -> None:
        self.sizes: list[tuple[int, int]] | None = None
        self.padded: tuple[int, int] | None = None
        transform = getattr(module, "transform", None)
        self.handle = (
            transform.register_forward_hook(self._hook)
            if isinstance(transform, nn.Module)
            else None
        )

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        image_list = output[0] if isinstance(output, tuple) else output
        sizes = getattr(image_list, "image_sizes", None)
        tensors = getattr(image_list, "tensors", None)
        if sizes is not None and isinstance(tensors, torch.Tensor):
            self.sizes = [(int(h), int(w)) for h, w in sizes]
            self.padded = (int(tensors.shape[-2]), int(tensors.shape[-1]))

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _on_image(
    maps: torch.Tensor, index: int, frame: _FrameCapture, height: int, width: int
) -> torch.Tensor:
    """Layer-grid maps ``(K, h, w)`` of image ``index`` on its pixels ``(K, H, W)``."""
    maps = maps[:, None].float()
    if frame.sizes is not None and frame.padded is not None:
        # onto the padded frame's pixels, then the image's part of it: exact whatever the
        # padding (a crop in whole layer cells would depend on the batch's largest image)
        (rh, rw), padded = frame.sizes[index], frame.padded
        maps = F.interpolate(maps, size=padded, mode="bilinear", align_corners=False)
        maps = maps[..., :rh, :rw]
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def explain_detections(
    module: nn.Module,
    images: Sequence[torch.Tensor],
    layer: str | None,
    methods: Sequence[str],
    score_threshold: float = 0.5,
    max_detections: int = 20,
    drise_masks: int = 1000,
    chunk_size: int = 16,
    seed: int = 0,
) -> list[DetectionResult]:
    """Detect, then explain every kept detection of every image with ``methods``.

    Args:
        module: the detector (torchvision's convention), in eval mode.
        images: ``3 x H x W`` float images in [0, 1], on the module's device.
        layer: the layer of the CAM methods (a 4-D output per image); ``None`` with
            ``drise`` alone.
        methods: some of :data:`DETECTION_METHODS`.
        score_threshold: the least score of a detection that is explained.
        max_detections: the most detections explained per image (best first).
        drise_masks: masks of ``drise``.
        chunk_size: masked photos per forward pass of ``drise``.
        seed: the masks' seed.

    Returns:
        One result per image.

    Raises:
        ValueError: an unknown method, or a model that is no detector.
    """
    unknown = [m for m in methods if m not in DETECTION_METHODS]
    if unknown:
        raise ValueError(f"no detection method {unknown[0]!r} (one of {DETECTION_METHODS})")
    cams = [m for m in methods if m in GRADIENT_CAMS or m == "eigencam"]
    guided = "guided" in methods
    frame = _FrameCapture(module)
    try:
        with frozen_eval(module), torch.enable_grad():
            if (cams and layer is not None) or guided:
                photos = [im.detach().clone().requires_grad_(guided) for im in images]
                mode: Any = GuidedActivations() if guided else contextlib.nullcontext()
                names = [layer] if cams and layer is not None else []
                with LayerCapture(module, names, detach=not guided) as capture, mode:
                    outputs = run_detector(module, photos)
                activations = capture.activations[layer] if names and layer is not None else None
                results = _gradient_maps(
                    outputs, activations, photos, cams, frame, score_threshold,
                    max_detections, mode if guided else None,
                )  # fmt: skip
            else:
                with torch.no_grad():
                    outputs = run_detector(module, images)
                results = [
                    DetectionResult(_detections(o, _kept(o, score_threshold, max_detections)))
                    for o in outputs
                ]
    finally:
        frame.remove()
    if "drise" in methods:
        explained = sum(1 for result in results if result.detections)
        with planned_passes(explained * drise_masks, "drise"):  # every photo's, up front
            for image, result in zip(images, results, strict=True):
                result.maps["drise"] = drise(
                    module, image, result.detections, drise_masks, chunk_size, seed
                )
    return results


def _detections(output: dict[str, Any], kept: torch.Tensor) -> list[Detection]:
    boxes = output["boxes"].detach()[kept].float().cpu().tolist()
    labels = output["labels"].detach()[kept].cpu().tolist()
    scores = output["scores"].detach()[kept].float().cpu().tolist()
    return [
        Detection((b[0], b[1], b[2], b[3]), int(lab), float(s))
        for b, lab, s in zip(boxes, labels, scores, strict=True)
    ]


def _gradient_maps(
    outputs: list[dict[str, Any]],
    activations: torch.Tensor | None,
    photos: Sequence[torch.Tensor],
    cams: list[str],
    frame: _FrameCapture,
    threshold: float,
    limit: int,
    guided: GuidedActivations | None,
) -> list[DetectionResult]:
    """The CAMs and guided gradients of every kept detection: one backward per slot each."""
    if activations is not None and (activations.dim() != 4 or activations.shape[0] != len(photos)):
        raise ValueError(
            f"the layer gives {tuple(activations.shape)}, not one (C, h, w) map per image: "
            "choose a backbone layer ('camcli layers MODEL')"
        )
    kept = [_kept(o, threshold, limit) for o in outputs]
    results = [DetectionResult(_detections(o, k)) for o, k in zip(outputs, kept, strict=True)]
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in photos]
    gradient_cams = [m for m in cams if m in GRADIENT_CAMS] if activations is not None else []
    per_image: list[dict[str, list[torch.Tensor]]] = [
        {m: [] for m in gradient_cams} for _ in photos
    ]
    guided_rows: list[list[torch.Tensor]] = [[] for _ in photos]
    slots = max((len(k) for k in kept), default=0) if gradient_cams or guided else 0
    for slot in range(slots):
        owners = [i for i, k in enumerate(kept) if len(k) > slot]
        target = photos[0].new_zeros(())
        for i in owners:
            d = int(kept[i][slot])
            box = outputs[i]["boxes"][d : d + 1]
            target = target + outputs[i]["scores"][d] + box_iou(box, box.detach())[0, 0]
        more = slot + 1 < slots
        if gradient_cams and activations is not None:
            if guided is not None:
                guided.rule.guided = False
            (gradients,) = torch.autograd.grad(
                target, activations, retain_graph=more or guided is not None, allow_unused=True
            )
            if gradients is None:
                gradients = torch.zeros_like(activations)
            for method in gradient_cams:
                maps = GRADIENT_CAMS[method](activations[owners].detach(), gradients[owners])
                for row, i in enumerate(owners):
                    per_image[i][method].append(maps[row])
        if guided is not None:
            guided.rule.guided = True
            wanted = [photos[i] for i in owners]
            grads = torch.autograd.grad(target, wanted, retain_graph=more, allow_unused=True)
            for i, photo, grad in zip(owners, wanted, grads, strict=True):
                guided_rows[i].append(torch.zeros_like(photo) if grad is None else grad.detach())
    for i, result in enumerate(results):
        height, width = sizes[i]
        for method in gradient_cams:
            stack = per_image[i][method]
            result.maps[method] = (
                _on_image(torch.stack(stack), i, frame, height, width)
                if stack
                else photos[i].new_zeros((0, height, width))
            )
        if "eigencam" in cams and activations is not None:
            grid = eigencam(activations[i : i + 1].detach())
            result.maps["eigencam"] = _on_image(grid, i, frame, height, width)
        if guided is not None:
            rows = guided_rows[i]
            result.gradients = (
                torch.stack(rows) if rows else photos[i].new_zeros((0, 3, height, width))
            )
    return results


def drise(
    module: nn.Module,
    image: torch.Tensor,
    detections: Sequence[Detection],
    masks: int = 1000,
    chunk_size: int = 16,
    seed: int = 0,
    cells: int = 16,
    keep: float = 0.5,
) -> torch.Tensor:
    """D-RISE saliency of each detection: ``(K, H, W)``, the weighted mean of the masks.

    For mask ``m`` and detection ``t``, the weight is the best, over the masked photo's
    detections ``d``, of ``IoU(t, d) x [label_t == label_d] x score_d`` (Petsiuk et al. 2021
    with the detector's label and score in place of its class probability vector). The
    masks are RISE's (:class:`~camcli.methods.rise.RiseMasks`: a ``cells`` x ``cells`` grid,
    bilinearly upsampled with a random shift), drawn for the image's longer side and cropped.

    Args:
        module: the detector, in eval mode.
        image: ``3 x H x W`` float in [0, 1].
        detections: the detections to explain.
        masks: how many masks.
        chunk_size: masked photos per forward pass.
        seed: the masks' seed (the same masks on every device).
        cells: mask grid side.
        keep: probability that a cell is kept.
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if not detections:
        return image.new_zeros((0, height, width))
    side = max(height, width)
    drawn = RiseMasks.random(masks, side, seed, cells=cells, keep=keep)
    targets = torch.tensor([d.box for d in detections], dtype=torch.float32, device=image.device)
    labels = torch.tensor([d.label for d in detections], device=image.device)
    total = image.new_zeros((len(detections), height, width), dtype=torch.float32)
    plan_passes(masks, "drise")
    with torch.no_grad(), frozen_eval(module):
        for start in range(0, masks, chunk_size):
            check_stop()
            stop = min(masks, start + chunk_size)
            chunk = drawn.chunk(start, stop, image.device)[:, :, :height, :width]
            outputs = run_detector(module, list(image[None] * chunk))
            weights = torch.stack([_similarity(o, targets, labels) for o in outputs])  # (n, K)
            total += torch.einsum("nk,nhw->khw", weights, chunk[:, 0])
            passes_done(stop - start)
    return total / masks


def _similarity(
    output: dict[str, Any], targets: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per target: the best IoU x class match x score among one masked photo's detections."""
    boxes = output["boxes"].float()
    if boxes.numel() == 0:
        return targets.new_zeros(len(targets))
    same = (labels[:, None] == output["labels"][None, :]).float()
    return (box_iou(targets, boxes) * same * output["scores"].float()[None, :]).amax(dim=1)
