"""analysis.geometry: distances and angles per layer group against direct computation; interpolation."""
import math

import pytest
import torch
from torch import nn

from analysis.evaluation import Batches
from analysis.geometry import distances, group_parameters, interpolate


class Grouped(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.classifier = nn.Linear(6, 3)
        self.layer_groups = {"features": ["features"], "fc_stack": ["classifier"]}

    def forward(self, x):
        return self.classifier(self.features(x))


def test_groups_partition_parameters():
    groups = group_parameters(Grouped(0))
    assert groups["fc_stack"] == ["classifier.weight", "classifier.bias"]
    assert sorted(groups["features"] + groups["fc_stack"]) == sorted(groups["all"])
    assert list(group_parameters(nn.Linear(2, 2))) == ["all"]


def test_distances_and_angles_match_direct_computation():
    a, b = Grouped(0), Grouped(1)
    rows = {r["group"]: r for r in distances(a, a.state_dict(), b.state_dict())}
    wa = torch.cat([p.detach().flatten() for p in a.classifier.parameters()]).double()
    wb = torch.cat([p.detach().flatten() for p in b.classifier.parameters()]).double()
    fc = rows["fc_stack"]
    assert fc["distance"] == pytest.approx(float((wa - wb).norm()))
    cos = float(wa @ wb / (wa.norm() * wb.norm()))
    assert fc["angle_deg"] == pytest.approx(math.degrees(math.acos(cos)))
    total = rows["all"]["distance"] ** 2
    assert total == pytest.approx(rows["features"]["distance"] ** 2 + fc["distance"] ** 2)  # buffers excluded
    same = {r["group"]: r for r in distances(a, a.state_dict(), a.state_dict())}
    assert same["all"]["distance"] == 0 and same["all"]["angle_deg"] == pytest.approx(0.0, abs=1e-5)
    scaled = {k: 2 * v if v.is_floating_point() else v for k, v in a.state_dict().items()}
    assert distances(a, a.state_dict(), scaled)[0]["angle_deg"] == pytest.approx(0.0, abs=1e-5)


def test_interpolation_error_barrier():
    a, b = Grouped(0), Grouped(1)
    g = torch.Generator().manual_seed(0)
    data = Batches(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g), 32)
    rows, error_barrier = interpolate(a, a.state_dict(), b.state_dict(), [0, 0.5, 1], {"test": data}, data)
    assert [r["t"] for r in rows] == [0, 0.5, 1]
    errors = [1 - r["accuracy"] for r in rows]
    assert error_barrier["test"] == pytest.approx(max(errors) - max(errors[0], errors[-1]))
