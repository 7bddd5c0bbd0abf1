"""A tiny detector and a tiny segmenter trained here, from random weights, on scenes with a red
and a green object: each detection's and each segment's map lies on its own object."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from camcli.methods.detection import explain_detections
from camcli.methods.segmentation import explain_segments

SIDE = 48


def _scenes(
    count: int, seed: int, absent: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, list[dict[int, list[int]]]]:
    """Photos ``(N, 3, S, S)`` in [0, 1], class masks ``(N, S, S)`` and boxes per class.

    Each object is left out with probability ``absent`` (a detector must then learn that its
    score depends on the object).
    """
    g = torch.Generator().manual_seed(seed)
    photos = torch.full((count, 3, SIDE, SIDE), 0.08)
    photos += 0.04 * torch.rand((count, 3, SIDE, SIDE), generator=g)
    masks = torch.zeros((count, SIDE, SIDE), dtype=torch.long)
    boxes: list[dict[int, list[int]]] = []
    colours = {1: (0.9, 0.12, 0.12), 2: (0.12, 0.86, 0.16)}
    for n in range(count):
        placed: dict[int, list[int]] = {}
        # the two objects in opposite halves, so they never overlap
        left_first = bool(torch.rand((), generator=g) < 0.5)
        for cls in (1, 2):
            if bool(torch.rand((), generator=g) < absent):
                continue
            w, h = (int(v) for v in torch.randint(8, 16, (2,), generator=g))
            half = 0 if (cls == 1) == left_first else SIDE // 2
            x = half + int(torch.randint(0, SIDE // 2 - w + 1, (), generator=g))
            y = int(torch.randint(0, SIDE - h + 1, (), generator=g))
            photos[n, :, y : y + h, x : x + w] = torch.tensor(colours[cls])[:, None, None]
            masks[n, y : y + h, x : x + w] = cls
            placed[cls] = [x, y, x + w, y + h]
        boxes.append(placed)
    return photos, masks, boxes


class Segmenter(nn.Module):
    """Two convolutions and a 1 x 1 head without bias: a class's logit comes only from the
    features at its pixels (with a bias, an under-trained head scores the background too)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(8, 3, 1, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(self.features(x))}


class Detector(nn.Module):
    """Per class: a map of the class (a learnt convolution), its box from the map's moments
    and a score from its mass (learnt scale and offset)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.maps = nn.Conv2d(4, 2, 1)
        self.scale = nn.Parameter(torch.tensor([1.0, 1.0]))
        self.offset = nn.Parameter(torch.tensor([0.0, 0.0]))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        batch = torch.stack(list(images))
        maps = F.softplus(self.maps(self.features(batch)) - 2.0)
        ys = torch.arange(SIDE, dtype=batch.dtype)[None, :, None]
        xs = torch.arange(SIDE, dtype=batch.dtype)[None, None, :]
        out = []
        for m in maps:
            weight = m / (m.sum(dim=(1, 2), keepdim=True) + 1e-6)
            cy, cx = (weight * ys).sum(dim=(1, 2)), (weight * xs).sum(dim=(1, 2))
            sy = ((weight * (ys - cy[:, None, None]) ** 2).sum(dim=(1, 2)) + 1e-6).sqrt()
            sx = ((weight * (xs - cx[:, None, None]) ** 2).sum(dim=(1, 2)) + 1e-6).sqrt()
            boxes = torch.stack([cx - 1.7 * sx, cy - 1.7 * sy, cx + 1.7 * sx, cy + 1.7 * sy], 1)
            scores = torch.sigmoid(self.scale * m.mean(dim=(1, 2)) * 10 + self.offset)
            out.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": scores})
        return out


def test_a_trained_detector_explains_each_detection_by_its_own_object() -> None:
    torch.manual_seed(0)
    model = Detector()
    photos, _, boxes = _scenes(64, seed=2, absent=0.3)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    for step in range(150):
        start = (step * 16) % 64
        outputs = model(list(photos[start : start + 16]))
        loss = photos.new_zeros(())
        for output, placed in zip(outputs, boxes[start : start + 16], strict=True):
            for row, cls in enumerate((1, 2)):
                present = cls in placed
                if present:
                    truth = torch.tensor(placed[cls], dtype=photos.dtype)
                    loss = loss + F.smooth_l1_loss(output["boxes"][row], truth) / 16
                # scores of 0.9 and 0.1: an unsaturated score keeps its gradient
                wanted = torch.tensor(0.9 if present else 0.1)
                loss = loss + F.binary_cross_entropy(output["scores"][row], wanted) / 16
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test_photos, test_masks, test_boxes = _scenes(6, seed=77)
    results = explain_detections(
        model.eval(), list(test_photos), "features", ["gradcam", "hirescam"], 0.5, 20
    )
    for result, truth, placed in zip(results, test_masks, test_boxes, strict=True):
        assert sorted(d.label for d in result.detections) == [1, 2]
        for k, det in enumerate(result.detections):
            x1, y1, x2, y2 = placed[det.label]
            assert abs(det.box[0] - x1) < 4 and abs(det.box[2] - x2) < 4, (det.box, placed)
            for method in ("gradcam", "hirescam"):
                values = result.maps[method][k]
                own = truth == det.label
                other = (truth != det.label) & (truth != 0)
                y, x = divmod(int(values.argmax()), SIDE)
                assert x1 - 2 <= x < x2 + 2 and y1 - 2 <= y < y2 + 2, (method, det.label)
                assert values[own].mean() > 2 * values[other].mean(), (method, det.label)


def test_a_trained_segmenter_explains_each_class_by_its_own_pixels() -> None:
    torch.manual_seed(0)
    model = Segmenter()
    photos, masks, _ = _scenes(64, seed=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for step in range(200):
        start = (step * 16) % 64
        logits = model(photos[start : start + 16])["out"]
        loss = F.cross_entropy(logits, masks[start : start + 16])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.05, loss.item()
    test_photos, test_masks, test_boxes = _scenes(6, seed=77)
    results = explain_segments(model.eval(), test_photos, "features", ["gradcam", "hirescam"], 0.01)
    for result, truth, placed in zip(results, test_masks, test_boxes, strict=True):
        assert sorted(s.index for s in result.segments) == [1, 2]
        for k, segment in enumerate(result.segments):
            x1, y1, x2, y2 = placed[segment.index]
            own = truth == segment.index
            other = (truth != segment.index) & (truth != 0)
            for method in ("gradcam", "hirescam"):
                values = result.maps[method][k]
                y, x = divmod(int(values.argmax()), SIDE)
                assert x1 - 2 <= x < x2 + 2 and y1 - 2 <= y < y2 + 2, (method, segment.index)
                assert values[own].mean() > 2 * values[other].mean(), (method, segment.index)
