"""explain writes the report's thumbnails while the overlays are in memory."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from camcli.cli import main
from camcli.report.build import write_report

from .conftest import TINY, random_photo, save_image


def test_the_first_report_after_explain_makes_no_thumbnail(tmp_path: Path):
    root = tmp_path / "photos"
    for i, (w, h) in enumerate([(48, 40), (200, 90), (33, 61)]):
        save_image(root / "tabby" / f"p{i}.png", random_photo(i, w, h))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["explain", str(root), "-o", str(out), "--model", TINY, "-j", "0",
               "--method", "gradcam,guided"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    thumbs = sorted((out / "report" / "thumbs").rglob("*.jpg"))
    assert [t.relative_to(out / "report" / "thumbs").as_posix() for t in thumbs] == [
        f"tabby/p{i}.png.jpg" for i in range(3)
    ]
    made_by_explain = {t: t.read_bytes() for t in thumbs}
    summary = write_report(out)
    assert (summary.thumbnails_written, summary.thumbnails_reused) == (0, 3)
    # the same bytes the report makes from the overlay PNG
    for thumb in thumbs:
        thumb.unlink()
    assert write_report(out).thumbnails_written == 3
    for thumb, data in made_by_explain.items():
        assert thumb.read_bytes() == data, thumb


def test_explain_follows_the_thumbnail_size_the_report_chose(tmp_path: Path):
    root = tmp_path / "photos"
    save_image(root / "a.png", random_photo(0, 300, 200))
    out = tmp_path / "out"
    run = ["explain", str(root), "-o", str(out), "--model", TINY, "-j", "0"]
    assert CliRunner().invoke(main, run).exit_code == 0
    assert write_report(out, thumb_size=64).thumbnails_written == 1
    assert CliRunner().invoke(main, [*run, "--force"]).exit_code == 0
    summary = write_report(out, thumb_size=64)
    assert (summary.thumbnails_written, summary.thumbnails_reused) == (0, 1)
