"""Model registry, weights loading (safe, offline, cache), default layers, class names."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from camcli.models.classes import imagenet_classes
from camcli.models.layers import default_layer, probe_layer
from camcli.models.loaded import ModelUnavailable, load_state_dict_file
from camcli.models.registry import EMBEDDED_MODEL, available_models, load_model, register_model


def _hub_checkpoint(name: str) -> Path:
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / Path(url).name


def test_torchvision_weights_load_from_the_hub_cache_without_network():
    torch.manual_seed(0)
    reference = torchvision.models.squeezenet1_1(weights=None)
    torch.save(reference.state_dict(), _hub_checkpoint("squeezenet1_1"))
    loaded = load_model("squeezenet1_1", offline=True)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[key], value)
    assert not loaded.module.training
    assert loaded.preprocessing.size == 224 and loaded.preprocessing.resize_size == 256
    assert loaded.classes.name(281) == "tabby"
    assert loaded.default_layer == "features.12"


def test_missing_weights_offline_name_the_file_and_the_way_out():
    with pytest.raises(ModelUnavailable) as info:
        load_model("densenet201", offline=True)
    message = str(info.value)
    assert "densenet201-c1103571.pth" in message and "--weights" in message
    assert str(Path(torch.hub.get_dir()) / "checkpoints") in message


def test_densenet_legacy_keys_in_a_local_weights_file(tmp_path: Path):
    model = torchvision.models.densenet121(weights=None)
    legacy = {  # the old checkpoints: 'norm.1' keys, no num_batches_tracked
        k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    loaded = load_model("densenet121", weights=path)
    torch.testing.assert_close(
        loaded.module.state_dict()["features.denseblock1.denselayer1.norm1.weight"],
        model.state_dict()["features.denseblock1.denselayer1.norm1.weight"],
    )


def test_fine_tuned_head_with_other_class_count(tmp_path: Path):
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    path = tmp_path / "ten.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_model("resnet18", weights=path)
    assert len(loaded.classes) == 10 and loaded.classes.name(3) == "class_3"
    assert loaded.module.fc.out_features == 10


class _Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['CAMCLI_EVIL'], 'w').write('pwned')",))


def test_pickles_that_run_code_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CAMCLI_EVIL", str(marker))
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"weight": _Evil()}, handle)
    with pytest.raises(ModelUnavailable, match="weights_only=True"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_embedded_model_loads_offline_with_imagenet_classes():
    loaded = load_model(EMBEDDED_MODEL, offline=True)
    assert loaded.default_layer == "bn2"
    assert len(loaded.classes) == 1000
    assert loaded.preprocessing.mean == (0.5, 0.5, 0.5)
    assert EMBEDDED_MODEL in available_models() and "densenet201" in available_models()


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("vgg16", "features.29"),
        ("vgg19", "features.35"),
        ("alexnet", "features.11"),
        ("resnet50", "layer4"),
        ("densenet201", "features.norm5+relu"),
        ("mobilenet_v3_small", "features.12"),
        ("regnet_y_400mf", "trunk_output"),
    ],
)
def test_default_layers_of_torchvision_families(name: str, layer: str):
    model = torchvision.models.get_model(name, weights=None)
    assert default_layer(name, model) == layer


def test_probing_finds_the_last_spatial_layer_of_an_unknown_model():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    assert default_layer("mystery", model, size=16) == "2"
    assert probe_layer(model, 16) == "2"
    assert all(not m._forward_hooks for m in model.modules())


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model(EMBEDDED_MODEL)(lambda w, o: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("281", 281),
        ("n02123045", 281),
        ("tabby", 281),
        ("Tabby_Cat", 281),
        ("tiger cat", 282),
        ("Egyptian_cat", 285),
        ("military_uniform", 652),
        ("espresso", 967),
        ("nothing here", None),
        ("1000", None),
    ],
)
def test_folder_names_map_to_imagenet_classes(text: str, index: int | None):
    assert imagenet_classes().resolve(text) == index
