"""``--engine ray --ray-address``: a run on a two-node Ray cluster simulated on this machine.

``ray.cluster_utils.Cluster`` starts a head and a second node (one CPU each) as separate
processes, as ``ray start`` does on two machines; ``camcli explain`` runs as its own process
and joins the cluster by its address. Its files must be those of the local engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from camcli.cli import main
from tests.conftest import REPO, SAMPLES

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """A head and one more node, one CPU each; yields the cluster's address."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    if ray.is_initialized():
        ray.shutdown()
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 200 * 1024 * 1024},
    )
    cluster.add_node(num_cpus=1, object_store_memory=200 * 1024 * 1024)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


def test_a_run_on_two_nodes_writes_what_the_local_engine_writes(
    two_nodes: str, actor_threads: int, tmp_path: Path
) -> None:
    photos = tmp_path / "in"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
    local = CliRunner().invoke(
        main, ["explain", str(photos), "-o", str(tmp_path / "local"), "-b", "2"]
    )
    assert local.exit_code == 0, local.output
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "camcli", "explain", str(photos), "-o", str(tmp_path / "ray"),
         "-b", "2", "--engine", "ray", "--ray-address", two_nodes],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert summary["engine"]["nodes"] == 2
    assert summary["engine"]["resources"]["CPU"] == 2
    assert summary["counts"]["explained"] == 5

    def files(out: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(out)): p.read_bytes()
            for p in out.rglob("*")
            if p.is_file() and p.name not in ("run.json", "index.jsonl")
            and not p.name.startswith(".camcli")
        }  # fmt: skip

    local_files, ray_files = files(tmp_path / "local"), files(tmp_path / "ray")
    assert local_files.keys() == ray_files.keys()
    assert len([name for name in local_files if name.endswith(".json")]) == 5
    for name, data in local_files.items():
        assert ray_files[name] == data, name
