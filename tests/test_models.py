import math

import pytest
import torch
import torch.nn.functional as F

from harness import data
from harness.errors import ConfigError
from harness.models import build, group_params
from harness.registry import BUILTIN

NAMES = sorted(BUILTIN["model"])


@pytest.fixture(scope="module")
def cifar_batch():
    from conftest import CIFAR

    ds = data.load({"name": "parquet", "root": str(CIFAR), "train_subset": 32, "test_subset": 10})
    return ds.normalize(ds.train.images), ds.train.labels


@pytest.mark.parametrize("name", NAMES)
def test_groups_and_probes_name_real_modules(name):
    m = build({"name": name, "num_classes": 10})
    modules = dict(m.named_modules())
    assert all(p in modules for p in m.probe_layers)
    for g in m.layer_groups:
        assert group_params(m, [g]) or name == "si_resnet18" and g == "fc"
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_model_loss_falls_on_real_cifar(name, cifar_batch):
    """At width 1/4 (the layers and their wiring are those of width 1, as test_groups_and_probes checks above)."""
    torch.manual_seed(0)
    x, y = cifar_batch
    m = build({"name": name, "num_classes": 10, "bn": True, "width": 0.25})
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05 if "resnet" in name else 0.01,
                          momentum=0.9)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_he_normal_variance_and_scale():
    torch.manual_seed(0)
    for scale in (1.0, 3.0):
        m = build({"name": "vgg16", "num_classes": 10, "init_scale": scale})
        w = m.features[2].weight  # second conv of VGG-16: 64 -> 64, fan_in 576
        assert w.var().item() == pytest.approx(scale * 2 / 576, rel=0.05)
        assert m.features[2].bias.abs().sum() == 0
    # the FC stack keeps PyTorch's default init, bounded by 1/sqrt(fan_in)
    assert m.classifier[1].weight.abs().max() <= 1 / math.sqrt(512)


def test_unknown_group_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown layer group 'fc_stak'"):
        group_params(build({"name": "vgg11", "num_classes": 10}), ["fc_stak"])


def test_module_path_works_as_group():
    m = build({"name": "vgg11", "num_classes": 10})
    names = [n for n, _ in group_params(m, ["classifier.6"])]
    assert names == ["classifier.6.weight", "classifier.6.bias"]


def test_si_resnet18_output_invariant_to_scaling_any_trainable_weight():
    torch.manual_seed(0)
    m = build({"name": "si_resnet18", "num_classes": 10}).eval()
    x = torch.randn(4, 3, 32, 32)
    # BN in train mode normalises by batch statistics, which is where scale invariance holds
    m.train()
    ref = m(x).detach()
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("conv" in n or "shortcut.0" in n or n == "stem.0.weight" for n, _ in trainable)
    for n, p in trainable[::3]:
        with torch.no_grad():
            p.mul_(7.5)
        out = m(x).detach()
        with torch.no_grad():
            p.div_(7.5)
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), n
    assert not any(p.requires_grad for p in m.fc.parameters())


def test_resnet_is_not_scale_invariant_in_its_last_layer():
    m = build({"name": "resnet18", "num_classes": 10}).train()
    x = torch.randn(4, 3, 32, 32)
    ref = m(x).detach()
    with torch.no_grad():
        m.fc.weight.mul_(2)
    assert not torch.allclose(m(x), ref)
