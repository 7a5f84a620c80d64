"""analysis.geometry: distances and angles per layer group against direct computation; interpolation."""
import math

import pytest
import torch
from torch import nn

from analysis.evaluation import Batches
from analysis.geometry import distances, geometry, group_parameters, interpolate, segments


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


def test_geometry_and_segments_per_pair():
    states = {f"t/{s}": Grouped(s).state_dict() for s in range(3)}
    model = Grouped(0)
    rows = geometry(model, states, "consecutive")
    assert list(rows.columns[:3]) == ["ckpt_a", "ckpt_b", "group"]
    pair = rows[(rows.ckpt_a == "t/1") & (rows.ckpt_b == "t/2")]
    assert pair.drop(columns=["ckpt_a", "ckpt_b"]).to_dict("records") == distances(model, states["t/1"], states["t/2"])
    assert set(zip(geometry(model, states, "first").ckpt_a, geometry(model, states, "first").ckpt_b)) == \
        {("t/0", "t/1"), ("t/0", "t/2")}
    g = torch.Generator().manual_seed(0)
    data = Batches(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g), 32)
    along, bars = segments(model, states, {"test": data}, data, "all", t_points=3)
    assert len(along) == 3 * 3 and len(bars) == 3
    _, expected = interpolate(model, states["t/0"], states["t/2"], [0, 0.5, 1], {"test": data}, data)
    assert bars[(bars.ckpt_a == "t/0") & (bars.ckpt_b == "t/2")].error_barrier.item() == expected["test"]
    with pytest.raises(ValueError, match="at least two"):
        geometry(model, {"t/0": states["t/0"]})
