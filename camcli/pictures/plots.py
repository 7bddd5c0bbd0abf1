"""Plots of an evaluation (matplotlib, drawn off-screen): sanity curves and mean curves.

matplotlib's object interface (``Figure`` + the Agg canvas) is used, never ``pyplot``: no
global state, no window, safe in any thread.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

__all__ = ["DPI", "curve_plot", "figure_png", "sanity_plot"]

DPI = 110


def figure_png(figure: object) -> bytes:
    """A matplotlib figure drawn off-screen (the Agg canvas) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def sanity_plot(stages: Sequence[str], curves: dict[str, dict[str, list[float]]]) -> bytes:
    """The cascading randomisation curves: Spearman and SSIM per method and stage.

    Args:
        stages: the randomisation stages, top down (the original model is drawn first).
        curves: per method, ``spearman`` and ``ssim``, one mean per stage.

    Returns:
        A PNG.

    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.2), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, 2, sharex=True)
    labels = ["original", *stages]
    positions = list(range(len(labels)))
    for axis, key, title in (
        (axes[0], "spearman", "Spearman rank correlation (absolute maps)"),
        (axes[1], "ssim", "SSIM"),
    ):
        for method, values in curves.items():
            axis.plot(positions, [1.0, *values[key]], marker="o", label=method)
        axis.set_title(title, fontsize=10)
        axis.set_xticks(positions, labels, rotation=35, ha="right", fontsize=8)
        lowest = min((min(v[key]) for v in curves.values() if v[key]), default=0.0)
        axis.set_ylim(min(-0.2, lowest - 0.05), 1.05)
        axis.axhline(0.0, color="0.6", linewidth=0.8)
        axis.grid(alpha=0.3)
        axis.set_xlabel("randomised from the top down to", fontsize=9)
    axes[0].set_ylabel("similarity to the original map")
    axes[1].legend(fontsize=8, loc="upper right")
    figure.suptitle("Cascading model randomisation (Adebayo et al. 2018)", fontsize=11)
    return figure_png(figure)


def curve_plot(
    panels: Sequence[tuple[str, str, Sequence[float], dict[str, list[float]]]],
) -> bytes:
    """Mean curves per method, one panel each (deletion, insertion, ROAD).

    Args:
        panels: per panel its title, x label, x values and, per method, the mean curve.

    Returns:
        A PNG.

    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6 * len(panels), 3.8), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, xlabel, xs, curves) in zip(axes, panels, strict=True):
        for method, values in curves.items():
            axis.plot(list(xs), values, label=method)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel(xlabel, fontsize=9)
        highest = max((max(v) for v in curves.values() if v), default=1.0)
        axis.set_ylim(0, max(0.05, min(1.02, highest * 1.1)))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the explained class")
    axes[-1].legend(fontsize=8)
    return figure_png(figure)
