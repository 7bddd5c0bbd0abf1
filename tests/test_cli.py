"""Every CLI promise: outputs, options, stdout purity, exit codes, error sentences."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner, Result
from PIL import Image

from camcli.cli import main

from .conftest import BRIGHT, SAMPLES, TINY, TinyNet, held_lock, save_image, square_image

Folder = Callable[[dict[str, tuple[int, int]]], Path]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def explain_squeezenet(root: Path, out: Path, weights: Path, *extra: str | Path) -> Result:
    return run(
        "explain",
        root,
        "-o",
        out,
        "--model",
        "squeezenet1_1",
        "--weights",
        weights,
        "-j",
        "0",
        *extra,
    )


def explain(root: Path, out: Path, *extra: str | Path) -> Result:
    return run("explain", root, "-o", out, "--model", TINY, "--workers", "0", *extra)


def jsonl(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def three(image_folder: Folder) -> Path:
    return image_folder(
        {"tabby/a.jpg": (50, 40), "tabby/a.png": (30, 60), "espresso/b.jpg": (64, 64)}
    )


def test_every_command_has_help_and_version():
    for command in (["--help"], ["explain", "--help"], ["models", "--help"], ["explain", "-h"]):
        result = run(*command)
        assert result.exit_code == 0 and "Usage:" in result.stdout
    assert run("--version").stdout.strip().endswith("0.1.0")
    assert run("explain", "--version").exit_code == 0


def test_outputs_per_image_at_original_size_and_no_name_collisions(three: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = explain(three, out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # without --jsonl nothing goes to stdout
    assert "explained 3 of 3 images" in result.stderr
    for name, size in [
        ("tabby/a.jpg", (50, 40)),
        ("tabby/a.png", (30, 60)),
        ("espresso/b.jpg", (64, 64)),
    ]:
        record = json.loads((out / f"{name}.json").read_text())
        assert record["image"] == name and record["status"] == "ok"
        assert (record["width"], record["height"]) == size
        assert record["files"] == {
            "gradcam": {
                "heatmap": f"{Path(name).name}.gradcam.png",
                "overlay": f"{Path(name).name}.gradcam.overlay.png",
            },
            "guided": {"image": f"{Path(name).name}.guided.png"},
        }
        for listing in record["files"].values():
            for file_name in listing.values():
                picture = Image.open((out / name).parent / file_name)
                assert picture.size == size and picture.mode == "RGB"
        assert record["layers"] == ["features.3"] and record["model"] == TINY
        assert record["methods"] == ["gradcam", "guided"]
        assert len(record["predictions"]) == 5
        assert record["target"]["mode"] == "pred"
        assert record["target"]["index"] == record["predictions"][0]["index"]
        assert record["guided_backprop"]["guided_calls"] == {"relu": 2}
    assert json.loads((out / "tabby/a.png.json").read_text())["label"] == {
        "folder": "tabby",
        "index": 281,
        "name": "tabby",
    }
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [e["image"] for e in index] == ["espresso/b.jpg", "tabby/a.jpg", "tabby/a.png"]
    assert index[0]["record"] == "espresso/b.jpg.json"
    assert not list(out.rglob("*.tmp")) and not (out / "index.jsonl.partial").exists()


def test_jsonl_stdout_is_pure_data_one_record_per_image(three: Path, tmp_path: Path):
    result = explain(three, tmp_path / "out", "--jsonl", "--top-k", "3")
    assert result.exit_code == 0
    records = jsonl(result)
    assert [r["image"] for r in records] == ["espresso/b.jpg", "tabby/a.jpg", "tabby/a.png"]
    assert all(len(r["predictions"]) == 3 for r in records)
    probabilities = [p["probability"] for p in records[0]["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert "explained" not in result.stdout and "explained" in result.stderr


def test_corrupt_file_is_reported_and_the_others_are_explained(three: Path, tmp_path: Path):
    (three / "tabby" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (three / "tabby" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    result = explain(three, out, "--jsonl")
    assert result.exit_code == 1
    assert "failed tabby/broken.jpg: cannot decode image" in result.stderr
    closing = result.stderr.strip().splitlines()[-1]
    # The images failed, not the model: the count comes after what was used, with where the
    # reasons are.
    assert re.match(r"camcli: explained 3 of 5 images with \S+ at \S+; 2 failed \(the reasons "
                    r"are in the index and run.json\); ", closing), closing  # fmt: skip
    records = {r["image"]: r for r in jsonl(result)}
    assert records["tabby/broken.jpg"]["status"] == "error"
    assert records["tabby/a.jpg"]["status"] == "ok"
    assert (out / "tabby/a.jpg.json").exists() and not (out / "tabby/broken.jpg.json").exists()
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(e["status"] for e in index) == ["error", "error", "ok", "ok", "ok"]


def test_single_image_input(three: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = explain(three / "espresso" / "b.jpg", out)
    assert result.exit_code == 0
    assert (out / "b.jpg.json").exists() and (out / "b.jpg.gradcam.overlay.png").exists()


def test_no_images_is_one_sentence_and_non_zero(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = explain(tmp_path / "empty", tmp_path / "out")
    assert result.exit_code == 1
    assert "no images found in" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--model", "densenet20"],
            "'--model': unknown model 'densenet20'; did you mean densenet201",
        ),
        (
            ["--layer", "features.33"],
            "'--layer': the model has no layer named 'features.33'; close matches: features.3",
        ),
        (["--layer", "fc"], "'--layer': layer 'fc' outputs"),
        (["--target", "no such class"], "'--target'"),
        (
            ["--target", "tabbby"],
            "'--target': 'tabbby' is not 'pred', 'label', a class index "
            "or a class name of this model; did you mean 'tabby'",
        ),
        (["--target", "1000"], "out of range"),
        (["--device", "cuda:7"], "'--device'"),
        (["--device", "tpu"], "'--device'"),
        (["--top-k", "0"], "'-k' / '--top-k'"),
        (["--batch-size", "0"], "'-b' / '--batch-size'"),
        (["--alpha", "2"], "'--alpha'"),
    ],
)
def test_usage_errors_exit_2_with_one_sentence_naming_the_option(
    three: Path, tmp_path: Path, args: list[str], needle: str
):
    result = explain(three, tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_target_class_by_index_and_by_name(three: Path, tmp_path: Path):
    by_index = jsonl(explain(three, tmp_path / "a", "--jsonl", "--target", "285"))
    by_name = jsonl(explain(three, tmp_path / "b", "--jsonl", "--target", "Egyptian_cat"))
    for records in (by_index, by_name):
        assert {
            (r["target"]["index"], r["target"]["name"], r["target"]["mode"]) for r in records
        } == {(285, "Egyptian cat", "class")}


def test_target_label_uses_each_folder_and_records_correctness(three: Path, tmp_path: Path):
    result = explain(three, tmp_path / "out", "--jsonl", "--target", "label")
    assert result.exit_code == 0
    records = {r["image"]: r for r in jsonl(result)}
    assert records["espresso/b.jpg"]["target"]["index"] == 967
    assert records["tabby/a.jpg"]["target"]["index"] == 281
    for r in records.values():
        assert r["correct"] == (r["predictions"][0]["index"] == r["label"]["index"])


def test_target_label_refuses_unmapped_folders(image_folder: Folder, tmp_path: Path):
    root = image_folder({"not_a_class/a.jpg": (20, 20), "tabby/b.jpg": (20, 20)})
    result = explain(root, tmp_path / "out", "--target", "label")
    assert result.exit_code == 2 and "'not_a_class'" in result.stderr
    flat = image_folder({"c.jpg": (20, 20)})
    result = explain(flat, tmp_path / "out", "--target", "label")
    assert result.exit_code == 2 and "class folder" in result.stderr


def test_save_raw_writes_float_arrays_listed_in_the_json(three: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert explain(three, out, "--save-raw").exit_code == 0
    record = json.loads((out / "espresso/b.jpg.json").read_text())
    cam = np.load(out / "espresso" / record["files"]["gradcam"]["raw"])
    guided = np.load(out / "espresso" / record["files"]["guided"]["raw"])
    assert cam.shape == (32, 32) and cam.dtype == np.float32 and cam.min() >= 0
    assert guided.shape == (3, 32, 32) and guided.dtype == np.float32
    assert np.isclose(cam.max(), record["maps"]["gradcam"]["max"], rtol=0.5)


def test_no_guided_skips_the_guided_picture(three: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert explain(three, out, "--no-guided").exit_code == 0
    record = json.loads((out / "espresso/b.jpg.json").read_text())
    assert "guided" not in record["files"] and "guided_backprop" not in record
    assert not (out / "espresso/b.jpg.guided.png").exists()


def test_crop_and_resize_views_put_the_heatmap_on_the_square(tmp_path: Path):
    box = (170, 60, 230, 120)
    save_image(tmp_path / "in" / "sq.png", square_image(300, 200, box))
    for view in ("--resize", "--crop"):
        out = tmp_path / view
        result = run("explain", tmp_path / "in", "-o", out, "--model", BRIGHT, "-j", "0", view)
        assert result.exit_code == 0, result.output
        record = json.loads((out / "sq.png.json").read_text())
        assert record["view"]["mode"] == view[2:]
        peak = record["maps"]["gradcam"]["peak"]
        assert box[0] <= peak["x"] < box[2] and box[1] <= peak["y"] < box[3]
        heat = np.asarray(Image.open(out / "sq.png.gradcam.png"))
        assert heat[90, 200, 0] > 120 and heat[90, 200, 2] < 60  # red on the square


def test_output_inside_input_is_not_read_back(three: Path):
    out = three / "explained"
    assert explain(three, out).exit_code == 0
    second = explain(three, out, "--jsonl")
    assert second.exit_code == 0 and len(jsonl(second)) == 3


def test_torchvision_model_from_the_cache_and_from_weights(three: Path, tmp_path: Path):
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    # 1. missing from the cache, downloads off: one sentence naming the file, exit 1
    result = run("explain", three, "-o", tmp_path / "o1", "--model", "squeezenet1_1", "-j", "0")
    assert result.exit_code == 1
    assert "squeezenet1_1-b8a52dc0.pth" in result.stderr and "Traceback" not in result.output
    # 2. --weights FILE
    weights = tmp_path / "sq.pth"
    torch.save(state, weights)
    result = explain_squeezenet(three, tmp_path / "o2", weights, "--jsonl")
    assert result.exit_code == 0, result.output
    records = jsonl(result)
    assert records[0]["layers"] == ["features.12"] and records[0]["weights"] == str(weights)
    # 3. the torch hub cache under TORCH_HOME, under the name torchvision expects
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache / "squeezenet1_1-b8a52dc0.pth")
    result = run(
        "explain",
        three,
        "-o",
        tmp_path / "o3",
        "--model",
        "squeezenet1_1",
        "-j",
        "0",
        "--jsonl",
        "--layer",
        "features.9",
    )
    assert result.exit_code == 0, result.output
    assert jsonl(result)[0]["layers"] == ["features.9"]


def test_unsafe_weights_file_is_refused(three: Path, tmp_path: Path):
    path = tmp_path / "bad.pth"
    torch.save({"model": TinyNet()}, path)  # a whole pickled module: needs full unpickling
    result = explain(three, tmp_path / "out", "--weights", path)
    assert result.exit_code == 1 and "weights_only=True" in result.stderr


def test_config_file_sets_defaults_and_the_command_line_wins(three: Path, tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{TINY}"\ntop-k = 2\nworkers = 0\ntarget = "285"\n')
    result = run("explain", three, "-o", tmp_path / "out", "--config", config, "--jsonl", "-k", "4")
    assert result.exit_code == 0, result.output
    records = jsonl(result)
    assert len(records[0]["predictions"]) == 4 and records[0]["target"]["index"] == 285
    config.write_text("colour = 'red'\n")
    result = run("explain", three, "--config", config)
    assert result.exit_code == 2 and "unknown option 'colour'" in result.stderr


def test_models_lists_names_and_weight_status():
    result = run("models")
    assert result.exit_code == 0
    rows = dict(line.split("\t") for line in result.stdout.splitlines())
    assert rows["efficientnet_lite0"] == "embedded" and rows["densenet201"] == "download"


def test_python_dash_m_works():
    result = subprocess.run(
        [sys.executable, "-m", "camcli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "explain" in result.stdout


def test_results_do_not_depend_on_batch_size(three: Path, tmp_path: Path):
    one = {r["image"]: r for r in jsonl(explain(three, tmp_path / "a", "--jsonl", "-b", "1"))}
    three_at_once = {
        r["image"]: r for r in jsonl(explain(three, tmp_path / "b", "--jsonl", "-b", "3"))
    }
    for name, record in one.items():
        other = three_at_once[name]
        assert record["predictions"] == other["predictions"]
        assert record["maps"] == other["maps"] or (
            record["maps"]["gradcam"]["peak"] == other["maps"]["gradcam"]["peak"]
            and np.isclose(
                record["maps"]["gradcam"]["max"], other["maps"]["gradcam"]["max"], rtol=1e-4
            )
        )


def test_decoding_in_worker_processes(three: Path, tmp_path: Path):
    result = run(
        "explain", three, "-o", tmp_path / "out", "--model", TINY, "--workers", "2", "--jsonl"
    )
    assert result.exit_code == 0, result.output
    assert len(jsonl(result)) == 3


def test_alpha_zero_overlay_is_the_photo_and_png_level_trades_size(tmp_path: Path):
    photo = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    save_image(tmp_path / "in" / "p.png", photo)
    out0 = tmp_path / "a0"
    result = explain(tmp_path / "in", out0, "--alpha", "0", "--png-level", "0")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(out0 / "p.png.gradcam.overlay.png")), photo)
    out9 = tmp_path / "a9"
    assert explain(tmp_path / "in", out9, "--png-level", "9").exit_code == 0
    size0 = (out0 / "p.png.gradcam.png").stat().st_size
    size9 = (out9 / "p.png.gradcam.png").stat().st_size
    assert size9 < size0


def test_offline_flag_forbids_downloads(three: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CAMCLI_OFFLINE")
    result = run("explain", three, "-o", tmp_path / "o", "--model", "resnet18", "--offline")
    assert result.exit_code == 1
    assert "downloads are off" in result.stderr and "resnet18-f37072fd.pth" in result.stderr


def test_no_progress_bar_when_stderr_is_not_a_terminal(three: Path, tmp_path: Path):
    result = explain(three, tmp_path / "out")
    assert "img/s]" not in result.stderr and "%|" not in result.stderr


def test_exif_rotated_photo_is_explained_as_shown(tmp_path: Path):
    shown = square_image(120, 80, (80, 10, 110, 40))  # viewers show 120 x 80, square top right
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "in").mkdir()
    Image.fromarray(np.ascontiguousarray(np.rot90(shown, k=1))).save(
        tmp_path / "in" / "phone.jpg", exif=exif, quality=95
    )
    out = tmp_path / "out"
    result = run("explain", tmp_path / "in", "-o", out, "--model", BRIGHT, "-j", "0")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "phone.jpg.json").read_text())
    assert (record["width"], record["height"]) == (120, 80)
    peak = record["maps"]["gradcam"]["peak"]
    assert 78 <= peak["x"] <= 112 and 8 <= peak["y"] <= 42
    assert Image.open(out / "phone.jpg.gradcam.overlay.png").size == (120, 80)


def test_methods_repeatable_and_comma_separated_each_listed_under_its_name(
    three: Path, tmp_path: Path
):
    out = tmp_path / "out"
    result = explain(
        three,
        out,
        "--jsonl",
        "--method",
        "gradcam++,eigencam",
        "--method",
        "cam",
        "--method",
        "guided-gradcam",
        "--method",
        "smoothgrad",
        "--smooth-samples",
        "2",
    )
    assert result.exit_code == 0, result.output
    record = jsonl(result)[0]
    assert record["methods"] == ["gradcam++", "cam", "eigencam", "guided-gradcam", "smoothgrad"]
    assert set(record["files"]) == set(record["methods"])
    assert set(record["maps"]) == {"gradcam++", "cam", "eigencam"}
    assert record["files"]["cam"] == {
        "heatmap": "b.jpg.cam.png",
        "overlay": "b.jpg.cam.overlay.png",
    }
    assert record["files"]["guided-gradcam"] == {"image": "b.jpg.guided-gradcam.png"}
    assert record["smoothgrad"]["samples"] == 2 and record["smoothgrad"]["gradients"] == "plain"
    assert record["maps"]["cam"]["classifier"] == {"features.3": "fc"}
    assert not (out / "espresso" / "b.jpg.gradcam.png").exists()  # not asked for
    assert np.asarray(Image.open(out / "espresso" / "b.jpg.smoothgrad.png")).shape == (64, 64)


def test_unknown_method_and_cam_on_a_model_without_a_linear_head(three: Path, tmp_path: Path):
    result = explain(three, tmp_path / "out", "--method", "gradcam,foo")
    assert result.exit_code == 2 and "'--method': unknown method 'foo'" in result.stderr
    weights = tmp_path / "sq.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    result = explain_squeezenet(three, tmp_path / "o2", weights, "--method", "cam")
    assert result.exit_code == 2
    assert "'--method': cam needs a model whose logits are one linear layer" in result.stderr


def test_several_layers_write_one_map_each_and_a_fused_map(three: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = explain(
        three,
        out,
        "--jsonl",
        "--layer",
        "features.0",
        "--layer",
        "features.3",
        "--save-raw",
        "--no-guided",
    )
    assert result.exit_code == 0, result.output
    record = jsonl(result)[0]
    assert record["layers"] == ["features.0", "features.3"] and record["methods"] == ["gradcam"]
    files = record["files"]["gradcam"]
    assert files["heatmap"] == "b.jpg.gradcam.png"
    assert files["features.0.heatmap"] == "b.jpg.gradcam.features.0.png"
    assert files["features.3.overlay"] == "b.jpg.gradcam.features.3.overlay.png"
    entry = record["maps"]["gradcam"]
    assert entry["layer"] == "fused" and set(entry["layers"]) == {"features.0", "features.3"}
    fused = np.load(out / "espresso" / files["raw"])
    per_layer = [np.load(out / "espresso" / files[f"{name}.raw"]) for name in entry["layers"]]
    maxima = [entry["layers"][name]["max"] for name in entry["layers"]]
    normalised = [m / peak if peak > 0 else m for m, peak in zip(per_layer, maxima, strict=True)]
    np.testing.assert_allclose(fused, np.maximum(*normalised), atol=1e-5)


def test_smoothgrad_does_not_depend_on_the_batch(three: Path, tmp_path: Path):
    args = ("--method", "smoothgrad", "--smooth-samples", "3", "--save-raw", "--seed", "7")
    assert explain(three, tmp_path / "a", *args, "-b", "1").exit_code == 0
    assert explain(three, tmp_path / "b", *args, "-b", "3", "--chunk-size", "4").exit_code == 0
    for name in ("espresso/b.jpg", "tabby/a.png"):
        a = np.load(tmp_path / "a" / f"{name}.smoothgrad.npy")
        b = np.load(tmp_path / "b" / f"{name}.smoothgrad.npy")
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fast_png_is_lossless_and_precision_options_run(three: Path, tmp_path: Path):
    from camcli.io.write import encode_png

    photo = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for level in (None, 1):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(photo, level))).convert("RGB"))
        np.testing.assert_array_equal(decoded, photo)
    base = jsonl(explain(three, tmp_path / "fp32", "--jsonl"))
    for extra in (["--precision", "bf16"], ["--channels-last"], ["--precision", "tf32"]):
        result = explain(three, tmp_path / "-".join(extra), "--jsonl", *extra)
        assert result.exit_code == 0, result.output
        for a, b in zip(base, jsonl(result), strict=True):
            assert a["predictions"][0]["index"] == b["predictions"][0]["index"]


def test_help_documents_exit_codes():
    text = run("explain", "--help").stdout
    for line in (
        "0    every image explained",
        "1    some images failed",
        "2    usage error",
        "130  stopped by SIGINT",
        "143  stopped by SIGTERM",
        "141  stdout closed",
    ):
        assert line in text, line


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")))
def test_shipped_configs_are_accepted(config: Path, three: Path, tmp_path: Path):
    result = run(
        "explain",
        three,
        "-o",
        tmp_path / "out",
        "--config",
        config,
        "-j",
        "0",
        "--model",
        TINY,
        "--layer",
        "features.3",
    )
    assert result.exit_code in (0, 1), result.output  # 1: no labels for --target label
    assert "unknown option" not in result.stderr and result.exit_code != 2


def test_unusable_output_directory_is_one_sentence(three: Path, tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    result = explain(three, blocker / "out")
    assert result.exit_code == 1
    assert f"cannot write to the output directory {blocker / 'out'}" in result.stderr
    assert "Traceback" not in result.output


def test_host_parallelism_defaults_scale_with_the_cores():
    from camcli.runs.settings import host_parallelism

    assert host_parallelism("cpu", 1) == (0, 1)  # decode in the main process
    assert host_parallelism("cpu", 2) == (1, 1)  # a second writer slowed the model down
    assert host_parallelism("cpu", 64) == (4, 8)  # the model wants the cores
    assert host_parallelism("cuda", 16) == (5, 10)
    assert host_parallelism("cuda", 64) == (8, 32)
    assert host_parallelism("cuda", 16, processes=8) == (1, 2)  # 8 ranks share 16 cores
    for cores in range(1, 129):
        workers, writers = host_parallelism("cuda", cores)
        assert workers >= 1 and writers >= 2
        assert cores < 4 or workers + writers + 1 <= cores


def test_resize_on_device_gives_the_same_predictions_and_is_part_of_the_resume_key(
    three: Path, tmp_path: Path
):
    out = tmp_path / "out"
    loader = {r["image"]: r for r in jsonl(explain(three, out, "--jsonl", "--resize-on", "loader"))}
    result = explain(three, out, "--jsonl", "--resize-on", "device")
    assert result.exit_code == 0, result.output
    device = {r["image"]: r for r in jsonl(result)}
    assert sorted(device) == sorted(loader)
    for name, record in device.items():
        assert record["reused"] is False  # other preprocessing: redone, not reused
        assert record["view"]["resampled_by"] == "torch (on the device)"
        assert loader[name]["view"]["resampled_by"] == "pillow"
        assert record["predictions"][0]["index"] == loader[name]["predictions"][0]["index"]
        assert record["predictions"][0]["probability"] == pytest.approx(
            loader[name]["predictions"][0]["probability"], abs=0.02
        )
    again = jsonl(explain(three, out, "--jsonl", "--resize-on", "device"))
    assert all(r.get("reused") for r in again)
    # the index says the same, and what task each line is of, as a detector's lines do
    lines = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert all(e["reused"] is True and e["task"] == "classify" for e in lines)
    (out / "index.jsonl").unlink()
    fresh = jsonl(explain(three, out, "--jsonl", "--force"))
    lines = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert all(r["reused"] is False for r in fresh)
    assert all(e["reused"] is False and e["task"] == "classify" for e in lines)


def test_missing_isal_is_said_once_on_stderr_and_the_run_still_works(
    three: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import zlib

    import camcli.io.write

    assert camcli.io.write.fast_deflate_available()  # a dependency where wheels exist
    monkeypatch.setattr(camcli.io.write, "_deflate", zlib)
    result = explain(three, tmp_path / "out", "--jsonl")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("isal package is missing") == 1
    assert len(jsonl(result)) == 3  # stdout stays pure data
    quiet = explain(three, tmp_path / "out6", "--jsonl", "--png-level", "6")
    assert "isal package" not in quiet.stderr  # OpenCV's encoder was asked for: nothing to say


_REFUSE = """
import sys
from camcli.cli import main
try:
    main(sys.argv[1:], standalone_mode=True)
except SystemExit as exc:
    print("torch loaded" if "torch" in sys.modules else "torch not loaded", file=sys.stderr)
    raise
"""


def test_refusals_come_before_torch_and_the_model_are_loaded(tmp_path: Path) -> None:
    """A held directory, an unwritable one and an unknown model: refused before torch."""

    def refuse(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _REFUSE, "explain", str(SAMPLES), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    typo = refuse("--model", "densenet20", "-o", str(tmp_path / "a"))
    assert typo.returncode == 2 and "did you mean densenet201" in typo.stderr
    assert "torch not loaded" in typo.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    unwritable = refuse("-o", str(blocker / "out"))
    assert (
        unwritable.returncode == 1 and "cannot write to the output directory" in unwritable.stderr
    )
    assert "torch not loaded" in unwritable.stderr
    held = tmp_path / "held"
    with held_lock(held) as holder:
        locked = refuse("-o", str(held))
    assert locked.returncode == 1 and f"is in use by camcli pid {holder.pid}" in locked.stderr
    assert "torch not loaded" in locked.stderr


def _refuse(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _REFUSE, command, str(SAMPLES), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["explain", "evaluate", "features"])
def test_layer_and_target_typos_on_the_default_model_come_before_torch(
    command: str, tmp_path: Path
) -> None:
    """The default model's layer names ship with camcli and its classes are ImageNet's: a
    typo in either is refused with the sentence the loaded model gives, before torch."""
    layer = _refuse(command, "--layer", "blocks.9", "-o", str(tmp_path / "a"))
    assert layer.returncode == 2 and "torch not loaded" in layer.stderr
    assert "'--layer': the model has no layer named 'blocks.9'; close matches:" in layer.stderr
    assert "'camcli layers efficientnet_lite0' lists every layer" in layer.stderr
    if command == "explain":  # the same sentence as the loaded model's
        from camcli.models.hooks import UnknownLayer, resolve_layer
        from camcli.models.layer_names import remembered_layers
        from camcli.models.registry import load_model

        module = load_model("efficientnet_lite0").module
        names = [n for n, _ in module.named_modules() if n]
        assert remembered_layers("efficientnet_lite0") == names
        with pytest.raises(UnknownLayer) as late:
            resolve_layer(module, "blocks.9")
        assert f"'--layer': {late.value}; 'camcli layers" in layer.stderr
    if command == "features":
        return
    target = _refuse(command, "--target", "tigr_cat", "-o", str(tmp_path / "c"))
    assert target.returncode == 2 and "torch not loaded" in target.stderr
    assert "'tigr_cat' is not 'pred', 'label', a class index or a class name of this model; " \
        "did you mean 'tiger cat'" in target.stderr  # fmt: skip
    # Good values pass the early check (the run itself is not made here).
    from camcli.cli.early import refuse_early
    from camcli.cli.options import (
        CommonOptions,
        InputOptions,
        ModelOptions,
        OutputOptions,
        RuntimeOptions,
    )

    common = CommonOptions(InputOptions(SAMPLES), ModelOptions(), RuntimeOptions(),
                           OutputOptions(tmp_path / "d"))  # fmt: skip
    refuse_early(common, layers=("blocks.6", "bn2+relu"), target="Egyptian_cat,pred,281")


def test_a_zoo_models_layers_are_remembered_for_the_next_refusal(tmp_path: Path) -> None:
    """A model's layer names are remembered when it loads (keyed by the packages' versions):
    the next typo is refused before torch; an own model is never remembered."""
    from camcli.models.layer_names import layer_names_file, remembered_layers
    from camcli.models.registry import load_model

    assert remembered_layers("resnet18") is None
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    load_model("resnet18", weights)
    path = layer_names_file("resnet18")
    assert path is not None and path.is_file()
    assert remembered_layers("resnet18") == [
        n for n, _ in torchvision.models.resnet18().named_modules() if n
    ]
    env_home = os.environ["TORCH_HOME"]
    done = subprocess.run(
        [sys.executable, "-c", _REFUSE, "explain", str(SAMPLES), "--model", "resnet18",
         "--layer", "layer9", "-o", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TORCH_HOME": env_home},
    )  # fmt: skip
    assert done.returncode == 2 and "torch not loaded" in done.stderr
    assert "no layer named 'layer9'; close matches: layer4, layer3" in done.stderr
    assert layer_names_file("my_model.py:build") is None


def test_a_wrong_config_value_names_the_key_and_the_file(three: Path, tmp_path: Path) -> None:
    config = tmp_path / "nightly.toml"
    config.write_text('top-k = "three"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["explain", str(three), "--config", str(config)])
    assert result.exit_code == 2
    assert f"{config} sets top-k = 'three': 'three' is not a valid integer" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["explain", "evaluate", "features", "compare"])
def test_help_lists_the_common_options_first_and_the_rest_under_headings(command: str) -> None:
    text = CliRunner().invoke(main, [command, "--help"]).stdout
    headings = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ")
                and line.endswith(":") and line != "Exit status:"]  # fmt: skip
    assert headings[0] == "Common options" and "Runtime" in headings, headings
    common = text.split("Common options:\n", 1)[1]
    assert common.lstrip().startswith("-o, --output-dir")
    first_section = common.split("\n\n", 1)[0]
    for option in ("--method", "--target", "--device"):
        assert option in first_section or command in ("compare", "features"), option
    # Every option once, whatever its section.
    options = re.findall(r"^  (?:-\w, )?(--[\w+-]+)", text, flags=re.M)
    assert len(options) == len(set(options)) and "--help" in options
