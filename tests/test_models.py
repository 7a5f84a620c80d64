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


def test_keskar_init_draws_the_authors_distributions():
    """keskarnitish/large-batch-training's VGG init: every conv N(0, 2 / (k^2 out_channels)), every linear N(0, 0.01^2),
    biases 0. Each tensor's standardised weights pass a Kolmogorov-Smirnov test against N(0, 1) (an independent
    reference: scipy's normal CDF), and its sample std is within 5 standard errors of the target."""
    from scipy import stats

    torch.manual_seed(0)
    m = build({"name": "vgg11", "num_classes": 10, "init": "keskar", "dropout": 0.5, "fc_width": 4096})
    layers = [x for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [x.out_features for x in layers if isinstance(x, torch.nn.Linear)] == [4096, 4096, 10]
    assert sum(isinstance(x, torch.nn.Dropout) and x.p == 0.5 for x in m.classifier) == 2
    for x in layers:
        w = x.weight.detach().double().flatten()
        std = math.sqrt(2 / (9 * x.out_channels)) if isinstance(x, torch.nn.Conv2d) else 0.01
        assert abs(w.std().item() - std) < 5 * std / math.sqrt(2 * len(w)), x
        sample = (w[:: max(1, len(w) // 20000)] / std).numpy()
        assert stats.kstest(sample, "norm").pvalue > 1e-4, x
        assert x.bias.abs().sum() == 0
    he = build({"name": "vgg11", "num_classes": 10})  # he_normal is fan-in: the first conv differs by 64 / 27
    assert he.features[0].weight.std().item() == pytest.approx(math.sqrt(2 / 27), rel=0.1)
    assert m.features[0].weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.1)


def test_init_scale_needs_he_normal():
    with pytest.raises(ValueError, match="init_scale needs model.init: he_normal"):
        build({"name": "vgg11", "num_classes": 10, "init": "keskar", "init_scale": 3.0})


def test_synchronised_bn_is_plain_bn_in_one_process_with_the_same_state_dict():
    from harness.sync_bn import SyncBatchNorm2d, has_batchnorm, synchronise

    torch.manual_seed(0)
    plain = build({"name": "resnet32", "num_classes": 10, "width": 0.25})
    sync = synchronise(build({"name": "resnet32", "num_classes": 10, "width": 0.25}))
    sync.load_state_dict(plain.state_dict())
    assert list(sync.state_dict()) == list(plain.state_dict()) and has_batchnorm(sync)
    assert sum(isinstance(m, SyncBatchNorm2d) for m in sync.modules()) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    x = torch.randn(8, 3, 32, 32)
    assert torch.equal(sync(x), plain(x)) and torch.equal(sync.stem[1].running_var, plain.stem[1].running_var)
    assert not has_batchnorm(build({"name": "student_cnn", "num_classes": 10}))
