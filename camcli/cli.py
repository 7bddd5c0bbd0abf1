"""The command line: the ``camcli`` group and its commands (one module each in ``commands/``).

The commands parse and check options, run the pipeline and report; no tensor maths here.
stdout carries data only (``--jsonl`` records, listings); people read stderr.
Exit status: 0 every image explained, 1 some images failed or the run could not start or
stopped, 2 usage errors, 130/143 stopped by SIGINT/SIGTERM, 141 stdout closed.
"""

from __future__ import annotations

import click

from camcli import __version__
from camcli.commands.common import CONTEXT
from camcli.commands.compare import compare
from camcli.commands.explain import explain
from camcli.commands.features import features
from camcli.commands.layers import layers
from camcli.commands.models import models
from camcli.commands.report import report

__all__ = ["main"]


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="camcli")
def main() -> None:
    """Explain image classifiers in batches: predictions, Grad-CAM and guided backprop."""


main.add_command(explain)
main.add_command(models)
main.add_command(layers)
main.add_command(features)
main.add_command(compare)
main.add_command(report)


if __name__ == "__main__":  # pragma: no cover
    main()
