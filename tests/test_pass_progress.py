"""Progress within a batch: the planned passes are known up front and never grow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from camcli.cli import main
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.integrated import adaptive_integrated_gradients
from camcli.methods.perturbation import smoothgrad
from camcli.methods.stopping import stop_between_chunks

from .conftest import TINY, TinyNet, random_photo, save_image


class Recorder:
    """A :class:`~camcli.methods.stopping.PassProgress` that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.planned = 0
        self.finished = 0
        self.totals: list[int] = []  # the planned total after each call

    def plan(self, passes: int, method: str) -> None:
        self.calls.append(("plan", passes, method))
        self.planned += passes
        self.totals.append(self.planned)
        assert self.finished <= self.planned, self.calls  # nothing done is taken back

    def done(self, passes: int) -> None:
        self.calls.append(("done", passes, ""))
        self.finished += passes
        self.totals.append(self.planned)
        assert self.finished <= self.planned, self.calls  # never more done than planned

    def named(self) -> list[str]:
        return [method for kind, _, method in self.calls if kind == "plan"]


def _model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def test_a_batch_plans_every_methods_passes_before_the_first() -> None:
    """Score-CAM's channels, SmoothGrad's copies, RISE's masks, LRP, IG's most levels and the
    faithfulness curves: one total, planned before any pass, done in full at the end."""
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    options = MethodOptions(
        chunk_size=8, smooth_samples=4, rise_masks=20, ig_steps=4, ig_max_steps=64,
        ig_tolerance=1e9,  # IG stops after its first level: the levels not needed
        metrics=("deletion", "insertion", "drop"), metric_steps=4,
    )  # fmt: skip
    methods = ["gradcam", "scorecam", "rise", "smoothgrad", "lrp", "ig"]
    progress = Recorder()
    with stop_between_chunks(None, progress):
        result = compute_methods(model, x, ["features.3"], methods, None, options)
    # Gauss-Legendre levels 4 + 12 + 36 = 52 fit in 64; six methods' saliencies are scored.
    expected = 2 * 16 + 2 * 4 + 2 * 20 + 2 + 2 * 52 + 2 * (1 + 6 * (2 * 5 + 1))
    first = progress.calls[0]
    assert first[0] == "plan" and first[1] == expected, progress.calls[:3]
    # Fixed before the first pass, never grows: IG's levels not needed are taken back.
    assert progress.totals[0] == expected and max(progress.totals) == expected
    assert progress.totals == sorted(progress.totals, reverse=True)
    assert int(result.checks["ig_passes"].sum()) == 2 * 4
    assert progress.planned == expected - 2 * (52 - 4)
    assert progress.finished == progress.planned  # done reaches planned at the end
    for method in ("scorecam", "smoothgrad", "rise", "lrp", "ig", "deletion", "insertion"):
        assert method in progress.named(), progress.named()


def test_adaptive_integrated_gradients_plans_its_most_levels_up_front() -> None:
    """Alone (as the library's users call it): its levels take passes from one plan, and
    those it does not need are taken back when it stops."""
    model = _model()
    x = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([1, 2, 3])
    progress = Recorder()
    with stop_between_chunks(None, progress):
        ig = adaptive_integrated_gradients(
            model, x, torch.zeros_like(x), targets, 2, 4, tolerance=0.0, max_steps=30,
            rule="midpoint",
        )  # fmt: skip
    assert progress.calls[0] == ("plan", 3 * 18, "ig")  # midpoints 2 + 4 + 12
    assert set(progress.totals) == {3 * 18}
    assert progress.finished == 3 * 18 == int(ig.passes.sum())


def test_smoothgrad_counts_its_passes_as_they_finish() -> None:
    """Two images of 16 copies fit one chunk of 64: done moved only when its loop ended."""
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    progress = Recorder()
    with stop_between_chunks(None, progress):
        smoothgrad(model, x, torch.tensor([0, 1]), [0, 1], 16, 0.15, False, 64)
    done = [passes for kind, passes, _ in progress.calls if kind == "done"]
    assert sum(done) == progress.planned == 32
    assert len(done) >= 4 and done[0] < 32, done  # done moves before the end of its loop


def _loop_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *options: str
) -> list[tuple[int, int, str]]:
    """What the run loop tells the reporter of passes, explaining two photos in one batch."""
    import camcli.runs.loop as loop

    seen: list[tuple[int, int, str]] = []
    monkeypatch.setattr(loop, "report_passes", lambda _r, d, p, m: seen.append((d, p, m)))
    photos = tmp_path / "photos"
    for k in range(2):
        save_image(photos / f"p{k}.png", random_photo(k))
    result = CliRunner().invoke(
        main,
        ["explain", str(photos), "--model", TINY, "-o", str(tmp_path / "out"), "--device", "cpu",
         "--batch-size", "2", *options],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return seen


def test_the_run_loop_shows_a_batch_total_that_does_not_grow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's faithfulness example, small: what the loop tells the reporter."""
    readme = ["--method", "gradcam,gradcam++,rise,lrp,ig", "--metrics", "all", "--rise-masks",
              "20", "--ig-max-steps", "128"]  # fmt: skip
    seen = _loop_reports(tmp_path, monkeypatch, *readme)
    batches: list[list[tuple[int, int, str]]] = [[]]
    for entry in seen:
        if entry == (0, 0, ""):
            batches.append([])
        else:
            batches[-1].append(entry)
    batches = [b for b in batches if b]
    assert len(batches) == 1, seen
    (batch,) = batches
    planned = [p for _, p, _ in batch]
    # Known at the first report; it never grows (IG's levels not needed are taken back).
    assert planned == sorted(planned, reverse=True), batch
    # RISE, LRP, IG at most 32 + 96, the unmodified images, 5 methods x (2 curves + drop)
    assert planned[0] == 2 * (20 + 1 + 128 + 1 + 5 * (2 * 17 + 1)), batch[0]
    assert batch[-1][0] == batch[-1][1], batch[-1]  # done reaches it
    dones = [d for d, _, _ in batch]
    assert dones == sorted(dones)


def test_several_targets_plan_every_targets_passes_before_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--target pred,3: the second target's passes are in the batch's first total."""
    seen = _loop_reports(tmp_path, monkeypatch, "--method", "gradcam,rise", "--rise-masks", "20",
                         "--target", "pred,3")  # fmt: skip
    batch = [entry for entry in seen if entry != (0, 0, "")]
    planned = [p for _, p, _ in batch]
    assert planned[0] == 2 * 2 * 20, batch  # two targets x two images x 20 masks
    assert set(planned) == {planned[0]}, batch
    assert batch[-1][0] == planned[0]


def test_adaptive_integrated_gradients_takes_back_the_levels_it_does_not_need() -> None:
    """An image that meets its tolerance at once: its further levels leave the plan."""
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    progress = Recorder()
    with stop_between_chunks(None, progress):
        ig = adaptive_integrated_gradients(
            model, x, torch.zeros_like(x), torch.tensor([1, 2]), 4, 8, tolerance=1e9,
            max_steps=64,
        )  # fmt: skip
    assert progress.calls[0] == ("plan", 2 * 52, "ig")  # Gauss-Legendre 4 + 12 + 36
    assert progress.calls[-1] == ("plan", -2 * 48, "ig")
    assert progress.finished == progress.planned == int(ig.passes.sum()) == 2 * 4
