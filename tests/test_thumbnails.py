"""explain writes the report's thumbnails while the overlays are in memory, when a report is
wanted (--report, or an output directory that has had a report)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from camcli.cli import main
from camcli.report.build import write_report

from .conftest import TINY, random_photo, save_image


def explain(root: Path, out: Path, *extra: str) -> Result:
    result = CliRunner().invoke(
        main, ["explain", str(root), "-o", str(out), "--model", TINY, "-j", "0", *extra]
    )
    assert result.exit_code == 0, result.output
    return result


def photos(root: Path, sizes: list[tuple[int, int]], start: int = 0) -> Path:
    for i, (w, h) in enumerate(sizes, start):
        save_image(root / "tabby" / f"p{i}.png", random_photo(i, w, h))
    return root


def test_with_report_the_report_makes_no_thumbnail_and_later_runs_add_theirs(tmp_path: Path):
    root = photos(tmp_path / "photos", [(48, 40), (200, 90), (33, 61)])
    out = tmp_path / "out"
    first = explain(root, out, "--report")
    assert "(0 thumbnails made, 3 reused)" in first.stderr
    # the directory has a report now: a later run writes its new images' thumbnails too
    photos(root, [(70, 50), (20, 90)], start=3)
    explain(root, out)
    thumbs = sorted((out / "report" / "thumbs").rglob("*.jpg"))
    assert [t.relative_to(out / "report" / "thumbs").as_posix() for t in thumbs] == [
        f"tabby/p{i}.png.jpg" for i in range(5)
    ]
    made_by_explain = {t: t.read_bytes() for t in thumbs}
    summary = write_report(out)
    assert (summary.thumbnails_written, summary.thumbnails_reused) == (0, 5)
    for thumb in thumbs:  # the same bytes the report makes from the overlay PNGs
        thumb.unlink()
    assert write_report(out).thumbnails_written == 5
    for thumb, data in made_by_explain.items():
        assert thumb.read_bytes() == data, thumb


def test_without_a_report_explain_writes_no_thumbnail(tmp_path: Path):
    root = photos(tmp_path / "photos", [(48, 40)])
    explain(root, tmp_path / "out")
    assert not (tmp_path / "out" / "report").exists()


def test_explain_follows_the_thumbnail_size_the_report_chose(tmp_path: Path):
    root = photos(tmp_path / "photos", [(300, 200)])
    out = tmp_path / "out"
    explain(root, out)
    assert write_report(out, thumb_size=64).thumbnails_written == 1
    explain(root, out, "--force")
    summary = write_report(out, thumb_size=64)
    assert (summary.thumbnails_written, summary.thumbnails_reused) == (0, 1)
