"""The launch of a batch reads nothing back from the device: checked on the CPU.

On a GPU, ``tests/test_cuda.py`` runs the same launch under ``torch.cuda.set_sync_debug_mode
("error")``. Its first run on a GPU failed on a constant made from a Python list on the device
(a blocking copy). This test finds that kind of call without a GPU: a dispatch mode records
every operation that must wait for the device's results (a scalar read, a shape that depends
on values), and a function mode every tensor made from Python data for a named device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .conftest import TinyNet

WAITS = {  # operations whose result on a GPU needs the device's values on the host
    "aten._local_scalar_dense.default",  # .item(), int(t), float(t), bool(t), .tolist()
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten._unique2.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",
}


class _Waits(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if str(func) in WAITS:
            self.seen.append(str(func))
        if str(func) == "aten.index.Tensor" and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        ):
            self.seen.append("boolean-mask indexing")
        return func(*args, **(kwargs or {}))


class _MadeOnDevice(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
            data = args[0] if args else kwargs.get("data")
            if not isinstance(data, torch.Tensor):
                self.seen.append(f"torch.{func.__name__}(Python data, device=...)")
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "methods",
    [("gradcam", "guided"), ("gradcam++", "xgradcam", "layercam", "hirescam"), ("guided-gradcam",)],
)
@pytest.mark.parametrize("explicit_targets", [False, True])
@pytest.mark.parametrize("channels", [3, 1])
def test_launching_a_batch_reads_nothing_back(
    methods: tuple[str, ...], explicit_targets: bool, channels: int, tmp_path: Path
):
    from camcli.io.decode import model_inputs_on_device
    from camcli.methods.batch import MethodOptions, compute_methods
    from camcli.models.loaded import Preprocessing
    from camcli.pictures.render import jet_lut, launch_render
    from camcli.runs.explain import _launch_numbers, _map_keys, _pictures
    from camcli.runs.settings import Settings

    torch.manual_seed(0)
    model = TinyNet().eval()
    if channels == 1:
        model.features[0] = torch.nn.Conv2d(1, 8, 3, padding=1)
    pixels = [
        torch.randint(0, 256, (30 + 10 * (i % 2), 40, 3), dtype=torch.uint8) for i in range(4)
    ]
    thetas = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * 4)
    lut = jet_lut("cpu")
    targets = torch.tensor([3, 1, 4, 1]) if explicit_targets else None
    prep = Preprocessing(32, 36, (0.5,) * 3, (0.25,) * 3, channels=channels)
    settings = Settings(output_dir=tmp_path, layers=("features.3",), methods=methods)

    def launch() -> tuple[Any, Any]:
        inputs = model_inputs_on_device(pixels, prep, crop=False) / 255.0
        result = compute_methods(model, inputs, ["features.3"], methods, targets, MethodOptions())
        pending = launch_render(
            _map_keys(result, settings.layers), _pictures(result), pixels, thetas, lut
        )
        return pending, _launch_numbers(result, settings)

    launch()  # warm-up, as on the device: constants made once may be made here
    waits, made = _Waits(), _MadeOnDevice()
    with made, waits:
        pending, (keys, numbers) = launch()
    assert waits.seen == [] and made.seen == []
    rendered, peaks = pending.collect()  # collecting afterwards may read back
    assert len(rendered) == 4 and all(len(p) == 4 for p in peaks.values())
    assert len(dict(zip(keys, numbers.wait(), strict=True))) == len(keys)
