"""Refusals that need no torch and no model: they come in well under a second.

A run into a directory that another run holds, an output directory that cannot be written
and an unknown ``--model`` name are refused here, before the command imports torch and loads
the model (which took 5 to 18 s).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import click

from camcli.cli.options import CommonOptions

__all__ = ["refuse_early"]


def refuse_early(common: CommonOptions, check_model: bool = True) -> None:
    """Refuse at once what would be refused after the model loaded.

    Raises:
        click.BadParameter: an unknown ``--model`` (exit 2).
        click.ClickException: the output directory cannot be written, or another live run
            holds it (exit 1).

    """
    if check_model:
        from camcli.models.names import unknown_model

        message = unknown_model(common.model.model_name)
        if message is not None:
            raise click.BadParameter(message, param_hint="'--model'")
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
    _refuse_held_lock(folder / f".camcli{_name_suffix(common)}.lock")


def _name_suffix(common: CommonOptions) -> str:
    """The run's lock suffix, as the run names it (per shard and torchrun rank)."""
    from camcli.runs.runtime import current_rank, parse_shard, run_name_suffix

    try:
        shard_k, shard_n = parse_shard(common.inputs.shard) if common.inputs.shard else (0, 1)
    except ValueError:
        shard_k, shard_n = 0, 1  # --shard's own check names the mistake later
    return run_name_suffix(shard_k, shard_n, current_rank())


def _refuse_held_lock(path: Path) -> None:
    """Refuse when a live run holds ``path`` (the run takes the lock itself later)."""
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
