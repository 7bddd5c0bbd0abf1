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

import functools
import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from camcli.io.decode import Batch
from camcli.io.storage import STORAGE_ENV
from camcli.io.write import record_path
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


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (``None``: ``RAY_ADDRESS``, else start a local one).

    A Ray already initialised in this process (a notebook, a test) is used as it is. The
    variables of :data:`~camcli.io.storage.STORAGE_ENV` set here are passed to the workers.

    Returns:
        Whether this call started Ray (and the run should shut it down).

    Raises:
        RayUnavailable: Ray is not installed or the address cannot be reached.

    """
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray: pip install 'camcli[ray]'") from None
    if ray.is_initialized():
        return False
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
    return True


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
            # Ray gives each worker one thread by default: the model gets this node's cores.
            cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ()
            torch.set_num_threads(max(1, len(cores) or (os.cpu_count() or 1)))
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
            outputs = None
        if outputs is not None:
            yield from zip(part.indices, outputs, strict=True)
            return
        if self.settings.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(part) == 1:  # as the local engine: this image fails, the run goes on
            failed = {"status": "error", "error": "out of memory even as a batch of one image"}
            yield part.indices[0], ImageOutput(failed, [], 0)
            return
        for half in part.split(max(1, len(part) // 2)):
            yield from self._explain(half, rows)


def _actor_count(settings: Settings) -> tuple[int, int]:
    """``(min, max)`` actors: one per GPU on CUDA; on CPUs one per four cores (at least one)."""
    import ray

    resources = ray.cluster_resources()
    if settings.device.type == "cuda":
        return 1, max(1, int(resources.get("GPU", 1)))
    return 1, max(1, int(resources.get("CPU", 1)) // 4)


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
    started = connect(run.settings.ray_address)
    try:
        import ray

        run.summary.extra["engine"] = {
            "name": "ray",
            "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
            "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
        }
        _pipeline(run, stop)
    finally:
        if started:
            import ray

            ray.shutdown()


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
    cuda = settings.device.type == "cuda"
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
    low, high = _actor_count(settings)
    dataset = (
        ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch)))
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
            # Half a CPU: decoding and writing are light, and a request unlike the actors'
            # keeps Ray from fusing decoding into the actors (it would then wait on the model).
            num_cpus=0.5,
        )
        .map_batches(
            _ExplainActor,
            batch_size=batch,
            batch_format="numpy",
            fn_constructor_args=(ray.put(payload),),
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_gpus=1 if cuda else 0,
            num_cpus=1,
        )
        .map_batches(
            functools.partial(write_rows, writer=cloudpickle.dumps(run.write_files)),
            batch_size=batch,
            batch_format="numpy",
            num_cpus=0.5,
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
            run.reporter.record(record)
            run.index.add(run.index_entry(item, record))
            run.reporter.advance(1)
        if stop is not None and stop.is_set():
            break
