"""Localisation scores: hand computations on tiny maps, and Quantus where it has the metric."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch

from camcli.methods.localisation import (
    Box,
    box_accuracy,
    energy_pointing_game,
    pointing_game,
    region_of,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)


def test_box_pixels_follow_pixel_centres():
    # VOC xmin=3..xmax=5 (1-based, inclusive) is columns 2, 3, 4.
    box = Box(3 - 1, 0, 5, 1)
    assert box.columns(10) == (2, 5)
    region = region_of(1, 10, [box], tolerance=0)
    assert region.inside[0].tolist() == [False, False, True, True, True] + [False] * 5
    # COCO [x=1.5, w=2]: centres 1.5 and 2.5 are inside, 3.5 is not.
    assert Box(1.5, 0, 3.5, 1).columns(10) == (1, 3)


def test_pointing_game_tolerance_is_euclidean_distance_to_the_region():
    region = region_of(40, 40, [Box(10, 10, 20, 20)], tolerance=15)
    # Pixel (row 5, col 34): nearest region pixel (10, 19): distance sqrt(25 + 225) ~ 15.8.
    assert not region.near[5, 34]
    # Pixel (row 10, col 34): distance 15 along the row: inside the tolerance.
    assert region.near[10, 34]
    near = torch.from_numpy(region.near)
    saliency = torch.zeros(40, 40)
    saliency[10, 34] = 1.0
    assert pointing_game(saliency, near) == 1.0
    saliency[10, 34], saliency[5, 34] = 0.0, 1.0
    assert pointing_game(saliency, near) == 0.0


def test_a_constant_map_misses_the_pointing_game():
    near = torch.ones(8, 8, dtype=torch.bool)
    assert pointing_game(torch.zeros(8, 8), near) == 0.0
    assert energy_pointing_game(torch.zeros(8, 8), near) is None


def test_energy_pointing_game_counts_the_positive_mass_inside():
    saliency = torch.tensor([[1.0, 3.0], [-5.0, 4.0]])
    inside = torch.tensor([[True, False], [True, False]])
    # Positive mass 1 + 3 + 4 = 8, of which 1 inside (the -5 does not count).
    assert energy_pointing_game(saliency, inside) == pytest.approx(1 / 8)


def test_rank_accuracy_by_hand():
    saliency = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])
    mask = torch.tensor([[True, True, False], [False, True, False]])
    # K = 3 mask pixels; the 3 highest are 0.9 (in), 0.8 (out), 0.7 (in): 2 of 3.
    assert relevance_rank_accuracy(saliency, mask) == pytest.approx(2 / 3)
    assert relevance_rank_accuracy(saliency, torch.zeros_like(mask)) is None


def test_box_accuracy_takes_the_largest_region_above_15_percent():
    saliency = np.zeros((100, 100), dtype=np.float32)
    saliency[10:50, 10:50] = 1.0  # the largest region: a 40 x 40 box
    saliency[80:85, 80:85] = 1.0  # a small one, ignored
    saliency[0:5, 90:95] = 0.1  # below 15 % of the peak
    correct, iou = box_accuracy(saliency, [Box(10, 10, 50, 50)])
    assert (correct, iou) == (1.0, 1.0)
    # Against a box of half the height: IoU 0.5, correct at the threshold.
    correct, iou = box_accuracy(saliency, [Box(10, 10, 50, 30)])
    assert iou == pytest.approx(0.5) and correct == 1.0
    correct, iou = box_accuracy(saliency, [Box(10, 10, 50, 29)])
    assert iou == pytest.approx(19 * 40 / 1600) and correct == 0.0
    # The best of several ground-truth boxes counts.
    assert box_accuracy(saliency, [Box(60, 60, 70, 70), Box(12, 12, 50, 50)])[0] == 1.0
    assert box_accuracy(np.zeros((5, 5)), [Box(0, 0, 5, 5)]) == (0.0, 0.0)


def _random_cases(seed: int, count: int = 6, size: int = 28):
    rng = np.random.default_rng(seed)
    maps = rng.random((count, size, size)).astype(np.float32)
    masks = np.zeros((count, size, size), dtype=bool)
    for i in range(count):
        top, left = rng.integers(0, size // 2, size=2)
        masks[i, top : top + 9, left : left + 11] = True
    return maps, masks


def test_mass_and_rank_accuracy_equal_quantus():
    maps, masks = _random_cases(0)
    x = np.zeros((len(maps), 1, 28, 28), dtype=np.float32)
    y = np.zeros(len(maps), dtype=int)
    kwargs = {"disable_warnings": True, "normalise": False, "abs": False}
    theirs_mass = quantus.RelevanceMassAccuracy(**kwargs)(
        model=None, x_batch=x, y_batch=y, a_batch=maps[:, None], s_batch=masks[:, None]
    )
    theirs_rank = quantus.RelevanceRankAccuracy(**kwargs)(
        model=None, x_batch=x, y_batch=y, a_batch=maps[:, None], s_batch=masks[:, None]
    )
    ours_mass = [
        relevance_mass_accuracy(torch.from_numpy(m), torch.from_numpy(s))
        for m, s in zip(maps, masks, strict=True)
    ]
    ours_rank = [
        relevance_rank_accuracy(torch.from_numpy(m), torch.from_numpy(s))
        for m, s in zip(maps, masks, strict=True)
    ]
    assert ours_mass == pytest.approx(list(theirs_mass), rel=1e-5)
    assert ours_rank == pytest.approx(list(theirs_rank), rel=1e-6)


def test_pointing_game_without_tolerance_equals_quantus():
    maps, masks = _random_cases(1, count=12)
    # Half the cases get their peak inside the mask, half outside.
    for i in range(len(maps)):
        rows, cols = np.nonzero(masks[i] if i % 2 == 0 else ~masks[i])
        maps[i, rows[3], cols[3]] = 2.0
    x = np.zeros((len(maps), 1, 28, 28), dtype=np.float32)
    y = np.zeros(len(maps), dtype=int)
    theirs = quantus.PointingGame(disable_warnings=True, normalise=False, abs=False)(
        model=None, x_batch=x, y_batch=y, a_batch=maps[:, None], s_batch=masks[:, None]
    )
    ours = []
    for m, s in zip(maps, masks, strict=True):
        region = region_of(28, 28, mask=s, tolerance=0)
        ours.append(pointing_game(torch.from_numpy(m), torch.from_numpy(region.near)))
    assert ours == [float(v) for v in theirs]
    assert ours == [1.0, 0.0] * 6
