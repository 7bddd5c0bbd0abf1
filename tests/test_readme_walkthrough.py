"""The README's commands, run in order as written, destroy nothing; nor do they in one folder."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from camcli.cli import main

from .conftest import REPO

pytestmark = pytest.mark.real_model


def readme_commands() -> list[str]:
    """Every ``camcli`` command of the README's code blocks that runs on sample_images/.

    In README order: the quick start's, then each section's. Pipelines (``| jq``) and
    commands on other folders (``./images``, ``photos``) are examples, not runnable here.
    """
    text = (REPO / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = []
    in_block = plain = False
    for raw in text.splitlines():
        if raw.startswith("```"):
            in_block = not in_block
            plain = in_block and raw == "```"  # plain blocks only (not json, python)
            continue
        if plain:
            line = raw.split("#", 1)[0].strip()
            if "&& camcli " in line:
                line = "camcli " + line.split("&& camcli ", 1)[1]
            if line.startswith("camcli ") and "|" not in line:
                words = shlex.split(line)
                on_samples = words[1] == "summarize" and "camcli-out" in line
                if words[1] == "report" or "sample_images" in line or on_samples:
                    commands.append(line)
    return commands


def outputs(folder: Path) -> dict[str, bytes]:
    """The records and indexes under ``folder`` (not the photos, not a report's files)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in (".json", ".jsonl")
        and "report" not in p.parts
        and "sample_images" not in p.relative_to(folder).parts
    }


def test_readme_commands_in_order_keep_every_earlier_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    commands = readme_commands()
    kinds = [shlex.split(c)[1] for c in commands]
    assert kinds[0] == "explain" and {"features", "compare", "report", "summarize"} <= set(kinds), (
        commands
    )
    shutil.copytree(REPO / "sample_images", tmp_path / "sample_images")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "camcli-out"
    before: dict[str, bytes] = {}
    for command in commands:
        result = CliRunner().invoke(main, shlex.split(command)[1:])
        assert result.exit_code == 0, (command, result.output)
        now = outputs(tmp_path)
        changed = [name for name, data in before.items() if now.get(name) != data]
        # The summaries and the report's own files are rewritten by a run of their kind;
        # every record and index written by an earlier command stays byte for byte.
        runs = [n for n in changed if n.endswith("run.json")]
        assert sorted(set(changed) - set(runs)) == [], (command, changed)
        before = now
    records = [n for n in outputs(out) if n.endswith(".png.json") or n.endswith(".jpg.json")]
    assert len(records) == 5  # explain's: one per photo
    # Each example of another command writes into a folder of its own (issue: the README's
    # commands followed in order wrote into one folder and an evaluation replaced another's).
    assert any(n.endswith(".features.json") for n in outputs(tmp_path / "features-out"))
    assert any(n.endswith(".compare.json") for n in outputs(tmp_path / "compare-out"))
    # A folder can still be shared: the same examples into explain's folder touch none of
    # its records, and the features grid lands beside explain's record with its label.
    shared = [c for c in commands if shlex.split(c)[1] in ("features", "compare")]
    kept = outputs(out)
    for command in shared:
        words = shlex.split(command)
        words[words.index("-o") + 1] = "camcli-out"
        result = CliRunner().invoke(main, words[1:])
        assert result.exit_code == 0, (words, result.output)
    now = outputs(out)
    assert {n: now[n] for n in kept if not n.endswith("run.json")} == {
        n: d for n, d in kept.items() if not n.endswith("run.json")
    }
    features = json.loads((out / "tiger_cat" / "chelsea.png.features.json").read_text())
    assert features["label"]["folder"] == "tiger_cat"
    assert (out / "tiger_cat" / "chelsea.png.features.blocks.2.png").is_file()
    summary = json.loads(CliRunner().invoke(main, ["report", str(out)]).stdout)
    assert summary["images"] == 5
    data = (out / "report" / "data.js").read_text(encoding="utf-8")
    assert "compare.png" not in data and ".features." not in data
