"""``camcli summarize``: what the model relies on across a whole run, per class.

Spectral relevance analysis of an explain run's maps: which groups of images the model gets
right for the wrong reason.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from camcli import __version__
from camcli.cli.options import CONTEXT

__all__ = ["summarize"]


@click.command(context_settings=CONTEXT)
@click.argument("output_dir", metavar="OUTPUT_DIR")
@click.option(
    "--method",
    default=None,
    help="The map method to summarise (one of the run's, e.g. gradcam). Default: the run's "
    "first map method.",
)
@click.option(
    "--group",
    "group_by",
    type=click.Choice(["target", "pred", "label"]),
    default="target",
    show_default=True,
    help="Group images by the class explained (target), the top-1 class (pred) or the class "
    "folder (label).",
)
@click.option(
    "--clusters",
    type=click.IntRange(min=1, max=64),
    default=None,
    help="Clusters per class, forced. Default: read off the eigengap of each class's "
    "affinity graph.",
)
@click.option(
    "--max-clusters",
    type=click.IntRange(min=1, max=64),
    default=8,
    show_default=True,
    help="The eigengap's cap on the clusters per class (also at most a third of its images).",
)
@click.option(
    "--model",
    default=None,
    help="Summarise only the records of this model (a directory holding several models' runs).",
)
@click.option(
    "--boxes",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Object boxes, as 'camcli evaluate --boxes' reads them: the clusters' scores then count "
    "the map's share outside the annotated objects.",
)
@click.option(
    "--masks",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Object masks, as 'camcli evaluate --masks' reads them (likewise).",
)
@click.option(
    "--report",
    is_flag=True,
    help="At the end, write the HTML report of OUTPUT_DIR with its summary page "
    "(OUTPUT_DIR/report/summary.html, linked from the grid).",
)
@click.version_option(__version__, "--version", prog_name="camcli")
@click.pass_context
def summarize(
    ctx: click.Context,
    output_dir: str,
    method: str | None,
    group_by: str,
    clusters: int | None,
    max_clusters: int,
    model: str | None,
    boxes: Path | None,
    masks: Path | None,
    report: bool,
) -> None:
    """Summarise an explain run in OUTPUT_DIR: per class, what the model looks at.

    It reads the run's records and each image's map (no model pass) and, per class (the
    class explained, --group), clusters the maps by where they point (spectral relevance
    analysis, Lapuschkin et al. 2019) and ranks the clusters most suspicious first: a
    suspicious cluster's members all look at one spot, unlike the rest of their class (a
    watermark, a frame's edge, a background). It writes OUTPUT_DIR/summary.json (fixed keys
    for scripts), OUTPUT_DIR/summary.md (tables for people) and the pictures under
    OUTPUT_DIR/summary/: per class its mean map, a sheet per cluster (mean map and six
    typical overlays) and a 2-D embedding of its maps; and the confusions where labels
    exist. explain's files are never changed. OUTPUT_DIR may be a URI (s3://...).

    Prints one JSON line on stdout: where the summary is, and its counts.

    \b
    Exit status:
      0    summary written
      1    it could not be written
      2    usage error (no explain records, no map of the method, several models or layers)
      130  stopped by SIGINT; 143 by SIGTERM (the previous summary is kept whole)
    """
    from camcli.io.storage import StorageError, is_uri, output_location
    from camcli.runs.runtime import stop_on_signals

    started = time.perf_counter()
    if is_uri(output_dir):
        try:
            directory = output_location(output_dir)
        except StorageError as exc:
            raise click.BadParameter(str(exc), param_hint="'OUTPUT_DIR'") from None
    else:
        directory = Path(output_dir).expanduser()
        if not directory.is_dir():
            raise click.BadParameter(
                f"{output_dir} is not a directory: give the --output-dir of a 'camcli explain' run",
                param_hint="'OUTPUT_DIR'",
            )
        from camcli.cli.early import refuse_held_lock

        # A run writing there now: its records are not all there yet.
        refuse_held_lock(directory / ".camcli.lock")
    if report and is_uri(output_dir):
        raise click.BadParameter(
            "the HTML report is written to a local directory only", param_hint="'--report'"
        )
    from camcli.runs.summarize import (
        SUMMARY_JSON,
        SummarizeOptions,
        SummaryInputError,
        SummaryStopped,
        summarize_run,
    )

    options = SummarizeOptions(
        method=method,
        group_by=group_by,
        clusters=clusters,
        max_clusters=max_clusters,
        model=model,
        boxes=boxes,
        masks=masks,
    )
    with stop_on_signals() as stop:
        try:
            result = summarize_run(
                directory,
                options,
                stop.event,
                progress=lambda line: click.echo(f"camcli: {line}", err=True),
            )
        except SummaryInputError as exc:
            raise click.BadParameter(str(exc), param_hint="'OUTPUT_DIR'") from None
        except (SummaryStopped, KeyboardInterrupt):
            click.echo(
                "camcli: stopped; no new summary was written (a previous one is unchanged)",
                err=True,
            )
            ctx.exit(stop.exit_code or 130)
        except OSError as exc:
            raise click.ClickException(
                f"cannot write the summary to {output_dir}: {exc.strerror or exc}"
            ) from None
    classes = result["classes"]
    clustered = sum(1 for entry in classes.values() if entry["clusters"])
    count = sum(len(entry["clusters"]) for entry in classes.values())
    seconds = time.perf_counter() - started
    click.echo(
        f"camcli: summarised {result['images']} images in {len(classes)} classes "
        f"({clustered} clustered, {count} clusters) from their {result['method']} maps in "
        f"{seconds:.1f} s; see {directory / 'summary.md'}",
        err=True,
    )
    click.echo(
        json.dumps(
            {
                "summary": str(directory / SUMMARY_JSON),
                "method": result["method"],
                "images": result["images"],
                "classes": len(classes),
                "clusters": count,
                "confusions": len(result["confusions"]),
                "seconds": round(seconds, 3),
            },
            ensure_ascii=False,
        )
    )
    code = 0
    if report:
        from camcli.cli.report import report_after_run

        code = report_after_run(directory, code)
    ctx.exit(code)
