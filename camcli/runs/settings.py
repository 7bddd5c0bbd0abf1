"""Run settings: one frozen object built from the command line (and config files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from camcli.io.write import index_name, summary_name
from camcli.methods.batch import MethodOptions
from camcli.methods.names import DEFAULT_METHODS
from camcli.models.classes import TargetSpec, parse_target

__all__ = ["Settings", "TargetSpec", "parse_target", "resolve_device"]


def resolve_device(text: str) -> torch.device:
    """Read ``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: for an unknown name or a CUDA device that is not there.

    """
    value = text.strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"{text!r} is not auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{text!r} was asked for but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{text!r} does not exist ({torch.cuda.device_count()} CUDA device(s) found)"
            )
    elif device.type != "cpu":
        raise ValueError(f"{text!r} is not auto, cpu, cuda or cuda:N")
    return device


@dataclass(frozen=True)
class Settings:
    """Everything a run needs besides the model and the list of images.

    Attributes:
        output_dir: where outputs go (mirrors the input tree).
        layers: the target layers (dotted module names).
        methods: the explanation methods, in canonical order.
        method_options: settings of Score-CAM and SmoothGrad.
        target: which class to explain.
        extra_targets: further classes to explain from the same forward pass
            (``--target pred,label``); their files get the target in their names.
        top_k: number of predictions recorded.
        save_raw: also write the raw CAM and guided gradient as ``.npy``.
        batch_size: images per forward pass.
        workers: decoding processes (0 decodes in the main process).
        device: where the model runs.
        crop: centre-crop instead of resizing the whole image.
        alpha: heatmap weight in the overlay.
        png_level: zlib level of the PNGs; ``None``: the fast encoder (``write.fast_png``).
        precision: ``fp32``, ``tf32`` (TF32 matmuls/convolutions on CUDA) or ``bf16``
            (autocast).
        channels_last: run the model in channels-last memory format.
        resize_on_device: make the model inputs from the photos on the device (PyTorch's
            antialiased resampling: within 1 of 255 of Pillow's almost everywhere, at most
            3) instead of in the loader workers (Pillow); saves the workers about half their
            CPU time per image.
        write_threads: threads that encode and write files.
        force: redo images whose outputs are up to date.
        max_pixels: refuse larger images (decompression bombs).
        name_suffix: added to the index, summary and lock names (``.shard-K-of-N``).
        thumbnails: write the HTML report's thumbnails from the overlays in memory (the
            report then decodes none again); costs about one more small encode per image.
        kind: the run kind (``explain``, ``features``, ``compare``): it names the records,
            the index and the summary (:func:`camcli.io.write.record_suffix`), so that one
            command never replaces another's results in the same output directory.
        engine: ``local`` (this process: loader workers, the device, writer threads) or
            ``ray`` (a Ray Data pipeline: decoding tasks, an actor pool holding the model,
            writing tasks; see :mod:`camcli.runs.on_ray`).
        ray_address: the Ray cluster to join with ``engine="ray"`` (``None``: ``RAY_ADDRESS``,
            else a local Ray started for the run).
        debug: print each failed image's traceback on stderr (not part of the settings key).
        overlap_batches: launch each batch before finishing the one before it (``None``: on
            CUDA only, where the device computes a batch while the host finishes the last;
            on the CPU a launch computes the batch, so finishing it at once loses nothing
            and its records come a batch sooner).
        task: ``classify``, ``detect`` or ``segment`` (the model's, unless ``--task``).
        score_threshold: a detector's least score of a detection that is explained.
        max_detections: the most detections explained per image (best first).
        min_pixels: the least share of the image a segment needs to be explained.
        drise_masks: D-RISE's random masks per image.

    """

    output_dir: Path
    layers: tuple[str, ...]
    methods: tuple[str, ...] = DEFAULT_METHODS
    method_options: MethodOptions = field(default_factory=MethodOptions)
    target: TargetSpec = TargetSpec("pred")  # noqa: RUF009 - a frozen dataclass
    extra_targets: tuple[TargetSpec, ...] = ()
    top_k: int = 5
    save_raw: bool = False
    batch_size: int = 16
    workers: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    crop: bool = False
    alpha: float = 0.5
    png_level: int | None = None
    precision: str = "fp32"
    channels_last: bool = False
    resize_on_device: bool = False
    write_threads: int = 2
    force: bool = False
    max_pixels: int = 178_956_970
    name_suffix: str = ""
    kind: str = "explain"
    thumbnails: bool = False
    engine: str = "local"
    ray_address: str | None = None
    verbose: bool = False
    debug: bool = False
    overlap_batches: bool | None = None
    task: str = "classify"
    score_threshold: float = 0.5
    max_detections: int = 20
    min_pixels: float = 0.01
    drise_masks: int = 1000

    @property
    def index_name(self) -> str:
        """File name of the run index (per run kind, and per shard when sharded)."""
        return index_name(self.kind, self.name_suffix)

    @property
    def summary_name(self) -> str:
        """File name of the run summary (per run kind, and per shard when sharded)."""
        return summary_name(self.kind, self.name_suffix)

    @property
    def lock_name(self) -> str:
        """File name of the output directory's lock (per shard when sharded)."""
        return f".camcli{self.name_suffix}.lock"


def host_parallelism(device_type: str, cores: int, processes: int = 1) -> tuple[int, int]:
    """Default decoding processes and writer threads for one camcli process.

    On the CPU the model itself wants the cores, so decoding and writing get a small share:
    a writer thread per two cores (on 2 cores, one writer thread let ResNet-18 run at 0.76 of
    its bare passes against 0.70 with two, which took the model's cores more often).
    On a GPU the host's work (decoding, encoding three PNGs per image) is what must keep up
    with the device: about a third of the cores decode and the rest, less one for the main
    thread, encode and write.

    Args:
        device_type: ``cpu`` or ``cuda`` (others are treated like ``cpu``).
        cores: CPU cores this process may use.
        processes: camcli processes sharing them (torchrun ranks on one host).

    Returns:
        ``(workers, write_threads)``.

    >>> host_parallelism("cpu", 2), host_parallelism("cuda", 16)
    ((1, 1), (5, 10))
    """
    share = max(1, cores // max(1, processes))
    if device_type == "cuda":
        workers = min(8, max(1, share // 3))
        return workers, min(32, max(2, share - workers - 1))
    return max(0, min(4, share - 1)), max(1, min(8, share // 2))
