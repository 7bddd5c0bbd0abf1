"""Guided backprop: hand-computed rules per activation, pitfalls, and captum as a reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from camcli.methods.forward import explain_batch
from camcli.methods.guided import GuidedActivations

from .conftest import reference_copy as _reference_copy


def _derivative(name: str, z: torch.Tensor) -> torch.Tensor:
    """Activation derivatives written out by hand (no autograd)."""
    if name == "relu":
        return (z > 0).float()
    if name == "relu6":
        return ((z > 0) & (z < 6)).float()
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if name == "gelu":
        phi = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * phi
    raise ValueError(name)


_MODULES = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,
}
_FUNCTIONS = {
    "relu": lambda t: F.relu(t, inplace=True),
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
}


class TwoLayer(nn.Module):
    """x (N,1,2,2) -> [feat] -> flatten -> W1 -> act -> W2 -> logits."""

    def __init__(self, act: nn.Module | None = None, fn=None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Identity()
        self.l1 = nn.Linear(4, 6, bias=False)
        self.act = act
        self.fn = fn
        self.l2 = nn.Linear(6, 3, bias=False)
        with torch.no_grad():
            self.l1.weight.mul_(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.l1(torch.flatten(self.feat(x), 1))
        h = self.act(z) if self.act is not None else self.fn(z)
        return self.l2(h)


@pytest.mark.parametrize("name", ["relu", "relu6", "silu", "gelu"])
@pytest.mark.parametrize("form", ["module", "functional"])
def test_guided_rule_matches_hand_formula(name: str, form: str):
    model = TwoLayer(act=_MODULES[name]()) if form == "module" else TwoLayer(fn=_FUNCTIONS[name])
    x = torch.randn(5, 1, 2, 2) * 2
    targets = torch.tensor([0, 1, 2, 1, 0])
    result = explain_batch(model, x, "feat", targets, guided=True)
    w1, w2 = model.l1.weight.detach(), model.l2.weight.detach()
    z = torch.flatten(x, 1) @ w1.T
    g_h = w2[targets]  # d logit_c / d h
    g_z = g_h.clamp(min=0) * _derivative(name, z)
    expected = (g_z @ w1).view_as(x)
    torch.testing.assert_close(result.guided, expected, rtol=1e-5, atol=1e-6)
    key = "hardtanh" if (name == "relu6" and form == "module") else name
    assert result.guided_calls == {key: 1}
    # The Grad-CAM path at 'feat' used the ordinary gradient: W1^T (g_h * f'(z)).
    ordinary = ((g_h * _derivative(name, z)) @ w1).view_as(x)
    expected_cam = (ordinary.mean(dim=(2, 3), keepdim=True) * x).sum(1).clamp(min=0)
    torch.testing.assert_close(result.cams["feat"], expected_cam, rtol=1e-5, atol=1e-6)


class ReusedRelu(nn.Module):
    """One ReLU module called three times per forward, as in torchvision's Bottleneck."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.r2 = self.relu if shared else nn.ReLU(inplace=True)
        self.r3 = self.relu if shared else nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.c1(x))
        y = self.r2(self.c2(y))
        y = self.r3(self.c3(y))
        return self.fc(y.mean(dim=(2, 3)))


def test_relu_module_used_several_times_per_forward():
    shared, separate = ReusedRelu(shared=True), ReusedRelu(shared=False)
    x = torch.randn(3, 3, 8, 8)
    targets = torch.tensor([0, 4, 2])
    a = explain_batch(shared, x, "c2", targets)
    b = explain_batch(separate, x, "c2", targets)
    torch.testing.assert_close(a.guided, b.guided)
    torch.testing.assert_close(a.cams["c2"], b.cams["c2"])
    assert a.guided_calls == {"relu": 3}


def test_guided_rules_do_not_leak_into_gradcam():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()  # ReLUs in the classifier
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([3, 7])
    with_guided = explain_batch(model, x, "features.18", targets, guided=True)
    without = explain_batch(model, x, "features.18", targets, guided=False)
    torch.testing.assert_close(with_guided.cams["features.18"], without.cams["features.18"])
    # ...while a guided gradient at the layer would differ: check that the test can fail.
    mode = GuidedActivations()
    with torch.enable_grad(), mode:
        xx = x.clone().requires_grad_(True)
        logits = model(xx)
    mode.rule.guided = True
    guided_input = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xx)[0]
    assert not torch.allclose(guided_input, torch.zeros_like(guided_input))


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


@pytest.mark.parametrize(("arch", "layer"), [("vgg11", "features.18"), ("resnet18", "layer4")])
def test_guided_and_gradcam_agree_with_captum(arch: str, layer: str):
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([1, 500, 999])
    ours = explain_batch(model, x, layer, targets)
    ref = _reference_copy(model)
    theirs = captum_attr.GuidedBackprop(ref).attribute(x, target=targets)
    torch.testing.assert_close(ours.guided, theirs, rtol=1e-4, atol=1e-6)
    cam = captum_attr.LayerGradCam(ref, ref.get_submodule(layer)).attribute(
        x, target=targets, relu_attributions=True
    )[:, 0]
    torch.testing.assert_close(ours.cams[layer], cam, rtol=1e-4, atol=1e-6)
    for i in range(3):
        assert _correlation(ours.guided[i], theirs[i]) > 0.9999


def test_densenet_final_functional_relu_is_guided():
    """torchvision's DenseNet ends with F.relu: captum misses it, camcli must not."""
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([10, 20])
    ours = explain_batch(model, x, "features.norm5", targets)
    # The same function with the final ReLU as a module, which captum does see.
    explicit = _reference_copy(
        nn.Sequential(
            model.features,
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            model.classifier,
        )
    )
    theirs = captum_attr.GuidedBackprop(explicit).attribute(x, target=targets)
    torch.testing.assert_close(ours.guided, theirs, rtol=1e-4, atol=1e-6)
    on_original = captum_attr.GuidedBackprop(_reference_copy(model)).attribute(x, target=targets)
    assert not torch.allclose(on_original, theirs, rtol=1e-3), "captum misses the F.relu"
    assert ours.guided_calls["relu"] == 121  # 120 modules + the functional one


def test_efficientnet_lite0_relu6_is_guided_and_recorded():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    result = explain_batch(model, x, "bn2", torch.tensor([1, 2]))
    assert result.guided_calls == {"hardtanh": 33}  # every ReLU6 of the network
    assert result.guided is not None and torch.isfinite(result.guided).all()


def test_gating_activations_keep_the_normal_rule_and_are_counted():
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.feat = nn.Identity()
            self.gate = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = torch.flatten(self.feat(x), 1)
            return self.head(v * torch.sigmoid(self.gate(v)))

    result = explain_batch(SE(), torch.randn(2, 1, 2, 2), "feat", torch.tensor([0, 1]))
    assert result.unchanged_calls == {"sigmoid": 1}
    assert result.guided_calls == {}


def test_builtin_activation_keeps_its_arguments_under_guided_mode():
    """nn.GELU(approximate='tanh') calls the builtin F.gelu with a keyword: it must survive."""
    model = TwoLayer(act=nn.GELU(approximate="tanh"))
    x = torch.randn(3, 1, 2, 2)
    with torch.no_grad():
        expected = model(x)
    result = explain_batch(model, x, "feat", torch.tensor([0, 1, 2]))
    torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-7)
    assert result.guided_calls == {"gelu": 1}
