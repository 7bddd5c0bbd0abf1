"""Refusals that need no torch and no model: they come in well under a second.

A run into a directory that another run holds, an output directory that cannot be written,
an unknown ``--model`` name, a ``--layer`` the model lacks (when its layer names are known:
see :mod:`camcli.models.layer_names`) and a ``--target`` that names no ImageNet class (the
default model and torchvision's zoo, with their own weights) are refused here, before the
command imports torch and loads the model (which took 4 to 18 s).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

import click

from camcli.cli.options import CommonOptions, ModelOptions

__all__ = ["refuse_early", "refuse_held_lock", "unknown_layer_error"]


def refuse_early(
    common: CommonOptions,
    check_model: bool = True,
    layers: Sequence[str] = (),
    target: str | None = None,
    several_targets: bool = True,
) -> None:
    """Refuse at once what would be refused after the model loaded.

    Args:
        common: the shared options.
        check_model: check the ``--model`` name (``compare`` has several models instead).
        layers: the ``--layer`` values.
        target: the ``--target`` text (``None``: the command has none to check).
        several_targets: the command takes several comma-separated targets.

    Raises:
        click.BadParameter: an unknown ``--model``, ``--layer`` or ``--target`` (exit 2).
        click.ClickException: the output directory cannot be written, or another live run
            holds it (exit 1).

    """
    if check_model:
        from camcli.models.names import unknown_model

        name = common.model.model_name
        message = unknown_model(name)
        if message is not None:
            raise click.BadParameter(message, param_hint="'--model'")
        _refuse_layers(name, layers)
        if target is not None:
            _refuse_target(common.model, target, several_targets)
    output = common.output.output_dir
    if not isinstance(output, Path):
        return  # object storage: checked when the run opens it
    folder = output.expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise click.ClickException(
            f"cannot write to the output directory {folder}: "
            + ("Not a directory" if not existing.is_dir() else "Permission denied")
            + (f" ({existing})" if existing != folder else "")
        )
    refuse_held_lock(folder / f".camcli{_name_suffix(common)}.lock")


def unknown_layer_error(message: str, model_name: str) -> click.BadParameter:
    """The usage error for a ``--layer`` the model lacks: close names, and where to look."""
    return click.BadParameter(
        f"{message}; 'camcli layers {model_name}' lists every layer", param_hint="'--layer'"
    )


def _refuse_layers(model_name: str, layers: Sequence[str]) -> None:
    if not layers:
        return
    from camcli.models.layer_names import missing_layer_message, remembered_layers

    known = remembered_layers(model_name)
    if known is None:
        return  # not seen yet: checked once the model is loaded
    for layer in layers:
        message = missing_layer_message(layer, known)
        if message is not None:
            raise unknown_layer_error(message, model_name)


def _refuse_target(model: ModelOptions, text: str, several: bool) -> None:
    """Check ``--target`` against the ImageNet classes where those are the model's classes."""
    from camcli.models.classes import imagenet_classes, parse_target, parse_targets
    from camcli.models.names import EMBEDDED_MODEL, zoo_names

    name = model.model_name
    if model.classes_file is not None or model.weights is not None:
        return  # other classes, or a head of another size: checked once the model is loaded
    if name != EMBEDDED_MODEL and name not in (zoo_names() or ()):
        return
    try:
        classes = imagenet_classes()
    except (LookupError, OSError, ValueError):
        return
    try:
        if several:
            parse_targets(text, lambda part: parse_target(part, classes))
        else:
            parse_target(text, classes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--target'") from None


def _name_suffix(common: CommonOptions) -> str:
    """The run's lock suffix, as the run names it (per shard and torchrun rank)."""
    from camcli.runs.runtime import current_rank, parse_shard, run_name_suffix

    try:
        shard_k, shard_n = parse_shard(common.inputs.shard) if common.inputs.shard else (0, 1)
    except ValueError:
        shard_k, shard_n = 0, 1  # --shard's own check names the mistake later
    return run_name_suffix(shard_k, shard_n, current_rank())


def refuse_held_lock(path: Path) -> None:
    """Refuse when a live run holds ``path`` (the run takes the lock itself later).

    Raises:
        click.ClickException: naming the holder's pid, host and start (exit 1).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        from camcli.io.lock import LockHeld, holder_message

        raise click.ClickException(str(LockHeld(holder_message(path)))) from None
    finally:
        os.close(fd)
