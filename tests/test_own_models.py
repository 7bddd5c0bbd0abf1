"""Own models: factories, timm names, weights files, class files, preprocessing options,
binary heads, transformer layers, and every method through the CLI on the new families.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from safetensors.torch import save_file

from camcli.cli import main
from camcli.io.decode import model_input, model_inputs_on_device
from camcli.methods.activation import class_activation_map, find_linear_head
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.forward import class_probabilities, explain_batch
from camcli.methods.names import ALL_METHODS
from camcli.models.classes import ClassFileError, read_class_file
from camcli.models.hooks import LayerCapture
from camcli.models.layers import default_layer
from camcli.models.loaded import Preprocessing
from camcli.models.own import present_binary
from camcli.models.registry import load_model

from .conftest import TINY, random_photo, save_image
from .synthetic import (
    BLOB_CNN_SOURCE,
    TINY_SWIN_SOURCE,
    TINY_VIT_SOURCE,
    import_file,
    write_factory,
)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i, (width, height) in enumerate([(48, 40), (40, 48), (36, 36)]):
        save_image(root / f"p{i}.png", random_photo(i, width, height))
    return root


@pytest.fixture
def binary_factory(tmp_path: Path) -> Path:
    return write_factory(tmp_path, "blobnet", BLOB_CNN_SOURCE)


@pytest.fixture
def vit_factory(tmp_path: Path) -> Path:
    return write_factory(tmp_path, "tinyvit", TINY_VIT_SOURCE)


# --- class files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat\n\n# comment\ndog\n", ["cat", "dog"]),
        ('["cat", "dog", "bird"]', ["cat", "dog", "bird"]),
        ('{"1": "dog", "0": "cat"}', ["cat", "dog"]),
    ],
)
def test_class_file_forms(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "classes"
    path.write_text(text, encoding="utf-8")
    assert read_class_file(path) == expected


def test_class_file_with_a_gap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text('{"0": "cat", "2": "bird"}', encoding="utf-8")
    with pytest.raises(ClassFileError, match="no name for class index 1"):
        read_class_file(path)


# --- binary heads -----------------------------------------------------------------------


def _binary_model(binary_factory: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    return import_file(binary_factory).build().eval()


def test_binary_head_probabilities_and_negated_logit(binary_factory: Path) -> None:
    module = _binary_model(binary_factory)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        z = module(x)[:, 0]
    loaded = load_model(f"{binary_factory}:build")
    loaded.module.load_state_dict(module.state_dict())
    assert loaded.binary and loaded.classes.names == ["negative", "positive"]
    with torch.no_grad():
        signed = loaded.module(x)
    torch.testing.assert_close(signed, torch.stack([-z, z], dim=1))
    p = class_probabilities(signed, binary=True)
    torch.testing.assert_close(p[:, 1], torch.sigmoid(z))
    torch.testing.assert_close(p.sum(dim=1), torch.ones(3))


def test_binary_negative_class_explains_the_negated_logit(binary_factory: Path) -> None:
    loaded = present_binary(load_model(f"{binary_factory}:build"))
    x = torch.rand(2, 1, 16, 16)
    layer = "features.4"
    positive = explain_batch(loaded.module, x, layer, torch.tensor([1, 1]), guided=False)
    negative = explain_batch(loaded.module, x, layer, torch.tensor([0, 0]), guided=False)
    torch.testing.assert_close(negative.gradients[layer], -positive.gradients[layer])
    pos_map, neg_map = positive.cams[layer], negative.cams[layer]
    # ReLU(s) and ReLU(-s) of the same weighted sum: disjoint supports, not both empty.
    assert torch.all(pos_map * neg_map == 0)
    assert float(pos_map.sum() + neg_map.sum()) > 0
    assert not torch.equal(pos_map, neg_map)


def test_cam_finds_the_single_logit_head(binary_factory: Path) -> None:
    loaded = load_model(f"{binary_factory}:build")
    x = torch.rand(2, 1, 16, 16)
    explanation = explain_batch(loaded.module, x, "features", guided=False)
    activations = explanation.activations["features"]
    head = find_linear_head(loaded.module, activations, explanation.logits, "features")
    assert head.name == "fc"
    w = loaded.module.fc.weight.detach()[0]
    by_hand = (w[:, None, None] * activations).sum(dim=1)
    cams = class_activation_map(activations, head, torch.tensor([1, 0]))
    torch.testing.assert_close(cams[0], by_hand[0].clamp(min=0))
    torch.testing.assert_close(cams[1], (-by_hand[1]).clamp(min=0))


# --- transformers -----------------------------------------------------------------------


def _captured(model: torch.nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The captured map and the layer's raw output, from one forward pass."""
    raw: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: raw.append(out.detach().clone())
    )
    try:
        with torch.no_grad(), LayerCapture(model, [layer]) as capture:
            model(x)
    finally:
        handle.remove()
    return capture.activations[layer].detach(), raw[0]


def test_torchvision_vit_and_swin_default_layers_and_reshaping() -> None:
    import torchvision.models as tvm

    torch.manual_seed(0)
    vit = tvm.vit_b_16(image_size=64).eval()
    layer = default_layer("vit_b_16", vit)
    assert layer == "encoder.layers.encoder_layer_11.ln_1"
    spatial, raw = _captured(vit, layer, torch.rand(1, 3, 64, 64))
    assert raw.shape == (1, 1 + 16, 768)  # class token + 4 x 4 patches
    torch.testing.assert_close(spatial, raw[:, 1:].reshape(1, 4, 4, 768).permute(0, 3, 1, 2))

    swin = tvm.swin_t().eval()
    layer = default_layer("swin_t", swin)
    assert layer == "features.7.1.norm1"
    spatial, raw = _captured(swin, layer, torch.rand(1, 3, 64, 64))
    assert raw.shape == (1, 2, 2, 768)  # channels last
    torch.testing.assert_close(spatial, raw.permute(0, 3, 1, 2))


def test_timm_vit_with_registers_and_swin_default_layers_and_reshaping() -> None:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_small_patch16_224", img_size=64, reg_tokens=4, depth=2, pretrained=False
    ).eval()
    layer = default_layer("timm/vit_small_patch16_224", vit)
    assert layer == "blocks.1.norm1"
    spatial, raw = _captured(vit, layer, torch.rand(1, 3, 64, 64))
    assert raw.shape == (1, 1 + 4 + 16, 384)  # class token, 4 registers, 4 x 4 patches
    torch.testing.assert_close(spatial, raw[:, 5:].reshape(1, 4, 4, 384).permute(0, 3, 1, 2))

    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    layer = default_layer("timm/swin_tiny_patch4_window7_224", swin)
    assert layer == "layers.3.blocks.1.norm1"
    spatial, raw = _captured(swin, layer, torch.rand(1, 3, 224, 224))
    assert raw.shape == (1, 7, 7, 768)
    torch.testing.assert_close(spatial, raw.permute(0, 3, 1, 2))


def test_vit_gradcam_matches_pytorch_grad_cam(vit_factory: Path) -> None:
    """An independent implementation with the customary ViT reshape transform."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = import_file(vit_factory).build().eval()
    x = torch.randn(3, 3, 32, 32)
    targets = [0, 1, 1]

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:, :].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    with GradCAM(model, [model.blocks[-1].norm1], reshape_transform=reshape) as reference:
        theirs = reference(x, [ClassifierOutputTarget(t) for t in targets])
    result = compute_methods(
        model, x, ["blocks.1.norm1"], ["gradcam"], torch.tensor(targets), MethodOptions()
    )
    ours = result.maps["gradcam"]["blocks.1.norm1"].numpy()
    # Their post-processing: min-max, resize to the input, min-max again.
    np.testing.assert_allclose(scale_cam_image(scale_cam_image(ours, (32, 32))), theirs, atol=1e-4)


# --- single-channel input ---------------------------------------------------------------


def test_single_channel_input_is_pillow_luma_on_both_paths() -> None:
    photo = Image.fromarray(random_photo(3, 40, 30))
    prep = Preprocessing(16, 16, (0.0,), (1.0,), "bilinear", channels=1)
    array, _ = model_input(photo, prep, crop=False)
    expected = np.asarray(photo.convert("L").resize((16, 16), Image.Resampling.BILINEAR))
    assert array.shape == (16, 16, 1)
    np.testing.assert_array_equal(array[:, :, 0], expected)
    on_device = model_inputs_on_device([torch.from_numpy(np.asarray(photo).copy())], prep, False)
    assert on_device.shape == (1, 1, 16, 16)
    assert np.abs(on_device[0, 0].numpy() - expected.astype(np.float32)).max() <= 3


# --- the CLI ----------------------------------------------------------------------------


def _check_outputs(out: Path, result: Result, methods: list[str]) -> None:
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["status"] == "ok"
        assert sorted(record["files"]) == sorted(methods)
        for listing in record["files"].values():
            for name in listing.values():
                path = out / name
                assert path.is_file(), name
                if name.endswith(".npy"):
                    assert np.isfinite(np.load(path)).all(), name
                else:
                    with Image.open(path) as picture:
                        picture.load()
                        assert picture.size == (record["width"], record["height"])
        for entry in record["maps"].values():
            assert np.isfinite(entry["max"])


@pytest.mark.parametrize("channels_last", ["--channels-last", "--no-channels-last"])
@pytest.mark.parametrize("family", ["binary-grey-cnn", "vit", "swin"])
def test_every_method_on_own_models_through_the_cli(
    tmp_path: Path,
    photos: Path,
    binary_factory: Path,
    vit_factory: Path,
    family: str,
    channels_last: str,
) -> None:
    # CAM needs a linear head on pooled maps, LRP a canonizable graph: not transformers.
    methods = [m for m in ALL_METHODS if family == "binary-grey-cnn" or m not in ("cam", "lrp")]
    factories = {
        "binary-grey-cnn": binary_factory,
        "vit": vit_factory,
        "swin": write_factory(tmp_path, "tinyswin", TINY_SWIN_SOURCE),
    }
    model = f"{factories[family]}:build"
    out = tmp_path / "out"
    result = run(
        "explain", photos, "--model", model, "--input-size", "32", "--method", ",".join(methods),
        "--smooth-samples", "2", "--rise-masks", "16", "--ig-steps", "4",
        "--save-raw", "-b", "2", "-j", "0", "--device", "cpu",
        channels_last, "-o", out, "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _check_outputs(out, result, methods)
    if family == "binary-grey-cnn":
        record = json.loads(result.stdout.splitlines()[0])
        assert record["view"]["channels"] == 1
        assert [p["name"] for p in record["predictions"]] != []
        assert record["maps"]["cam"]["classifier"] == {"features": "fc"}


@pytest.mark.parametrize("source", [TINY_VIT_SOURCE, TINY_SWIN_SOURCE], ids=["vit", "swin"])
def test_lrp_on_a_transformer_is_refused_in_one_sentence(
    tmp_path: Path, photos: Path, source: str
) -> None:
    factory = write_factory(tmp_path, "transformer", source)
    result = run(
        "explain", photos, "--model", f"{factory}:build", "--method", "lrp", "--input-size",
        "32", "--device", "cpu", "-j", "0", "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("Error: Invalid value for '--method': lrp has no rules for")
    assert "use gradcam" in message and "Traceback" not in result.output


@pytest.mark.parametrize("source", [TINY_VIT_SOURCE, TINY_SWIN_SOURCE], ids=["vit", "swin"])
def test_cam_on_a_transformer_is_refused_in_one_sentence(
    tmp_path: Path, photos: Path, source: str
) -> None:
    factory = write_factory(tmp_path, "transformer", source)
    result = run(
        "explain", photos, "--model", f"{factory}:build", "--method", "cam",
        "--device", "cpu", "-j", "0", "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("Error: Invalid value for '--method': cam needs")
    assert "use gradcam" in message and "scorecam" in message
    assert "Traceback" not in result.output


def test_guided_backprop_on_a_vit_says_what_was_guided(
    tmp_path: Path, photos: Path, vit_factory: Path
) -> None:
    result = run(
        "explain", photos, "--model", f"{vit_factory}:build", "--method", "guided",
        "--device", "cpu", "-j", "0", "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["guided_backprop"]["guided_calls"].get("gelu", 0) == 2  # one per block


def test_safetensors_weights_and_wrapped_checkpoints(
    tmp_path: Path, photos: Path, binary_factory: Path
) -> None:
    torch.manual_seed(1)
    module = import_file(binary_factory).build()
    state = module.state_dict()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    outputs = []
    for weights in ("w.safetensors", "w.pt"):
        result = run(
            "explain", photos, "--model", f"{binary_factory}:build", "--weights",
            tmp_path / weights, "--input-size", "32", "--method", "gradcam", "--device",
            "cpu", "-j", "0", "-o", tmp_path / weights.replace(".", "-"), "--jsonl",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs.append([json.loads(line)["predictions"] for line in result.stdout.splitlines()])
    assert outputs[0] == outputs[1]
    assert "using the state dict under 'model' of the checkpoint" in result.stderr
    assert "keys without their 'module.' prefix" in result.stderr


def test_class_count_mismatch_exits_2_before_any_image_is_read(
    tmp_path: Path, photos: Path, binary_factory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reading(*_args: object) -> None:
        raise AssertionError("an image was read")

    monkeypatch.setattr("camcli.io.decode.ImageDataset.__getitem__", no_reading)
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\n", encoding="utf-8")
    result = run(
        "explain", photos, "--model", f"{binary_factory}:build", "--classes", classes,
        "--device", "cpu", "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "'--classes'" in result.stderr
    assert "names 3 class(es), but the model has one output" in result.stderr
    result = run(
        "explain", photos, "--model", TINY, "--classes", classes, "--device", "cpu",
        "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "names 3 classes, but the model has 1000 outputs" in result.stderr


def test_class_names_drive_predictions_and_target(
    tmp_path: Path, photos: Path, binary_factory: Path
) -> None:
    classes = tmp_path / "classes.json"
    classes.write_text('["ok", "defect"]', encoding="utf-8")
    result = run(
        "explain", photos, "--model", f"{binary_factory}:build", "--classes", classes,
        "--target", "defect", "--input-size", "32", "--method", "gradcam", "--device", "cpu",
        "-j", "0", "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert {p["name"] for p in record["predictions"]} == {"ok", "defect"}
    assert record["target"]["name"] == "defect" and record["target"]["index"] == 1
    assert record["classes"].startswith(f"{classes} (")
    # Other names are other results: a re-run with a changed class file redoes the images.
    classes.write_text('["good", "bad"]', encoding="utf-8")
    again = run(
        "explain", photos, "--model", f"{binary_factory}:build", "--classes", classes,
        "--target", "bad", "--input-size", "32", "--method", "gradcam", "--device", "cpu",
        "-j", "0", "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert all(r["reused"] is False and r["target"]["name"] == "bad" for r in records)


@pytest.mark.parametrize(
    ("extra", "option", "words"),
    [
        (
            ["--input-channels", "1"],
            "'--input-channels'",
            "does not take a 1-channel 32 x 32 input",
        ),
        (["--mean", "0.5,0.5"], "'--mean'", "give 1 or 3 values"),
        (["--std", "0"], "'--std'", "must be positive"),
    ],
)
def test_preprocessing_options_that_do_not_fit_exit_2(
    tmp_path: Path, photos: Path, extra: list[str], option: str, words: str
) -> None:
    result = run("explain", photos, "--model", TINY, *extra, "--device", "cpu", "-o", tmp_path)
    assert result.exit_code == 2, result.output
    assert option in result.stderr and words in result.stderr


def test_preprocessing_options_reach_the_record(tmp_path: Path, photos: Path) -> None:
    result = run(
        "explain", photos, "--model", TINY, "--input-size", "24", "--mean", "0.4",
        "--std", "0.2,0.3,0.4", "--interpolation", "bicubic", "--method", "gradcam",
        "--device", "cpu", "-j", "0", "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout.splitlines()[0])["view"]
    assert view["size"] == 24 and view["interpolation"] == "bicubic"
    assert view["mean"] == [0.4, 0.4, 0.4] and view["std"] == [0.2, 0.3, 0.4]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("missing.py:build", "factory file missing.py does not exist"),
        ("{factory}:nothing", "has no function named 'nothing'"),
        ("{factory}:Missing.build", "has no function named 'Missing.build'"),
        ("timm/resnet18x", "timm has no model named 'resnet18x'; did you mean timm/resnet18"),
    ],
)
def test_bad_model_specs_exit_2(
    tmp_path: Path, photos: Path, binary_factory: Path, spec: str, words: str
) -> None:
    result = run(
        "explain", photos, "--model", spec.format(factory=binary_factory), "--device", "cpu",
        "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "'--model'" in result.stderr and words in result.stderr


def test_factory_returning_something_else_exits_2(tmp_path: Path, photos: Path) -> None:
    factory = write_factory(tmp_path, "notamodel", "def build():\n    return 42\n")
    result = run("explain", photos, "--model", f"{factory}:build", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "returned int, not a torch nn.Module" in result.stderr


def test_timm_model_offline_without_weights_is_one_sentence(tmp_path: Path, photos: Path) -> None:
    result = run("explain", photos, "--model", "timm/resnet18.a1_in1k", "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: weights for timm/resnet18.a1_in1k are not in the local Hugging Face cache "
        "and downloads are off: run once with a network to cache them, or pass --weights FILE"
    ]


def test_timm_model_by_name_with_weights_uses_its_preprocessing(
    tmp_path: Path, photos: Path
) -> None:
    import timm

    torch.manual_seed(0)
    module = timm.create_model("resnet18.a1_in1k", pretrained=False)
    save_file(module.state_dict(), str(tmp_path / "r18.safetensors"))
    result = run(
        "explain", photos, "--model", "timm/resnet18.a1_in1k", "--weights",
        tmp_path / "r18.safetensors", "--input-size", "64", "--method", "gradcam",
        "--device", "cpu", "-j", "0", "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["layers"] == ["layer4"]
    assert record["view"]["interpolation"] == "bicubic"  # timm's pretrained_cfg
    assert record["predictions"][0]["name"]  # ImageNet names for 1000 outputs


def test_own_model_config_file(tmp_path: Path, photos: Path, binary_factory: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("ok\ndefect\n", encoding="utf-8")
    config = tmp_path / "own.toml"
    config.write_text(
        f'model = "{binary_factory}:build"\nclasses = "{classes}"\ninput-size = 32\n'
        'mean = [0.5]\nstd = [0.25]\ninput-channels = 1\nmethod = "gradcam"\n',
        encoding="utf-8",
    )
    result = run(
        "explain", photos, "--config", config, "--device", "cpu", "-j", "0",
        "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["view"]["mean"] == [0.5] and record["view"]["std"] == [0.25]
    assert {p["name"] for p in record["predictions"]} == {"ok", "defect"}


def test_repository_config_example_runs(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)  # any directory: the model's files are found beside the config
    result = run(
        "explain", photos, "--config", repo / "configs/own-model/config.toml", "--device", "cpu",
        "-j", "0", "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["view"]["channels"] == 1 and record["view"]["size"] == 64
    assert {p["name"] for p in record["predictions"]} == {"ok", "defect"}
    assert sorted(record["maps"]) == ["cam", "gradcam"]


def test_factory_file_imports_its_neighbours_and_may_use_dataclasses(
    tmp_path: Path, photos: Path
) -> None:
    (tmp_path / "layers_of_mine.py").write_text(
        "from torch import nn\n\ndef head(c):\n    return nn.Linear(c, 4)\n", encoding="utf-8"
    )
    factory = write_factory(
        tmp_path,
        "withsettings",
        "from dataclasses import dataclass\n"
        "from torch import nn\n\n"
        "@dataclass\nclass Settings:\n    width: int = 8\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, settings):\n"
        "        super().__init__()\n"
        "        from layers_of_mine import head  # imported while the factory runs\n"
        "        self.conv = nn.Conv2d(3, settings.width, 3)\n"
        "        self.pool = nn.AdaptiveAvgPool2d(1)\n"
        "        self.fc = head(settings.width)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.pool(self.conv(x)).flatten(1))\n\n"
        "    @classmethod\n"
        "    def create(cls):\n"
        "        return cls(Settings())\n",
    )
    result = run(
        "explain", photos, "--model", f"{factory}:Net.create", "--input-size", "16",
        "--method", "cam", "--device", "cpu", "-j", "0", "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["layers"] == ["conv"] and len(record["predictions"]) == 4


def test_layers_lists_own_models_with_their_input_and_token_maps(
    binary_factory: Path, vit_factory: Path
) -> None:
    result = run("layers", f"{binary_factory}:build", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["input"] == [1, 224, 224]
    assert document["default_layer"] == "features"
    result = run("layers", f"{vit_factory}:build", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    by_name = {layer["name"]: layer for layer in document["layers"]}
    assert document["default_layer"] == "blocks.1.norm1"
    assert by_name["blocks.1.norm1"]["spatial"] and by_name["blocks.1.norm1"]["default"]
    assert by_name["blocks.1.norm1"]["shape"] == [17, 32]  # class token + 4 x 4 patches
    assert not by_name["head"]["spatial"]


# --- what a newcomer tries --------------------------------------------------------------

FIXED_HEAD_SOURCE = """
from torch import nn

def build():
    # MNIST-style: the flattening head only fits 28 x 28 single-channel inputs
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10)
    )
"""


def test_a_fixed_size_head_loads_at_the_stated_input_size(tmp_path: Path, photos: Path) -> None:
    factory = write_factory(tmp_path, "fixed", FIXED_HEAD_SOURCE)
    args = ["explain", photos, "--model", f"{factory}:build", "--method", "gradcam,guided"]
    common = ["--device", "cpu", "-j", "0", "-o", tmp_path / "out", "--jsonl"]
    result = run(*args, "--input-size", "28", "--input-channels", "1", *common)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["view"]["size"] == 28 and record["view"]["channels"] == 1
    assert len(record["predictions"]) == 5 and record["predictions"][0]["name"].startswith("class_")
    without = run(*args, *common)
    assert without.exit_code == 2
    assert "'--model'" in without.stderr and "--input-size" in without.stderr


def test_wrapped_checkpoints_in_every_common_form(tmp_path: Path, photos: Path) -> None:
    factory = write_factory(tmp_path, "blobnet", BLOB_CNN_SOURCE)
    model = import_file(factory).build()
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    tutorial = tmp_path / "tutorial.pt"
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {}}, tutorial)
    parallel = tmp_path / "parallel.safetensors"
    save_file(state, str(parallel))
    for weights in (tutorial, parallel):
        result = run(
            "explain", photos, "--model", f"{factory}:build", "--weights", weights,
            "--device", "cpu", "-j", "0", "-o", tmp_path / weights.stem, "--method", "gradcam",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "without their 'module.' prefix" in result.stderr
    unknown = tmp_path / "other.pt"
    torch.save({"net": state, "epoch": 3}, unknown)
    result = run(
        "explain", photos, "--model", f"{factory}:build", "--weights", unknown,
        "--device", "cpu", "-j", "0", "-o", tmp_path / "x",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "top-level keys: 'net', 'epoch'" in result.stderr and "Traceback" not in result.output


def test_package_module_factory_from_the_working_directory(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "nets.py").write_text(BLOB_CNN_SOURCE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = run(
        "explain", photos, "--model", "mypkg.nets:build", "--device", "cpu", "-j", "0",
        "-o", tmp_path / "out", "--method", "gradcam",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_factory_file_without_its_function_names_the_form(tmp_path: Path, photos: Path) -> None:
    factory = write_factory(tmp_path, "blobnet", BLOB_CNN_SOURCE)
    result = run("explain", photos, "--model", factory, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert f"{factory}:FUNCTION" in result.stderr


def test_one_mean_for_one_channel_is_said_plainly(tmp_path: Path, photos: Path) -> None:
    factory = write_factory(tmp_path, "blobnet", BLOB_CNN_SOURCE)
    result = run(
        "explain", photos, "--model", f"{factory}:build", "--mean", "0.5,0.5,0.5",
        "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "give 1 value for a 1-channel input" in result.stderr
