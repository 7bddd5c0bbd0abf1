"""Host-side costs per image: decoding, PNG encoding and writing; the GIL; the core budget.

On a GPU host the device explains hundreds of images per second, and the host must decode each
photo and encode and write its files at that rate. First the script times a loader worker's
work per image (read, decode, resize to the model input, hash, collate) on 500 x 375 JPEGs.
Then, on a GPU host the model explains hundreds of images per second, and every image needs three
PNGs (heatmap, overlay, guided backprop) written beside its JSON record. Writer threads only
scale with the cores for the part of the work that runs without the GIL; the part that holds
it is a serial bottleneck whatever the core count. This script measures, per image, with the
real outputs of the embedded model on a 500 x 375 photo:

* ``encode ms``: encoding the three PNGs in memory, one thread;
* ``ms/image``: one thread encoding and writing the three PNGs and the JSON record (camcli's
  own ``_write_files``), files in a temporary directory;
* ``GIL share``: the share of time a pure-Python thread is kept from running (pauses of
  over 50 us) while one thread encodes, less its share with no writer, the least of 8
  windows (0 % = the writer never holds the GIL);
* ``GIL ms/image`` = ``GIL share x encode ms``, and the ceiling it implies,
  ``1000 / GIL ms`` images per second, whatever the number of cores;
* the speed-up of two writer threads over one (bounded by this machine's cores).

Last it adds the per-image CPU time of decoding (with the model input resized by the loader,
or on the device as camcli does on CUDA) and of encoding + writing with camcli's encoder, and
prints how many images per second that work allows per 16 cores (an upper bound for the host
side: the main thread, the device and the OS are not counted).

    python benchmarks/host.py --json host.json

``fpng`` is included when it is installed (it is not a dependency).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from camcli.io.decode import ImageDataset, collate, load_rgb, model_input
from camcli.io.write import encode_png
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.forward import normalise_maps
from camcli.models.registry import load_model
from camcli.pictures.render import guided_to_unit, jet_lut, render_batch
from camcli.runs.explain import _write_files

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def real_outputs() -> list[np.ndarray]:
    """Heatmap, overlay and guided-backprop picture of the espresso photo at 500 x 375."""
    model = load_model("efficientnet_lite0", offline=True)
    photo = Image.open(SAMPLES / "espresso" / "coffee.png").convert("RGB").resize((500, 375))
    array, geometry = model_input(photo, model.preprocessing, crop=False)
    prep = model.preprocessing
    x = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(prep.mean).view(1, 3, 1, 1)) / torch.tensor(prep.std).view(1, 3, 1, 1)
    layer = model.default_layer
    result = compute_methods(model.module, x, [layer], ("gradcam", "guided"), None, MethodOptions())
    explanation = result.explanation
    assert explanation.guided is not None
    rendered, _ = render_batch(
        {"gradcam": normalise_maps(result.maps["gradcam"][layer])},
        {"guided": guided_to_unit(explanation.guided)},
        [torch.from_numpy(np.asarray(photo).copy())],
        torch.tensor([geometry.theta()]),
        jet_lut(),
    )
    image = rendered[0]
    return [image.heatmaps["gradcam"], image.overlays["gradcam"], image.pictures["guided"]]


def decode_costs(n: int) -> dict[str, float]:
    """Milliseconds per image of a loader worker's steps, on made 500 x 375 JPEGs."""
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import make_images  # the same images as the throughput benchmark

    model = load_model("efficientnet_lite0", offline=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), n)
        paths = sorted(Path(tmp).rglob("*.jpg"))
        data = [p.read_bytes() for p in paths]
        start = time.perf_counter()
        images = [load_rgb(d) for d in data]
        decode = (time.perf_counter() - start) / n
        start = time.perf_counter()
        for image in images:
            model_input(image, model.preprocessing, crop=False)
        resize = (time.perf_counter() - start) / n
        dataset = ImageDataset(paths, model.preprocessing, crop=False)
        start = time.perf_counter()
        collate([dataset[i] for i in range(n)])
        whole = (time.perf_counter() - start) / n
        dataset = ImageDataset(paths, model.preprocessing, crop=False, resize=False)
        start = time.perf_counter()
        collate([dataset[i] for i in range(n)])
        without_resize = (time.perf_counter() - start) / n
    return {
        "decode_ms": round(1000 * decode, 2),
        "resize_ms": round(1000 * resize, 2),
        "worker_total_ms": round(1000 * whole, 2),
        "worker_total_resize_on_device_ms": round(1000 * without_resize, 2),
    }


FAST = "camcli fast (Sub + ISA-L 1)"


def encoders() -> dict[str, Callable[[np.ndarray], bytes]]:
    found: dict[str, Callable[[np.ndarray], bytes]] = {
        FAST: lambda a: encode_png(a),
        "OpenCV level 1": lambda a: encode_png(a, 1),
        "OpenCV level 3 (its default)": lambda a: encode_png(a, 3),
    }
    try:
        import fpng  # type: ignore[import-not-found, unused-ignore]

        found["fpng"] = lambda a: bytes(fpng.from_ndarray(np.ascontiguousarray(a)))
    except ImportError:
        pass
    return found


RECORD: dict[str, Any] = {"image": "x.jpg", "predictions": [{"index": 1, "p": 0.5}] * 5}


def write_image(
    folder: Path, k: int, arrays: list[np.ndarray], encode: Callable[[np.ndarray], bytes]
) -> None:
    jobs: list[tuple[Path, Callable[[], bytes]]] = [
        (folder / f"{k}.{role}.png", functools.partial(encode, a))
        for role, a in zip(("heat", "overlay", "guided"), arrays, strict=True)
    ]
    _write_files(jobs, folder / f"{k}.json", RECORD)


def blocked_share(seconds: float) -> float:
    """Share of ``seconds`` in which this (pure-Python) thread could not run.

    A tight loop reads the clock; a pause longer than ``GAP`` between two reads means
    another thread held the GIL (or the OS took the core). Slower iterations from a busy
    sibling core do not count, unlike a plain iteration count.
    """
    blocked, last = 0.0, time.perf_counter()
    end = last + seconds
    while last < end:
        now = time.perf_counter()
        if now - last > GAP:
            blocked += now - last
        last = now
    return blocked / seconds


GAP = 50e-6


def measure(encode: Callable, arrays: list[np.ndarray], folder: Path, n: int) -> dict[str, Any]:
    write_image(folder, 0, arrays, encode)  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        for array in arrays:
            encode(array)
    encode_ms = 1000 * (time.perf_counter() - start) / n
    start = time.perf_counter()
    for k in range(n):
        write_image(folder, k, arrays, encode)
    ms = 1000 * (time.perf_counter() - start) / n

    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for array in arrays:
                encode(array)

    # The least of several windows: holding the GIL pauses every window alike, while a
    # virtual machine's stolen time comes in bursts.
    idle = min(blocked_share(0.25) for _ in range(8))  # no writer running: the baseline
    writer = threading.Thread(target=loop)
    writer.start()
    busy = min(blocked_share(0.25) for _ in range(8))
    stop.set()
    writer.join()
    share = max(0.0, busy - idle)

    def run(offset: int) -> None:
        for k in range(n):
            write_image(folder, offset + k, arrays, encode)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i * n,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    two = 2 * n / (time.perf_counter() - start)
    size = sum(len(encode(a)) for a in arrays) / 1024
    gil_ms = share * encode_ms
    return {
        "encode_ms_per_image": round(encode_ms, 2),
        "ms_per_image": round(ms, 2),
        "kib_per_image": round(size, 1),
        "gil_share": round(share, 3),
        "gil_ms_per_image": round(gil_ms, 3),
        "gil_ceiling_images_per_s": round(1000 / gil_ms) if gil_ms > 0 else None,
        "one_thread_images_per_s": round(1000 / ms, 1),
        "two_threads_images_per_s": round(two, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60, help="images per measurement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    decoding = decode_costs(args.images)
    print("loader worker, per 500 x 375 JPEG:", decoding, flush=True)
    arrays = real_outputs()
    results: dict[str, Any] = {"decoding": decoding, "encoders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, encode in encoders().items():
            results["encoders"][name] = measure(encode, arrays, Path(tmp), args.images)
            print(name, results["encoders"][name], flush=True)
    print(
        f"\nloader worker per image: decode {decoding['decode_ms']} ms, resize "
        f"{decoding['resize_ms']} ms, all steps {decoding['worker_total_ms']} ms; "
        f"{decoding['worker_total_resize_on_device_ms']} ms when the device resizes"
    )
    header = (
        f"{'encoder':30s} {'encode':>7s} {'ms/img':>7s} {'KiB/img':>8s} {'GIL':>5s} "
        f"{'GIL ms':>7s} {'GIL cap/s':>9s} {'1 thr/s':>8s} {'2 thr/s':>8s}"
    )
    print("\nper image: 3 PNGs of 500 x 375 + JSON record, written atomically\n" + header)
    for name, r in results["encoders"].items():
        print(
            f"{name:30s} {r['encode_ms_per_image']:7.2f} {r['ms_per_image']:7.2f} "
            f"{r['kib_per_image']:8.1f} "
            f"{100 * r['gil_share']:4.0f}% {r['gil_ms_per_image']:7.3f} "
            f"{r['gil_ceiling_images_per_s'] or 0:9d} {r['one_thread_images_per_s']:8.1f} "
            f"{r['two_threads_images_per_s']:8.1f}"
        )
    fast = results["encoders"][FAST]
    for label, worker in (
        ("loader resizes", decoding["worker_total_ms"]),
        ("device resizes", decoding["worker_total_resize_on_device_ms"]),
    ):
        budget = worker + fast["ms_per_image"]
        results[f"host_ms_per_image ({label})"] = round(budget, 2)
        results[f"images_per_s_per_16_cores ({label})"] = round(16_000 / budget)
        print(
            f"\nhost CPU per image ({label}; decode + encode/write with {FAST}): "
            f"{budget:.1f} ms; at most {16_000 / budget:.0f} images/s on 16 such cores"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
