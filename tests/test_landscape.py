"""analysis.landscape: plane geometry against numpy least squares, grid evaluation."""
import numpy as np
import pytest
import torch
from torch import nn

from analysis.evaluation import Batches, evaluate, load_vector, param_vector, update_bn
from analysis.landscape import Plane, evaluate_plane, grid_axes, plane


def three_points(d=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3)]


def test_plane_contains_its_points_and_axes_are_orthonormal():
    w0, w1, w2 = three_points()
    plane = Plane.through(w0, w1, w2)
    assert float(plane.e1 @ plane.e2) == pytest.approx(0.0, abs=1e-12)
    assert float(plane.e1.norm()) == pytest.approx(1.0) and float(plane.e2.norm()) == pytest.approx(1.0)
    for w in (w0, w1, w2):
        x, y, residual = plane.project(w)
        assert residual == pytest.approx(0.0, abs=1e-10)
        torch.testing.assert_close(plane.point(x, y), w)
    x1, y1, _ = plane.project(w1)
    assert (x1, y1) == pytest.approx((float((w1 - w0).norm()), 0.0), abs=1e-10)


def test_projection_matches_numpy_least_squares():
    w0, w1, w2 = three_points()
    other = torch.randn(50, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    basis = torch.stack([w1 - w0, w2 - w0], 1).numpy()
    coef, residual, *_ = np.linalg.lstsq(basis, (other - w0).numpy(), rcond=None)
    plane = Plane.through(w0, w1, w2)
    x, y, dist = plane.project(other)
    np.testing.assert_allclose(plane.point(x, y).numpy(), w0.numpy() + basis @ coef, atol=1e-10)
    assert dist == pytest.approx(float(np.sqrt(residual[0])), abs=1e-10)


def test_degenerate_planes_raise():
    w0, w1, _ = three_points()
    with pytest.raises(ValueError, match="collinear"):
        Plane.through(w0, w1, 2 * w1 - w0)
    with pytest.raises(ValueError, match="coincide"):
        Plane.through(w0, w0, w1)


def test_grid_axes_cover_points_with_margin():
    xs, ys = grid_axes([(0.0, 0.0), (10.0, 0.0), (4.0, 5.0)], points=11, margin=0.1)
    assert (xs[0], xs[-1], ys[0], ys[-1]) == pytest.approx((-1.0, 11.0, -0.5, 5.5))
    assert len(xs) == len(ys) == 11


def test_evaluate_plane_matches_direct_evaluation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    data = Batches(torch.randn(128, 4, generator=g), torch.randint(0, 3, (128,), generator=g), 32)
    w0 = param_vector(model)
    w1, w2 = w0 + torch.randn(w0.shape, generator=g), w0 + torch.randn(w0.shape, generator=g)
    plane = Plane.through(w0, w1, w2)
    x1, y1, _ = plane.project(w1)
    rows = evaluate_plane(model, plane, [0.0, x1], [0.0, y1], {"train": data}, data)
    assert [(r["x"], r["y"]) for r in rows] == [(0.0, 0.0), (0.0, y1), (x1, 0.0), (x1, y1)]
    load_vector(model, w1)
    update_bn(model, data)
    assert rows[2]["loss"] == pytest.approx(evaluate(model, data)["loss"], rel=1e-5)


def test_points_evaluated_as_a_stack_match_one_at_a_time():
    """evaluate_points with 3 models per pass (chunks of 3 and 2) vs one at a time vs update_bn + evaluate."""
    from analysis.evaluation import evaluate_points

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.0), nn.Linear(4 * 8 * 8, 3))
    g = torch.Generator().manual_seed(1)
    data = Batches(torch.randn(100, 3, 8, 8, generator=g), torch.randint(0, 3, (100,), generator=g), 32)
    w0 = param_vector(model)
    vectors = [w0 + 0.3 * torch.randn(w0.shape, generator=g) for _ in range(5)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stacked = evaluate_points(model, iter(vectors), {"train": data, "test": data.head(50)}, data, stack=3)
    single = evaluate_points(model, vectors, {"train": data, "test": data.head(50)}, data, stack=1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and model.training
    for a, b, w in zip(stacked, single, vectors):
        assert [r["split"] for r in a] == ["train", "test"]
        for ra, rb in zip(a, b):
            assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5) and ra["accuracy"] == rb["accuracy"]
        load_vector(model, w)
        update_bn(model, data)
        ref = evaluate(model, data)
        assert a[0]["loss"] == pytest.approx(ref["loss"], rel=1e-5) and a[0]["accuracy"] == ref["accuracy"]


def test_plane_through_three_states_projects_the_rest():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)) for _ in range(4)]
    states = {f"t/{i}": m.state_dict() for i, m in enumerate(nets)}
    g = torch.Generator().manual_seed(1)
    data = Batches(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g), 32)
    rows, points = plane(nets[0], states, {"train": data, "test": data}, data, grid=3, margin=0.0)
    assert points.label.tolist() == list(states) and len(rows) == 3 * 3 * 2
    assert points.residual.iloc[:3].abs().max() < 1e-6 and points.residual.iloc[3] > 0
    assert (points.x.iloc[0], points.y.iloc[0]) == (0.0, 0.0)
    assert sorted(set(rows.x)) == pytest.approx([points.x.min(), (points.x.min() + points.x.max()) / 2,
                                                 points.x.max()])
    with pytest.raises(ValueError, match="three checkpoints"):
        plane(nets[0], dict(list(states.items())[:2]), {"train": data}, data)
