"""``camcli models``: the model names ``--model`` accepts and where their weights are."""

from __future__ import annotations

import click

from camcli import __version__
from camcli.cli.options import CONTEXT

__all__ = ["models"]


@click.command(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="camcli")
def models() -> None:
    """List the model names --model accepts, and whether their weights are available offline.

    One model per line on stdout: NAME<TAB>STATUS, where STATUS is 'embedded' (ships with
    camcli), 'cached' (in the torch hub cache) or 'download' (fetched on first use).

    --model also takes timm/NAME (any timm model) and FILE.py:FUNCTION or
    package.module:FUNCTION (your own architecture); these are not listed.
    """
    from camcli.models.registry import available_models, weights_status

    for name in available_models():
        click.echo(f"{name}\t{weights_status(name)}")
