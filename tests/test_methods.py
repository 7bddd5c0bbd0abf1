"""The methods: closed forms on tiny models, sharing of passes, chunking, and two references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from camcli.methods import forward as explain_module
from camcli.methods.activation import CamNotApplicable, eigencam
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.forward import normalise_maps
from camcli.methods.names import ALL_METHODS, IMAGE_METHODS, parse_methods

from .conftest import reference_copy as _reference_copy
from .test_explain import FeatureHead

A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 0.0]]]])
W = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
ALL_MAPS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "cam", "eigencam"]


def _maps(model: nn.Module, x: torch.Tensor, layer: str, methods: list[str], targets=None, **kw):
    options = MethodOptions(**kw)
    return compute_methods(model, x, [layer], methods, targets, options)


def test_closed_forms_on_a_pooled_linear_head():
    """Layer -> global average pool -> linear: every gradient is W[c] / (h w), constant."""
    model = FeatureHead(W)
    result = _maps(model, A, "feat", ALL_MAPS, torch.tensor([0]))
    maps = {m: result.maps[m]["feat"][0] for m in ALL_MAPS}
    a0, a1 = A[0, 0], A[0, 1]
    # Grad-CAM: weights W[0]/4 = (0.25, -0.25)
    gradcam = (0.25 * a0 - 0.25 * a1).clamp(min=0)
    torch.testing.assert_close(maps["gradcam"], gradcam)
    # Constant gradients: HiResCAM and XGrad-CAM equal Grad-CAM, CAM is h*w times Grad-CAM
    torch.testing.assert_close(maps["hirescam"], gradcam)
    torch.testing.assert_close(maps["xgradcam"], gradcam)
    torch.testing.assert_close(maps["cam"], 4 * gradcam)
    # LayerCAM: ReLU(sum_k ReLU(g_k) A_k) = 0.25 * A0
    torch.testing.assert_close(maps["layercam"], 0.25 * a0)
    # Grad-CAM++: alpha_0 = g^2 / (2 g^2 + sum(A0) g^3) with g = 0.25, sum(A0) = 10
    alpha = 0.0625 / (2 * 0.0625 + 10 * 0.015625)
    weight = 4 * alpha * 0.25  # summed over the 4 positions; channel 1 has ReLU(g) = 0
    torch.testing.assert_close(maps["gradcam++"], weight * a0, rtol=1e-5, atol=1e-6)
    assert result.heads["feat"].name == "fc" and not result.heads["feat"].relu_first


def test_cam_through_a_relu_before_pooling_like_densenet():
    model = FeatureHead(W, relu_after=True)
    x = torch.tensor([[[[1.0, -2.0], [3.0, 4.0]], [[-4.0, 1.0], [0.0, 2.0]]]])
    result = _maps(model, x, "feat", ["cam"], torch.tensor([1]))
    assert result.heads["feat"].relu_first
    expected = (0.5 * x[0, 0].clamp(min=0) + 2.0 * x[0, 1].clamp(min=0)).clamp(min=0)
    torch.testing.assert_close(result.maps["cam"]["feat"][0], expected)


def test_cam_refuses_heads_that_are_not_one_linear_layer():
    torch.manual_seed(0)
    vgg = torchvision.models.vgg11(weights=None)
    with pytest.raises(CamNotApplicable, match="use gradcam"):
        _maps(vgg, torch.randn(1, 3, 64, 64), "features.19", ["cam"])


def test_eigencam_is_the_first_component_with_a_fixed_sign():
    """Rank-one activations A_k(p) = u_k s(p): the component is s minus its mean."""
    s = torch.tensor([[0.0, 1.0, 2.0], [3.0, 9.0, 1.0], [0.5, 0.0, 4.0]])
    u = torch.tensor([1.0, 2.0, -0.5, 3.0])
    acts = (u[:, None, None] * s)[None]
    expected = normalise_maps((s - s.mean()).clamp(min=0)[None])
    torch.testing.assert_close(normalise_maps(eigencam(acts)), expected, atol=1e-5, rtol=1e-5)
    # The same activations with every channel negated still give a map that follows the
    # channel mean (which is now -s): the sign is fixed by that correlation, not by the SVD.
    flipped = normalise_maps(eigencam(-acts))
    torch.testing.assert_close(
        flipped, normalise_maps((s.mean() - s).clamp(min=0)[None]), atol=1e-5, rtol=1e-5
    )


def test_scorecam_matches_a_plain_loop_and_respects_the_chunk_bound():
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
            self.head = nn.Linear(6, 10)
            self.sizes: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.sizes.append(x.shape[0])
            return self.head(F.relu(self.conv(x)).mean(dim=(2, 3)))

    model = Tiny().eval()
    x = torch.randn(50, 3, 16, 16)
    targets = torch.randint(0, 10, (50,))
    result = _maps(model, x, "conv", ["scorecam"], targets, chunk_size=16)
    # the memory bound: never more than chunk_size masked images in one forward pass
    assert max(model.sizes[1:]) <= 16
    assert sum(model.sizes[1:]) == 50 * 6
    ours = result.maps["scorecam"]["conv"]
    acts = result.explanation.activations["conv"]
    for i in (0, 17, 49):  # a plain per-image, per-channel loop from the paper
        scores = []
        for k in range(6):
            a = acts[i, k]
            mask = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else torch.zeros_like(a)
            mask = F.interpolate(
                mask[None, None], size=(16, 16), mode="bilinear", align_corners=False
            )
            with torch.no_grad():
                scores.append(model(x[i : i + 1] * mask)[0, targets[i]])
        weights = torch.softmax(torch.stack(scores), dim=0)
        expected = (weights[:, None, None] * acts[i]).sum(0).clamp(min=0)
        torch.testing.assert_close(ours[i], expected, rtol=1e-4, atol=1e-5)


def test_gradient_methods_share_one_forward_and_one_gradient(monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    forwards = []
    model.register_forward_pre_hook(lambda m, i: forwards.append(1))
    calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(explain_module.torch.autograd, "grad", counting_grad)
    _maps(
        model,
        torch.randn(2, 3, 64, 64),
        "layer4",
        ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"],
    )
    assert len(forwards) == 1 and len(calls) == 1
    forwards.clear()
    calls.clear()
    _maps(model, torch.randn(2, 3, 64, 64), "layer4", ["gradcam", "layercam", "guided"])
    assert len(forwards) == 1 and len(calls) == 2  # + one gradient to the input


def test_several_layers_give_one_map_each_and_a_fused_maximum():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    result = compute_methods(
        model,
        torch.randn(2, 3, 64, 64),
        ["layer3", "layer4"],
        ["gradcam", "layercam"],
        None,
        MethodOptions(),
    )
    assert set(result.maps["gradcam"]) == {"layer3", "layer4"}
    fused = result.fused["gradcam"]
    assert fused.shape == (2, 64, 64)
    up = [
        F.interpolate(
            normalise_maps(m)[:, None], size=(64, 64), mode="bilinear", align_corners=False
        )[:, 0]
        for m in result.maps["gradcam"].values()
    ]
    torch.testing.assert_close(fused, torch.maximum(*up))


def test_guided_gradcam_is_guided_backprop_times_the_upsampled_cam():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    result = compute_methods(
        model, x, ["layer4"], ["guided-gradcam"], torch.tensor([3, 4]), MethodOptions()
    )
    assert "gradcam" not in result.maps  # computed for guided-gradcam, not reported
    cam = F.interpolate(
        normalise_maps(result.explanation.cams["layer4"])[:, None],
        size=(64, 64),
        mode="bilinear",
        align_corners=False,
    )
    torch.testing.assert_close(result.images["guided-gradcam"], result.explanation.guided * cam)


def test_smoothgrad_is_seeded_per_image_and_averages_noisy_gradients():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([1, 2, 3])
    options = MethodOptions(smooth_samples=4, smooth_noise=0.0, chunk_size=5)
    batch = compute_methods(
        model, x, ["layer4"], ["smoothgrad"], targets, options, seeds=[10, 11, 12]
    )
    # zero noise: the average of identical plain gradients is the plain gradient
    xx = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(model(xx).gather(1, targets[:, None]).sum(), xx)[0]
    torch.testing.assert_close(batch.images["smoothgrad"], plain, rtol=1e-4, atol=1e-6)
    noisy = MethodOptions(smooth_samples=4, smooth_noise=0.2, chunk_size=3)
    together = compute_methods(
        model, x, ["layer4"], ["smoothgrad"], targets, noisy, seeds=[10, 11, 12]
    ).images["smoothgrad"]
    alone = compute_methods(
        model, x[1:2], ["layer4"], ["smoothgrad"], targets[1:2], noisy, seeds=[11]
    ).images["smoothgrad"]
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(together, plain)


def test_parse_methods_accepts_commas_repeats_and_aliases():
    assert parse_methods(["guided,gradcam", "Grad-CAM++", "gradcam"]) == (
        "gradcam",
        "gradcam++",
        "guided",
    )
    with pytest.raises(ValueError, match="unknown method 'foo'; known: gradcam"):
        parse_methods(["foo"])


# --- agreement with independent implementations ------------------------------------------


def _reference_model(name: str, model: nn.Module, layer: str) -> tuple[nn.Module, str]:
    """The model for a reference library, and the layer's name in it.

    torchvision's DenseNet ends with ``F.relu(features, inplace=True)``: the references
    capture ``features.norm5`` and the in-place ReLU then overwrites what they captured
    (pitfall 1), so they would weight post-ReLU activations. They get the same function with
    an out-of-place ReLU module instead.
    """
    if name.startswith("densenet"):
        explicit = nn.Sequential(
            model.features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier
        )
        if layer.endswith("+relu"):  # the rectified map that feeds the pooling: the ReLU's
            return _reference_copy(explicit), "1"
        return _reference_copy(explicit), "0." + layer.removeprefix("features.")
    return _reference_copy(model), layer


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    if denominator == 0.0:
        return 1.0 if float(a.norm()) == float(b.norm()) else 0.0
    return float(a @ b) / denominator


CASES = [
    ("resnet18", "layer4"),
    ("vgg11", "features.18"),
    ("densenet121", "features.norm5"),
    ("densenet121", "features.norm5+relu"),  # DenseNet's default: the map the pooling reads
]
PGC_NAMES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
}
TORCHCAM_NAMES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
}


@pytest.fixture(scope="module", params=CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def case(request):
    name, layer = request.param
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        targets = model(x).argmax(1)  # random weights: the top-1 gives non-empty maps
    ours = compute_methods(model, x, [layer], list(PGC_NAMES), targets, MethodOptions())
    return name, layer, model, x, targets, ours


@pytest.mark.parametrize("method", list(PGC_NAMES))
def test_gradient_methods_agree_with_pytorch_grad_cam(case, method: str):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name, layer, model, x, targets, ours = case
    ref, ref_layer = _reference_model(name, model, layer)
    with getattr(pgc, PGC_NAMES[method])(
        model=ref, target_layers=[ref.get_submodule(ref_layer)]
    ) as cam:
        theirs = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
    mine = F.interpolate(
        ours.maps[method][layer][:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]
    correlations = [_correlation(mine[i], theirs[i]) for i in range(3)]
    print(f"{name} {method} vs pytorch-grad-cam: per-image correlation {correlations}")
    assert min(correlations) > 0.99, correlations


@pytest.mark.parametrize("method", list(TORCHCAM_NAMES))
def test_gradient_methods_agree_with_torchcam(case, method: str):
    torchcam_methods = pytest.importorskip("torchcam.methods")
    name, layer, model, x, targets, ours = case
    ref, ref_layer = _reference_model(name, model, layer)
    extractor = getattr(torchcam_methods, TORCHCAM_NAMES[method])(
        ref, target_layer=ref_layer, input_shape=tuple(x.shape[1:])
    )
    with extractor:
        scores = ref(x)
        theirs = extractor(class_idx=targets.tolist(), scores=scores)[0]
    correlations = [_correlation(ours.maps[method][layer][i], theirs[i]) for i in range(3)]
    print(f"{name} {method} vs torchcam: per-image correlation {correlations}")
    # torchcam 0.5's Grad-CAM++ is not Eq. 19 of the paper: its denominator sums g^3 * A over
    # positions instead of (sum A) * g^3, and `alpha[mask].div_(...)` divides a boolean-indexed
    # copy, so its alpha stays g^2. pytorch-grad-cam implements Eq. 19 as camcli does (above,
    # correlation > 0.999); against torchcam the maps still agree closely, not exactly.
    bound = 0.95 if method == "gradcam++" else 0.999
    assert min(correlations) > bound, correlations


def test_cam_agrees_with_torchcam_on_resnet():
    torchcam_methods = pytest.importorskip("torchcam.methods")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 128, 128)
    targets = torch.tensor([5, 50, 500])
    ours = compute_methods(model, x, ["layer4"], ["cam"], targets, MethodOptions())
    with torchcam_methods.CAM(model, target_layer="layer4", fc_layer="fc") as extractor:
        model(x)
        # torchcam's CAM applies no ReLU and min-max normalises: compare its raw map, rectified
        theirs = extractor(class_idx=targets.tolist(), normalized=False)[0].clamp(min=0)
    for i in range(3):
        assert _correlation(ours.maps["cam"]["layer4"][i], theirs[i]) > 0.9999


def test_eigencam_agrees_with_pytorch_grad_cam_up_to_its_arbitrary_sign():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 128, 128)
    result = compute_methods(model, x, ["layer4"], ["eigencam"], None, MethodOptions())
    acts = result.explanation.activations["layer4"]
    theirs = torch.from_numpy(get_2d_projection(acts.numpy()))
    for i in range(3):
        mean_map = acts[i].mean(0)
        sign = 1.0 if _correlation(theirs[i], mean_map) >= 0 else -1.0
        expected = (sign * theirs[i]).clamp(min=0)
        assert _correlation(result.maps["eigencam"]["layer4"][i], expected) > 0.9999


def test_scorecam_agrees_with_torchcam_and_pytorch_grad_cam():
    """torchcam upsamples masks like camcli (align_corners=False): near-identical.
    pytorch-grad-cam upsamples with align_corners=True, which shifts every mask slightly;
    its maps still correlate strongly."""
    torchcam_methods = pytest.importorskip("torchcam.methods")
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = _reference_copy(torchvision.models.resnet18(weights=None).eval())
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([7, 70, 700])
    ours = compute_methods(
        model, x, ["layer1"], ["scorecam"], targets, MethodOptions(chunk_size=64)
    ).maps["scorecam"]["layer1"]
    with torchcam_methods.ScoreCAM(
        model, target_layer="layer1", batch_size=64, input_shape=(3, 64, 64)
    ) as extractor:
        scores = model(x)
        by_torchcam = extractor(class_idx=targets.tolist(), scores=scores)[0]
    with pgc.ScoreCAM(model=model, target_layers=[model.layer1]) as cam:
        cam.batch_size = 64
        by_pgc = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
    mine_up = F.interpolate(ours[:, None], size=(64, 64), mode="bilinear", align_corners=False)[
        :, 0
    ]
    torchcam_corr = [_correlation(ours[i], by_torchcam[i]) for i in range(3)]
    pgc_corr = [_correlation(mine_up[i], by_pgc[i]) for i in range(3)]
    print(f"scorecam vs torchcam {torchcam_corr}, vs pytorch-grad-cam {pgc_corr}")
    assert min(torchcam_corr) > 0.999, torchcam_corr
    assert min(pgc_corr) > 0.95, pgc_corr
    assert math.isfinite(sum(pgc_corr))


@pytest.mark.parametrize(
    ("arch", "layer", "head", "relu_first"),
    [
        ("densenet121", "features.norm5", "classifier", True),
        ("densenet121", "features.norm5+relu", "classifier", False),
        ("efficientnet_b0", "features.8", "classifier.1", False),
        ("resnet18", "layer4", "fc", False),
    ],
)
def test_cam_finds_the_linear_head_of_torchvision_families(arch, layer, head, relu_first):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([3, 9])
    result = compute_methods(model, x, [layer], ["cam"], targets, MethodOptions())
    found = result.heads[layer]
    assert (found.name, found.relu_first) == (head, relu_first)
    acts = result.explanation.activations[layer]
    acts = acts.clamp(min=0) if relu_first else acts
    weight = model.get_submodule(head).weight.detach()[targets]
    expected = (weight[:, :, None, None] * acts).sum(1).clamp(min=0)
    torch.testing.assert_close(result.maps["cam"][layer], expected, rtol=1e-4, atol=1e-5)


def test_cam_refuses_a_head_with_a_hidden_layer():
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    with pytest.raises(CamNotApplicable):
        _maps(model, torch.randn(1, 3, 64, 64), "features.12", ["cam"])


def test_bf16_autocast_maps_stay_close_to_fp32():
    """The stated tolerance: per-image correlation of bf16 and fp32 maps above 0.98."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 96, 96)
    targets = torch.tensor([1, 2, 3])
    methods = ["gradcam", "gradcam++", "layercam", "guided"]
    fp32 = compute_methods(model, x, ["layer4"], methods, targets, MethodOptions())
    bf16 = compute_methods(
        model, x, ["layer4"], methods, targets, MethodOptions(), autocast_dtype=torch.bfloat16
    )
    for method in ("gradcam", "gradcam++", "layercam"):
        for i in range(3):
            corr = _correlation(fp32.maps[method]["layer4"][i], bf16.maps[method]["layer4"][i])
            assert corr > 0.98, (method, i, corr)
    for i in range(3):
        assert _correlation(fp32.images["guided"][i], bf16.images["guided"][i]) > 0.98


def test_channels_last_gives_the_same_maps():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 96, 96)
    targets = torch.tensor([4, 5])
    methods = ["gradcam", "guided"]
    plain = compute_methods(model, x, ["layer4"], methods, targets, MethodOptions())
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl = compute_methods(
        last,
        x.contiguous(memory_format=torch.channels_last),
        ["layer4"],
        methods,
        targets,
        MethodOptions(),
    )
    torch.testing.assert_close(
        cl.maps["gradcam"]["layer4"], plain.maps["gradcam"]["layer4"], rtol=1e-3, atol=1e-5
    )
    # Another summation order can flip a ReLU mask where an activation is ~0: compare shapes.
    for i in range(2):
        assert _correlation(cl.images["guided"][i], plain.images["guided"][i]) > 0.999


def test_cam_head_is_found_under_bf16_autocast():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    result = compute_methods(
        model,
        torch.randn(2, 3, 64, 64),
        ["layer4"],
        ["cam"],
        torch.tensor([1, 2]),
        MethodOptions(),
        autocast_dtype=torch.bfloat16,
    )
    assert result.heads["layer4"].name == "fc"


def test_guided_smoothgrad_alone_reports_its_guided_calls():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    result = compute_methods(
        model,
        torch.randn(1, 3, 32, 32),
        ["layer4"],
        ["smoothgrad"],
        None,
        MethodOptions(smooth_samples=2, smooth_guided=True),
    )
    assert result.explanation.guided_calls == {"relu": 17}


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_gives_the_same_result_in_channels_last(method: str):
    """The CPU default is channels-last: no method may depend on the memory format.

    Score-CAM once called ``view`` on channels-last activations and stopped with "view size is
    not compatible with input tensor's size and stride".
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()
    x = torch.randn(3, 3, 12, 12)
    targets = torch.tensor([0, 2, 1])
    options = MethodOptions(chunk_size=4, smooth_samples=2, rise_masks=16, ig_steps=4)
    plain = compute_methods(model, x, ["2"], [method], targets, options, seeds=[1, 2, 3])
    last_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    last_x = x.contiguous(memory_format=torch.channels_last)
    last = compute_methods(last_model, last_x, ["2"], [method], targets, options, seeds=[1, 2, 3])
    if method in IMAGE_METHODS:
        torch.testing.assert_close(last.images[method], plain.images[method], atol=1e-5, rtol=1e-4)
    else:
        (last_map,) = last.maps[method].values()  # the layer's, or RISE's "input"
        (plain_map,) = plain.maps[method].values()
        torch.testing.assert_close(last_map, plain_map, atol=1e-5, rtol=1e-4)


def test_densenet_default_layer_is_the_map_its_pooling_reads_and_cam_decomposes_the_logit():
    """CAM at DenseNet's default layer: mean(W[c] . A) + b is the logit of c, exactly."""
    from camcli.models.hooks import LayerCapture
    from camcli.models.layers import default_layer

    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None).eval()
    layer = default_layer("densenet121", model, 64)
    assert layer == "features.norm5+relu"
    x = torch.randn(2, 3, 64, 64)
    with LayerCapture(model, [layer]) as capture, torch.no_grad():
        logits = model(x)
    a = capture.activations[layer]
    assert float(a.min()) >= 0.0  # rectified
    weight, bias = model.classifier.weight, model.classifier.bias
    targets = torch.tensor([3, 700])
    decomposed = (weight[targets][:, :, None, None] * a).sum(1).mean((1, 2)) + bias[targets]
    torch.testing.assert_close(decomposed, logits[torch.arange(2), targets], rtol=1e-4, atol=1e-4)
    result = compute_methods(model, x, [layer], ["cam", "xgradcam"], targets, MethodOptions())
    expected = (weight[targets][:, :, None, None] * a).sum(1).clamp(min=0)
    torch.testing.assert_close(result.maps["cam"][layer], expected, rtol=1e-4, atol=1e-5)
    # XGrad-CAM divides by the activation sum: on the rectified map it is finite and agrees
    # with CAM's ranking far better than on the unrectified one (r = -0.2 there)
    xgrad = result.maps["xgradcam"][layer]
    assert torch.isfinite(xgrad).all()
    assert min(_correlation(xgrad[i], expected[i]) for i in range(2)) > 0.9
