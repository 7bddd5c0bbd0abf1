"""The command line: the ``camcli`` group and its commands, one module each.

The commands parse and check options, run and report; no tensor maths here. Each command's
module imports only Click and light modules at import time, and the runs (torch and the
rest) when the command runs, so ``camcli --help`` and ``camcli COMMAND --help`` start fast.
stdout carries data only (``--jsonl`` records, listings); people read stderr.
Exit status: 0 every image explained, 1 some images failed or the run could not start or
stopped, 2 usage errors, 130/143 stopped by SIGINT/SIGTERM, 141 stdout closed.
"""

from __future__ import annotations

import importlib
import time

import click

from camcli import __version__
from camcli.cli.options import CONTEXT

__all__ = ["COMMANDS", "STARTED", "main"]

STARTED = "camcli.started"  # the key of the command's start time in Click's context meta

# Command name -> the module that defines it (a function of the same name), in --help order.
COMMANDS = {
    "explain": "camcli.cli.explain",
    "models": "camcli.cli.models",
    "layers": "camcli.cli.layers",
    "features": "camcli.cli.features",
    "compare": "camcli.cli.compare",
    "evaluate": "camcli.cli.evaluate",
    "summarize": "camcli.cli.summarize",
    "report": "camcli.cli.report",
}


class _Commands(click.Group):
    """A group whose commands are imported when asked for (their modules are light)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = getattr(importlib.import_module(module), cmd_name)
        return command


@click.group(cls=_Commands, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="camcli")
def main() -> None:
    """Explain vision models in batches: classifiers, detectors and segmenters.

    What each image's model predicted and where the evidence was: Grad-CAM and the other
    CAMs, guided backprop, RISE and D-RISE, LRP, Integrated Gradients; scores of which map
    to trust (evaluate) and of what a class relies on (summarize).
    """
    # The command's start: its closing line reports the wall time from here (model loading
    # and the check of what is up to date included).
    click.get_current_context().meta[STARTED] = time.perf_counter()


if __name__ == "__main__":  # pragma: no cover
    main()
