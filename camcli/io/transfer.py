"""Moving tensors between the host and the device without making the host wait.

A blocking copy makes the host wait for all the work queued on the device; the pipeline
instead queues a batch's copies behind its work and waits only when it needs the results,
while the device goes on with the next batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["PINNED_LIMIT", "HostCopy", "to_device"]

PINNED_LIMIT = 1 << 30  # bytes per packed copy; above it the copy is made at once instead


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without making the host wait for queued work.

    On CUDA it goes through page-locked memory, so the copy is truly asynchronous.
    """
    if device.type != "cuda":
        return tensor.to(device)  # to the host: a copy that must have landed on return
    if tensor.device.type != "cpu":
        return tensor.to(device, non_blocking=True)  # already there, or GPU to GPU
    return tensor.pin_memory().to(device, non_blocking=True)


class HostCopy:
    """Device tensors on their way to the host.

    On CUDA the copies are queued behind the work that produces the tensors (one packed copy
    per dtype into page-locked memory, on the tensors' own device and stream) and :meth:`wait`
    blocks until they have landed, so the host can prepare the previous batch's files while
    the device computes. Page-locked memory is never given back to the system while the run
    lasts, so a packed copy above :data:`PINNED_LIMIT` bytes (a batch of very large photos)
    is made at once into ordinary memory instead. Elsewhere the tensors are taken as they are
    (CPU) or copied at once.
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self._shapes = [tuple(t.shape) for t in tensors]
        self._event: torch.cuda.Event | None = None
        self._buffers: dict[torch.dtype, torch.Tensor] = {}
        self._places: list[tuple[torch.dtype, int]] = []
        if not tensors or tensors[0].device.type != "cuda":
            self._tensors = [t.detach().cpu() for t in tensors]
            return
        self._tensors = []
        device = tensors[0].device
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        filled: dict[torch.dtype, int] = {}
        for t in tensors:
            self._places.append((t.dtype, filled.get(t.dtype, 0)))
            filled[t.dtype] = filled.get(t.dtype, 0) + t.numel()
            groups.setdefault(t.dtype, []).append(t)
        for dtype, group in groups.items():
            packed = torch.cat([t.detach().reshape(-1) for t in group])
            if packed.numel() * packed.element_size() > PINNED_LIMIT:
                self._buffers[dtype] = packed.cpu()
                continue
            host = torch.empty(packed.shape, dtype=dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            self._buffers[dtype] = host
        self._event = torch.cuda.Event()
        # The copies were queued on the tensors' device's stream, not the current device's.
        self._event.record(torch.cuda.current_stream(device))

    def wait(self) -> list[np.ndarray]:
        """The arrays, in the order given (views into one host buffer per dtype)."""
        if self._event is None:
            return [t.numpy() for t in self._tensors]
        self._event.synchronize()
        arrays = []
        for (dtype, offset), shape in zip(self._places, self._shapes, strict=True):
            size = int(np.prod(shape, dtype=np.int64))
            arrays.append(self._buffers[dtype][offset : offset + size].view(shape).numpy())
        return arrays
