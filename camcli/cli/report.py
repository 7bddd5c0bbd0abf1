"""``camcli report``: a static HTML report of an output directory (and ``explain --report``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from camcli import __version__
from camcli.cli.options import CONTEXT
from camcli.report import REPORT_DIR, THUMB_SIZE

__all__ = ["report", "report_after_run"]


@click.command(context_settings=CONTEXT)
@click.argument(
    "output_dir",
    metavar="OUTPUT_DIR",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--thumb-size",
    type=click.IntRange(32, 1024),
    default=THUMB_SIZE,
    show_default=True,
    help="Longest side of the thumbnails, in pixels.",
)
@click.version_option(__version__, "--version", prog_name="camcli")
def report(output_dir: Path, thumb_size: int) -> None:
    """Write an HTML report of OUTPUT_DIR (a camcli output directory) to OUTPUT_DIR/report/.

    Open OUTPUT_DIR/report/index.html in a browser: it needs no server and no network. It
    shows a grid of thumbnails with top-1 class, probability and label, filters
    (misclassified only, predicted class, label, confidence range, path), sorting and pages,
    and a page per image with every map and overlay side by side and the top-k table.

    The per-image records are read as they are, so a run that is still going or was
    interrupted gives a report of what exists; run it again to bring the report up to date
    (thumbnails already made are kept).

    Prints one JSON line on stdout: the report's path and counts.

    \b
    Exit status:
      0    report written
      1    nothing to report (no record or index entry yet) or it could not be written
      2    usage error
    """
    from camcli.report.build import NothingToReport, write_report

    try:
        summary = write_report(output_dir.expanduser(), thumb_size)
    except NothingToReport as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the report to {output_dir / REPORT_DIR}: {exc.strerror or exc}"
        ) from None
    click.echo(json.dumps(summary.as_dict(), ensure_ascii=False))


def report_after_run(output_dir: Path, code: int) -> int:
    """Write the report at the end of a run (``explain --report``); return the exit code.

    Messages go to stderr (stdout may carry the run's records). A report that cannot be
    written turns a successful run's exit code into 1; any other code is kept.
    """
    from camcli.report.build import NothingToReport, write_report

    try:
        summary = write_report(output_dir)
    except NothingToReport as exc:
        click.echo(f"camcli: no report: {exc}", err=True)
        return code
    except OSError as exc:
        click.echo(f"camcli: cannot write the report: {exc.strerror or exc}", err=True)
        return code or 1
    click.echo(
        f"camcli: report in {summary.index} ({summary.thumbnails_written} thumbnails made, "
        f"{summary.thumbnails_reused} reused)",
        err=True,
    )
    return code
