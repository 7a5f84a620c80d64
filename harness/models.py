"""The studies' models, registered with `harness.registry` like a plug-in's: `build(spec)` is the only way to
make one.

Every model exposes `layer_groups` (name -> module-path prefixes; freezing refers to
them) and `probe_layers` (ordered module paths whose outputs are the "layers" of CCA
heatmaps). Analysis rebuilds models from a checkpoint's `model_spec` through `build`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import ConfigError
from harness.registry import PluginError, register

VGG_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG as in the mode-connectivity code (Garipov et al. 2018): 3-layer FC stack."""

    def __init__(self, depth: int, num_classes: int, bn: bool = False, dropout: float = 0.0, in_channels: int = 3,
                 width: float = 1.0, fc_width: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        probes = []
        c = in_channels
        for v in VGG_CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            v = max(1, round(v * width))
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if bn:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            probes.append(f"features.{len(layers) - 1}")
            c = v
        self.features = nn.Sequential(*layers)
        h = fc_width or max(1, round(512 * width))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c, h), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(h, h), nn.ReLU(),
            nn.Linear(h, num_classes),
        )
        self.layer_groups = {"features": ["features"], "fc_stack": ["classifier"]}
        self.probe_layers = probes + ["classifier.2", "classifier.5", "classifier.6"]

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, affine: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, affine=affine)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, affine=affine)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, affine=affine))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): 3x3 stem, stages of BasicBlocks, global pool, linear.

    `scale_invariant=True` gives the SI ResNet of Kodryan et al. 2022 / Sadrtdinov et al.:
    every conv precedes a BN without affine parameters and the last layer is fixed, so the
    output is unchanged when any trainable weight tensor is rescaled.
    """

    def __init__(self, widths: list[int], blocks: list[int], num_classes: int, in_channels: int = 3,
                 scale_invariant: bool = False):
        super().__init__()
        affine = not scale_invariant
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0], affine=affine), nn.ReLU())
        probes = ["stem"]
        cin = widths[0]
        stages = []
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, affine))
                probes.append(f"layer{i + 1}.{j}")
                cin = w
            stages.append(nn.Sequential(*stage))
        self.stages = len(stages)
        for i, s in enumerate(stages):
            self.add_module(f"layer{i + 1}", s)
        self.fc = nn.Linear(cin, num_classes)
        if scale_invariant:
            self.fc.requires_grad_(False)
        self.layer_groups = {"stem": ["stem"], **{f"layer{i + 1}": [f"layer{i + 1}"] for i in range(self.stages)},
                             "fc": ["fc"]}
        self.probe_layers = probes + ["fc"]

    def forward(self, x):
        x = self.stem(x)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class StudentCNN(nn.Module):
    """Shallow student of the distillation study: [conv, maxpool, relu] x2, fc, relu, fc, fc; `width` scales
    every hidden width (64, 128 channels; 512, 256 units at 1.0)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        c1, c2, h1, h2 = (max(1, round(v * width)) for v in (64, 128, 512, 256))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(c1, c2, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Linear(c2 * 8 * 8, h1), nn.ReLU(), nn.Linear(h1, h2),
                                        nn.Linear(h2, num_classes))
        self.layer_groups = {"features": ["features"], "fc_stack": ["classifier"]}
        self.probe_layers = ["features.2", "features.5", "classifier.1", "classifier.2", "classifier.3"]

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


register.contract("model", lambda e: "a class registered as a model must subclass torch.nn.Module"
                  if isinstance(e.obj, type) and not issubclass(e.obj, nn.Module) else None)


def vgg(depth: int, s: dict) -> VGG:
    return VGG(depth, s["num_classes"], bool(s.get("bn", False)), s.get("dropout", 0.0), s.get("in_channels", 3),
               s.get("width", 1.0), s.get("fc_width"))


def resnet(widths: list[int], blocks: list[int], s: dict, scale_invariant: bool = False) -> ResNet:
    return ResNet([max(1, round(w * s.get("width", 1.0))) for w in widths], blocks, s["num_classes"],
                  s.get("in_channels", 3), scale_invariant)


@register.model("vgg11")
def vgg11(s: dict) -> VGG:
    return vgg(11, s)


@register.model("vgg16")
def vgg16(s: dict) -> VGG:
    return vgg(16, s)


@register.model("resnet18")
def resnet18(s: dict) -> ResNet:
    return resnet([64, 128, 256, 512], [2, 2, 2, 2], s)


@register.model("resnet32")
def resnet32(s: dict) -> ResNet:
    return resnet([16, 32, 64], [5, 5, 5], s)


@register.model("si_resnet18")
def si_resnet18(s: dict) -> ResNet:
    return resnet([64, 128, 256, 512], [2, 2, 2, 2], s, scale_invariant=True)


@register.model("student_cnn")
def student_cnn(s: dict) -> StudentCNN:
    return StudentCNN(s["num_classes"], s.get("in_channels", 3), s.get("width", 1.0))


def he_normal_(model: nn.Module, scale: float = 1.0) -> None:
    """Conv weights ~ N(0, scale * 2 / fan_in) per neuron, biases 0 (closer look, appendix 7).

    Linear layers keep PyTorch's default init, as in the mode-connectivity code the paper
    builds on: with N(0, 2/n) in the FC stack too, VGG-11 without BN diverged within 10
    iterations at the paper's lr 0.05 on CIFAR-10.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(scale * 2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()


def keskar_(model: nn.Module) -> None:
    """The closer-look authors' VGG init (akhileshgotmare/sgdr `vgg.py`, from keskarnitish/large-batch-training):
    conv weights ~ N(0, 2 / (k^2 * out_channels)) (fan-out), every linear weight ~ N(0, 0.01^2), all biases 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, math.sqrt(2.0 / (m.weight[0, 0].numel() * m.out_channels)))
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01)
            else:
                continue
            if m.bias is not None:
                m.bias.zero_()


def build(spec: dict) -> nn.Module:
    """Model from a spec: the model section ({"name", "bn", "init", "init_scale", "dropout", "width", "fc_width",
    and a plug-in model's own options}) plus "num_classes" and "in_channels"; its contract checked (`check_model`)."""
    entry = register.get("model", spec["name"])
    model = entry.obj(spec)
    check_model(model, f"model {entry.name!r} ({entry.module})")
    init, scale = spec.get("init", "he_normal"), spec.get("init_scale", 1.0)
    if init == "he_normal":
        he_normal_(model, scale)
    elif scale != 1.0:
        raise ValueError("model.init_scale needs model.init: he_normal")
    elif init == "keskar":
        keskar_(model)
    return model


def check_model(model: Any, what: str) -> None:
    """The model contract, as a one-line PluginError: an nn.Module whose `layer_groups` (name -> module-path
    prefixes, what freezing and per-group heuristics name) and `probe_layers` (module paths, the layers of CCA
    heatmaps) name modules it has."""
    if not isinstance(model, nn.Module):
        raise PluginError(f"{what}: built a {type(model).__name__}; a model builder must return a torch.nn.Module")
    groups, probes = getattr(model, "layer_groups", None), getattr(model, "probe_layers", None)
    if not isinstance(groups, dict) or not groups or not all(isinstance(v, list) for v in groups.values()):
        raise PluginError(f"{what}: needs `layer_groups`, a non-empty dict of group name -> list of module paths")
    if not isinstance(probes, list) or not probes:
        raise PluginError(f"{what}: needs `probe_layers`, a non-empty list of module paths (the layers CCA compares)")
    paths = {n for n, _ in model.named_modules()}
    missing = [p for p in [q for v in groups.values() for q in v] + probes if p not in paths]
    if missing:
        raise PluginError(f"{what}: layer_groups / probe_layers name {missing[0]!r}, which is no module of it")


def group_params(model: nn.Module, groups: list[str]) -> list[tuple[str, nn.Parameter]]:
    """Named parameters under the given layer groups (or raw module-path prefixes)."""
    prefixes = []
    for g in groups:
        if g in model.layer_groups:
            prefixes += model.layer_groups[g]
        elif any(n == g or n.startswith(g + ".") for n, _ in model.named_modules()):
            prefixes.append(g)
        else:
            raise ConfigError(f"unknown layer group {g!r}; expected one of {sorted(model.layer_groups)} or a module path")
    return [(n, p) for n, p in model.named_parameters() if any(n == q or n.startswith(q + ".") for q in prefixes)]
