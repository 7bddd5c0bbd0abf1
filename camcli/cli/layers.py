"""``camcli layers MODEL``: every named module with its output shape, for choosing --layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from camcli import __version__
from camcli.cli.options import CONTEXT
from camcli.models import RECTIFIED

if TYPE_CHECKING:
    from camcli.models.probe import LayerInfo

__all__ = ["layers"]


@click.command(context_settings=CONTEXT)
@click.argument("model_name", metavar="MODEL")
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Local state-dict file for the architecture (loaded with weights_only=True).",
)
@click.option(
    "--offline",
    is_flag=True,
    envvar="CAMCLI_OFFLINE",
    help="Never download weights (also set by CAMCLI_OFFLINE=1).",
)
@click.option("--spatial-only", is_flag=True, help="List only the layers that give a spatial map.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@click.version_option(__version__, "--version", prog_name="camcli")
def layers(model_name: str, weights: Path | None, offline: bool, spatial_only: bool,
           as_json: bool) -> None:  # fmt: skip
    """List every named module of MODEL with its output shape for the model's input.

    One forward pass on a blank image of the model's input size. Columns on stdout: NAME,
    TYPE, OUTPUT (C x H x W without the batch), MARKS: 'default' for the layer Grad-CAM uses
    unless --layer says otherwise, 'spatial' for the layers that give a spatial map (a
    4-D output with more than one pixel, or a transformer's patch tokens, from a module
    that runs once: what --layer accepts), 'repeated' for modules that run several
    times, 'unused' for modules the forward pass does not reach. Shapes do not depend on
    the weights: a torchvision model (a classifier, a detector or a segmenter) whose weights
    are not available is probed with random weights (said on stderr), and needs no --weights.
    """
    from camcli.cli.frame import check_model_name
    from camcli.models.loaded import ModelUnavailable
    from camcli.models.own import ModelSpecError, OutputMismatch
    from camcli.models.probe import model_for_probing, probe_layers

    try:
        check_model_name(model_name)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint="'MODEL'") from None
    try:
        loaded, pretrained = model_for_probing(model_name, weights, offline)
    except ModelUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except (ModelSpecError, OutputMismatch) as exc:
        raise click.BadParameter(str(exc), param_hint="'MODEL'") from None
    if not pretrained:
        click.echo(
            f"camcli: weights of {model_name} are not available; shapes from the "
            "architecture with random weights",
            err=True,
        )
    size = loaded.preprocessing.size
    channels = loaded.preprocessing.channels
    found = probe_layers(loaded.module, size, channels)
    if spatial_only:
        found = [layer for layer in found if layer.spatial]
    default = loaded.default_layer
    if as_json:
        document = {
            "model": loaded.name,
            "weights": loaded.weights,
            "input": [channels, size, size],
            "default_layer": default,
            "layers": [_entry(layer, default) for layer in found],
        }
        click.echo(json.dumps(document, ensure_ascii=False))
        return
    rows = [
        (layer.name, layer.kind, _shape_text(layer), " ".join(_marks(layer, default)) or "-")
        for layer in found
    ]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        click.echo("  ".join([*padded, row[3]]))


def _marks(layer: LayerInfo, default: str) -> list[str]:
    marks = []
    if layer.name == default:
        marks.append("default")
    elif layer.name + RECTIFIED == default:
        marks.append(f"default({RECTIFIED})")
    if layer.spatial:
        marks.append("spatial")
    if layer.calls > 1:
        marks.append("repeated")
    if layer.calls == 0:
        marks.append("unused")
    return marks


def _shape_text(layer: LayerInfo) -> str:
    if layer.shape is None:
        return layer.output
    return "x".join(map(str, layer.shape)) or "scalar"


def _entry(layer: LayerInfo, default: str) -> dict[str, object]:
    return {
        "name": layer.name,
        "type": layer.kind,
        "shape": list(layer.shape) if layer.shape is not None else None,
        "output": layer.output,
        "calls": layer.calls,
        "spatial": layer.spatial,
        "default": layer.name == default.removesuffix(RECTIFIED),
        "parameters": layer.parameters,
    }
