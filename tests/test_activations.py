"""analysis.activations: hooks capture what the modules output, batching and pooling, data points."""
import pytest
import torch
from torch import nn

from analysis.activations import capture, fixed_inputs, points, to_points
from harness.errors import ConfigError


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(4 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))
        self.probe_layers = ["features.2", "features.3", "classifier.1"]

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def test_capture_matches_direct_forward_in_eval_mode():
    model = Toy().train()
    images = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8)
    transform = lambda x: x.float() / 255 - 0.5  # noqa: E731
    acts = capture(model, model.probe_layers, images, batch_size=5, transform=transform)
    assert model.training  # mode restored
    assert not any(h for m in model.modules() for h in m._forward_hooks.values())  # hooks removed
    model.eval()
    with torch.no_grad():
        x = transform(images)
        relu = model.features[:3](x)
        expected = {"features.2": relu, "features.3": model.features[3](relu),
                    "classifier.1": model.classifier[:2](model.features(x).flatten(1))}
    for name, value in expected.items():
        assert acts[name].shape == value.shape and not acts[name].requires_grad
        torch.testing.assert_close(acts[name], value)


def test_capture_pools_conv_outputs_and_rejects_unknown_layers():
    model = Toy()
    images = torch.rand(6, 3, 8, 8)
    acts = capture(model, ["features.2", "classifier.1"], images, pool_to=2)
    assert acts["features.2"].shape == (6, 4, 2, 2)
    assert acts["classifier.1"].shape == (6, 5)
    with pytest.raises(ValueError, match="no module named"):
        capture(model, ["features.9"], images)


def test_fixed_inputs_first_or_seeded():
    images = torch.arange(100).view(100, 1, 1, 1)
    assert fixed_inputs(images, 5).flatten().tolist() == [0, 1, 2, 3, 4]
    a, b = fixed_inputs(images, 10, seed=3), fixed_inputs(images, 10, seed=3)
    assert torch.equal(a, b) and a.flatten().tolist() == sorted(a.flatten().tolist())
    assert not torch.equal(a, fixed_inputs(images, 10, seed=4))
    assert torch.equal(fixed_inputs(images), images)
    with pytest.raises(ConfigError) as err:
        fixed_inputs(images, 101, split="test")
    assert str(err.value) == "--inputs 101: the test split has only 100 images"


def test_to_points_positions_mean_and_subsample():
    a = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    b = torch.randn(2, 5, 2, 2)
    pa, pb = to_points(a, b, max_points=None)
    assert pa.shape == (8, 3) and pb.shape == (8, 5)  # a pooled to b's 2x2 grid
    pooled = torch.nn.functional.avg_pool2d(a, 2)
    torch.testing.assert_close(pa[1], pooled[0, :, 0, 1])  # row = (image 0, y 0, x 1)
    ma, mb = to_points(a, b, conv="mean")
    torch.testing.assert_close(ma, a.mean(dim=(2, 3)))
    fa, fb = to_points(a, torch.randn(2, 7))
    assert fa.shape == (2, 3) and fb.shape == (2, 7)
    assert points(a, b) == 8 and points(a, a) == 32 and points(a, b, conv="mean") == points(a, fb) == 2
    sa, sb = to_points(a, a, max_points=5, seed=1)
    assert sa.shape == (5, 3) and torch.equal(sa, sb)
    with pytest.raises(ValueError, match="different inputs"):
        to_points(a, torch.randn(3, 5))
