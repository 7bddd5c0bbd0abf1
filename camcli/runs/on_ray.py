"""The Ray engine: a run's batch work as a Ray Data pipeline (``--engine ray``).

The stages are those of the local loop, spread over a cluster:

1. **decode** (CPU tasks): read each file, decode it as the local loader does and give it a
   fixed shape and mode before it enters Arrow: the model input as ``(C, S, S)`` uint8, the
   original photo as its flat RGB bytes with its height and width (photos differ in size, a
   tensor column would not hold them), the sampling geometry, the file's digest;
2. **explain** (an actor pool): each actor loads the model once (``num_gpus=1`` on CUDA) and
   runs the command's own :class:`~camcli.runs.loop.BatchWork` on each batch: the same
   methods, renders and records as the local engine. An image's files leave the actor as
   their encoders (the pictures are already uint8 arrays) with the record;
3. **write** (CPU tasks): encode each image's files and write them with the command's own
   writer, the record last (atomic writes: a task that Ray retries writes the same bytes
   again, and a record never vouches for a half-written file);
4. the **driver** reads the written records in input order and writes the index, the
   reporter's lines and (through the command) ``run.json``, once.

Reuse, ``--force``, failures and exit codes are decided by :func:`~camcli.runs.loop.run_batches`
before and after the pipeline, as for the local engine. Ray retries a task whose worker died
and restarts a killed actor; the driver counts each image once, by its position.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camcli.io.decode import Batch
from camcli.io.storage import STORAGE_ENV
from camcli.io.write import record_path
from camcli.runs.failures import failure_reason, is_run_error
from camcli.runs.ray_tasks import decode_rows, write_rows
from camcli.runs.settings import Settings
from camcli.runs.work import (
    EngineRun,
    ImageOutput,
    WriteFailed,
    backend_settings,
    complete_record,
    device_inputs,
    module_on_device,
    normalisation,
)

__all__ = ["RayUnavailable", "connect", "run_on_ray"]


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (``None``: ``RAY_ADDRESS``, else start a local one).

    A Ray already initialised in this process (a notebook, a test, an earlier run) is used as
    it is. Ray stays initialised for the rest of the process, and Ray itself shuts it down at
    exit: the passes of ``compare`` and a notebook's next run reuse it instead of starting
    another local Ray each (about 9 s on the 2-core machine). The variables of
    :data:`~camcli.io.storage.STORAGE_ENV` set here are passed to the workers.

    Raises:
        RayUnavailable: Ray is not installed or the address cannot be reached.

    """
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray: pip install 'camcli[ray]'") from None
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        _check_reachable(target, "--ray-address" if address else "RAY_ADDRESS")
    # The storage clients' settings (credentials, endpoint) of this shell reach the workers,
    # which read and write object storage themselves.
    env = {name: os.environ[name] for name in STORAGE_ENV if name in os.environ}
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            runtime_env={"env_vars": env} if env else None,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"cannot start or join Ray at {where}: {first}") from None


def _check_reachable(address: str, option: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at a ``HOST:PORT`` Ray address.

    Ray's own client retries an unreachable head for minutes before it gives up. Addresses
    without a port (``auto``, ``local``) are left to Ray.

    Raises:
        RayUnavailable: the address refuses or does not answer a TCP connection.

    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RayUnavailable(
            f"cannot reach Ray at {address} ({option}): {reason.lower()}; is its head running?"
        ) from None


class _ExplainActor:
    """Holds the model on its device and runs the command's batch work on each batch."""

    def __init__(self, payload: Any) -> None:
        import ray
        from ray import cloudpickle

        # The run's model, settings and work, put in the object store once by the driver.
        job = cloudpickle.loads(ray.get(payload) if isinstance(payload, ray.ObjectRef) else payload)
        self.model = job["model"]
        self.settings: Settings = job["settings"]
        self.key: str = job["key"]
        self.stats: dict[int, dict[str, int] | None] = job["stats"]
        self.record_files: dict[int, str] = job["record_files"]
        if self.settings.device.type == "cpu":
            # One thread per actor, one actor per CPU: see actor_plan.
            torch.set_num_threads(CPU_ACTOR_THREADS)
        self.module = module_on_device(self.model, self.settings)
        self.work = job["start_work"](self.module)
        self.mean, self.std = normalisation(self.model.preprocessing, self.settings.device)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ray import cloudpickle

        count = len(rows["position"])
        status = ["error"] * count
        errors = [str(e) for e in rows["error"]]
        records = [""] * count
        jobs: list[bytes] = [b""] * count
        good = [i for i in range(count) if not errors[i]]
        if good:
            part = Batch(
                indices=good,
                sha256=[str(rows["sha256"][i]) for i in good],
                inputs=torch.from_numpy(np.ascontiguousarray(rows["inputs"][good])),
                thetas=torch.from_numpy(np.ascontiguousarray(rows["theta"][good])),
                pixel_data=torch.from_numpy(
                    np.concatenate([np.frombuffer(rows["pixels"][i], np.uint8) for i in good])
                ),
                shapes=[(int(rows["height"][i]), int(rows["width"][i])) for i in good],
                failures=[],
            )
            for j, output in self._explain(part, rows):
                position = int(rows["position"][j])
                record = output.record
                if record.get("status") == "error":
                    errors[j] = str(record.get("error"))
                    continue
                complete_record(record, self.key, self.stats.get(position), str(rows["sha256"][j]))
                status[j] = "ok"
                records[j] = json.dumps(record, ensure_ascii=False)
                files = (self.record_files[position], output.jobs, output.after)
                jobs[j] = cloudpickle.dumps(files)
        return {
            "position": rows["position"],
            "status": np.array(status, dtype=object),
            "error": np.array(errors, dtype=object),
            "record": np.array(records, dtype=object),
            "jobs": np.array(jobs, dtype=object),
        }

    def _explain(
        self, part: Batch, rows: dict[str, np.ndarray]
    ) -> Iterator[tuple[int, ImageOutput]]:
        """The batch's outputs by row, in halves when the device runs out of memory."""
        try:
            with backend_settings(self.settings):
                pixels, inputs = device_inputs(part, self.model, self.settings, self.mean, self.std)
                positions = [int(rows["position"][j]) for j in part.indices]
                outputs = self.work.finish(self.work.launch(part, positions, pixels, inputs))
        except torch.OutOfMemoryError:
            outputs, failure = None, "out of memory even as a batch of one image"
            size = max(1, len(part) // 2)
        except Exception as exc:  # as the local engine: one by one
            if is_run_error(exc):
                raise
            outputs, failure, size = None, failure_reason(exc), 1
        if outputs is not None:
            yield from zip(part.indices, outputs, strict=True)
            return
        if self.settings.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(part) == 1:  # as the local engine: this image fails, the run goes on
            failed = {"status": "error", "error": failure}
            yield part.indices[0], ImageOutput(failed, [], 0)
            return
        for smaller in part.split(size):
            yield from self._explain(smaller, rows)


CPU_ACTOR_THREADS = 1
"""Torch threads of a model actor on a CPU cluster."""

CPU_ACTOR_SHARE = 0.75
"""The CPU a model actor reserves on a CPU cluster: a quarter of each is left to decoding and
writing (traced on the 2-core machine: 0.05-0.25 s per batch of 8 photos, against the
model's 0.65-1.0 s)."""

TASK_CPUS = 0.25
"""The CPU a decoding or writing task reserves."""


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors a run starts and what each reserves.

    Attributes:
        min_size: actors started at once.
        max_size: actors Ray Data may grow the pool to.
        num_cpus: CPUs each actor reserves.
        num_gpus: GPUs each actor reserves.

    """

    min_size: int
    max_size: int
    num_cpus: float
    num_gpus: float


def actor_plan(device_type: str, resources: dict[str, float], batches: int) -> ActorPlan:
    """The model actors for a cluster's ``resources`` (``ray.cluster_resources()``).

    Never more actors than the run has ``batches``: each actor loads the model, and one
    without a batch would load it for nothing.

    On CUDA, one actor per GPU, started as work arrives (from one). On CPUs, one actor per
    CPU with one torch thread each (Ray's convention: a worker's threads are the CPUs it
    reserves), all started at once. Traced on the 2-core machine with the embedded model, a
    batch of 8 photos took one actor of two threads 0.50-0.60 s, and each of two actors of
    one thread 0.65-1.0 s: about 1.3 x the images per second.
    """
    if device_type == "cuda":
        gpus = min(int(resources.get("GPU", 1)), batches)
        return ActorPlan(1, max(1, gpus), num_cpus=1, num_gpus=1)
    size = max(1, min(int(resources.get("CPU", 1)), batches))
    return ActorPlan(size, size, num_cpus=CPU_ACTOR_SHARE, num_gpus=0)


def run_on_ray(run: EngineRun, stop: threading.Event | None) -> None:
    """Explain ``run.todo`` on Ray; update the summary, reporter and index as images finish.

    Args:
        run: what the shared loop prepared (images to do, settings, index, reporter).
        stop: set it to end the run early: no further image is indexed; what Ray already
            wrote is complete (and reused by the next run).

    Raises:
        RayUnavailable: Ray is not installed or cannot be reached.
        WriteFailed: an output could not be written.

    """
    connect(run.settings.ray_address)
    import ray

    run.summary.extra["engine"] = {
        "name": "ray",
        "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
        "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
    }
    with _quiet_ray_core_logs(enabled=not run.settings.verbose):
        _pipeline(run, stop)


# A line of Ray's C++ core logging: "[2026-12-04 16:36:55,324 E 1474 1474] core_worker.cc:..."
_RAY_CORE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")


@contextlib.contextmanager
def _quiet_ray_core_logs(enabled: bool) -> Iterator[None]:
    """Keep Ray's C++ log lines (written to this process's stderr) out of camcli's stderr.

    Ray's core worker in the driver prints, on every successful run, an error-level line
    about actors whose constructor arguments live in the object store (Ray Data puts them
    there). stderr is passed through a pipe for the run: those lines are dropped, everything
    else (camcli's messages, the progress bar, Python warnings) goes through at once.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    original = os.dup(2)
    reader, writer = os.pipe()
    os.dup2(writer, 2)
    os.close(writer)

    def forward() -> None:
        line: bytes | None = None  # a line being held: it may be one of Ray's
        while chunk := os.read(reader, 65536):
            start = 0
            while start < len(chunk):
                if line is None and chunk[start : start + 1] != b"[":
                    end = chunk.find(b"\n", start)
                    stop = len(chunk) if end < 0 else end + 1
                    os.write(original, chunk[start:stop])
                    if end < 0:
                        break
                    start = stop
                    continue
                end = chunk.find(b"\n", start)
                line = (line or b"") + chunk[start : len(chunk) if end < 0 else end + 1]
                if end < 0:
                    break
                if not _RAY_CORE_LINE.match(line):
                    os.write(original, line)
                line, start = None, end + 1
        if line and not _RAY_CORE_LINE.match(line):
            os.write(original, line)
        os.close(reader)

    thread = threading.Thread(target=forward, name="camcli-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer goes: the thread drains it and ends
        thread.join(timeout=2.0)
        if not thread.is_alive():
            os.close(original)


def _pickle_factory_files_by_value(cloudpickle: Any) -> None:
    """Ship the code of ``--model FILE.py:FUNC`` with the model.

    The file was imported under a name of camcli's own; Ray's workers cannot import it by
    that name, so its classes and functions travel by value, as a notebook's do.
    """
    from camcli.models.own import FACTORY_MODULE_PREFIX

    for name, module in list(sys.modules.items()):
        if name.startswith(FACTORY_MODULE_PREFIX):
            cloudpickle.register_pickle_by_value(module)


def _pipeline(run: EngineRun, stop: threading.Event | None) -> None:
    import ray
    import ray.data
    from ray import cloudpickle

    settings = run.settings
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # records arrive in input order
    context.enable_progress_bars = False  # camcli's own bar counts the images
    context.print_on_execution_start = False
    # Ray Data's notes on each execution (start, plan, "finished in") would fill stderr,
    # where camcli reports skipped images; its warnings and errors still show.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.ERROR)
    # ... and its note that progress bars are off (camcli's own bar counts the images).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    _pickle_factory_files_by_value(cloudpickle)
    payload = cloudpickle.dumps(
        {
            "model": run.model,
            "settings": settings,
            "key": run.key,
            "stats": {p: run.stats[p] for p in run.todo},
            "record_files": {
                p: str(record_path(settings.output_dir, run.items[p].relative, settings.kind))
                for p in run.todo
            },
            "start_work": run.start_work,
        }
    )
    batch = settings.batch_size
    rows = [{"position": p, "path": str(run.items[p].path)} for p in run.todo]
    batches = max(1, -(-len(rows) // batch))
    plan = actor_plan(settings.device.type, ray.cluster_resources(), batches)
    dataset = (
        ray.data.from_items(rows, override_num_blocks=batches)
        .map_batches(
            functools.partial(
                decode_rows,
                prep=run.model.preprocessing,
                crop=settings.crop,
                max_pixels=settings.max_pixels,
                resize=not settings.resize_on_device,
            ),
            batch_size=batch,
            batch_format="numpy",
            # A quarter of a CPU: decoding and writing are light, and a request unlike the
            # actors' keeps Ray from fusing decoding into them (it would wait on the model).
            num_cpus=TASK_CPUS,
        )
        .map_batches(
            _ExplainActor,
            batch_size=batch,
            batch_format="numpy",
            fn_constructor_args=(ray.put(payload),),
            compute=ray.data.ActorPoolStrategy(min_size=plan.min_size, max_size=plan.max_size),
            num_gpus=plan.num_gpus,
            num_cpus=plan.num_cpus,
        )
        .map_batches(
            functools.partial(write_rows, writer=cloudpickle.dumps(run.write_files)),
            batch_size=batch,
            batch_format="numpy",
            num_cpus=TASK_CPUS,
        )
    )
    done: set[int] = set()
    for row in dataset.iter_rows():
        position = int(row["position"])
        if position in done:  # never counted twice
            continue
        done.add(position)
        item = run.items[position]
        status = str(row["status"])
        if status == "write_error":
            raise WriteFailed(f"cannot write outputs for {item.relative}: {row['error']}")
        if status != "ok":
            run.fail(item, str(row["error"]))
        else:
            record = json.loads(str(row["record"]))
            run.summary.explained += 1
            run.reporter.record({**record, "reused": False})
            run.index.add({**run.index_entry(item, record), "reused": False})
            run.reporter.advance(1)
        if stop is not None and stop.is_set():
            break
