"""analysis.connectivity: curve forms, convex segment, ridge toy, BN recomputation along a path."""
import pytest
import torch
from torch import nn

from analysis.connectivity import Curve, barrier, barriers, connect, evaluate_path, train_curve
from analysis.evaluation import Batches, evaluate, param_vector, update_bn


pytestmark = pytest.mark.usefixtures("one_thread")


class RidgeToy(nn.Module):
    """Two-parameter 'classifier' whose margin is high on the unit circle and zero at the origin.

    m(w) = 4 - 4 (|w|^2 - 1)^2 - 0.5 w2^2 + 0.2 w2 has two minima of the loss softplus(-m),
    mirror images under w1 -> -w1; the straight segment between them crosses the origin ridge.
    """

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))

    def forward(self, x):
        r2 = (self.w**2).sum()
        m = 4 - 4 * (r2 - 1) ** 2 - 0.5 * self.w[1] ** 2 + 0.2 * self.w[1]
        return (m * torch.tensor([0.5, -0.5])).expand(x.shape[0], 2)


def ridge_minimum(start):
    toy = RidgeToy(start)
    opt = torch.optim.SGD(toy.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(toy(torch.zeros(1, 1)), torch.zeros(1, dtype=torch.long)).backward()
        opt.step()
    return toy.w.detach().clone()


def test_curve_forms_hit_endpoints_and_bend():
    w0, w1, theta = torch.zeros(3), torch.ones(3), torch.tensor([5.0, 0, 0])
    for kind in ("polychain", "bezier", "segment"):
        c = Curve(w0, w1, kind, theta if kind != "segment" else None)
        torch.testing.assert_close(c(0.0), w0)
        torch.testing.assert_close(c(1.0), w1)
    torch.testing.assert_close(Curve(w0, w1, "polychain", theta)(0.5), theta)
    torch.testing.assert_close(Curve(w0, w1, "bezier", theta)(0.5), 0.25 * w0 + 0.5 * theta + 0.25 * w1)
    torch.testing.assert_close(Curve(w0, w1)(0.5), (w0 + w1) / 2)  # bend starts at the midpoint
    with pytest.raises(ValueError, match="unknown curve"):
        Curve(w0, w1, "spline")


def test_barrier_definition():
    assert barrier([1.0, 3.0, 2.0]) == 1.0
    assert barrier([2.0, 1.0, 0.5]) == 0.0
    rows = [{"t": t, "split": "test", "loss": v, "accuracy": 1 - v / 10} for t, v in [(1, 2.0), (0, 1.0), (0.5, 5.0)]]
    assert barriers(rows) == {"test": 3.0}
    assert barriers(rows, "error")["test"] == pytest.approx(0.3)


def test_convex_problem_segment_has_no_barrier():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 5, generator=g), torch.randint(0, 3, (200,), generator=g)
    model = nn.Linear(5, 3)  # cross-entropy of a linear model is convex in its weights
    w0, w1 = 3 * torch.randn(18, generator=g), 3 * torch.randn(18, generator=g)
    rows = evaluate_path(model, Curve(w0, w1, "segment"), torch.linspace(0, 1, 21).tolist(),
                         {"train": Batches(x, y, 64)}, None)
    losses = [r["loss"] for r in rows]
    assert barrier(losses) == pytest.approx(0.0, abs=1e-6)
    assert max(losses) - min(losses) > 0.1  # the path is not flat: the test has teeth


@pytest.mark.parametrize("kind", ["polychain", "bezier"])
def test_ridge_toy_segment_has_barrier_trained_curve_goes_around(kind):
    w0, w1 = ridge_minimum([-1.0, 0.0]), ridge_minimum([1.0, 0.0])
    assert torch.allclose(w0 * torch.tensor([-1.0, 1.0]), w1, atol=1e-4)  # mirror-image minima
    model = RidgeToy([0.0, 0.0])
    data = {"train": Batches(torch.zeros(8, 1), torch.zeros(8, dtype=torch.long), 8)}
    ts = torch.linspace(0, 1, 41).tolist()
    segment = barriers(evaluate_path(model, Curve(w0, w1, "segment"), ts, data, None))["train"]
    curve = Curve(w0, w1, kind)
    losses = train_curve(model, curve, data["train"], 200, torch.optim.SGD([curve.theta], lr=0.03, momentum=0.9))
    around = barriers(evaluate_path(model, curve, ts, data, None))["train"]
    assert segment > 0.5
    assert around < 0.1 * segment
    assert losses[-1] < losses[0]
    assert float(curve.theta.detach().norm()) > 0.7  # the bend moved from the origin out to the circle
    torch.testing.assert_close(model.w.detach(), torch.zeros(2))  # the model's own weights are untouched


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_update_bn_is_exact_cumulative_average():
    model = bn_net()
    g = torch.Generator().manual_seed(1)
    x = 2 + 3 * torch.randn(300, 4, generator=g)
    update_bn(model, Batches(x, torch.zeros(300, dtype=torch.long), 128))  # uneven last batch of 44
    with torch.no_grad():
        pre = model[0](x)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, pre.mean(0), rtol=1e-5, atol=1e-5)
    chunks = pre.split(128)  # variance: per-batch unbiased variances, weighted by batch size
    expected_var = sum(len(c) * c.var(0) for c in chunks) / len(pre)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-4, atol=1e-4)
    assert bn.momentum == 0.1 and model.training  # settings and mode restored


def two_bn_nets_and_data(n: int, batch_size: int, seed: int):
    """bn_net and a randomly shifted copy, and n random 3-class examples."""
    g = torch.Generator().manual_seed(seed)
    data = Batches(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g), batch_size)
    a, b = bn_net(), bn_net()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return a, b, data


def test_evaluate_path_recomputes_bn_at_every_point():
    a, b, train = two_bn_nets_and_data(256, 64, seed=2)
    w0, w1 = param_vector(a), param_vector(b)
    rows = evaluate_path(a, Curve(w0, w1, "segment"), [0.0, 1.0], {"train": train}, train)
    for model, row in zip((a, b), rows):
        update_bn(model, train)
        assert row["loss"] == pytest.approx(evaluate(model, train)["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="BatchNorm"):
        evaluate_path(a, Curve(w0, w1, "segment"), [0.5], {"train": train}, None)


def test_connect_rows_barriers_and_bend():
    """Segment then curve rows per evaluated epoch, their barriers, and the returned model holding the bend."""
    a, b, data = two_bn_nets_and_data(96, 32, seed=3)
    w0, w1 = param_vector(a), param_vector(b)
    rows, bars, model = connect(a, a.state_dict(), b.state_dict(), {"train": data}, data, "bezier", (2, 1), 3,
                                lr=0.01)
    assert list(dict.fromkeys(zip(rows.path, rows.curve_epoch))) == [("segment", 0), ("bezier", 1), ("bezier", 2)]
    for (path, epoch), part in rows.groupby(["path", "curve_epoch"]):
        bar = bars[(bars.path == path) & (bars.curve_epoch == epoch)].iloc[0]
        assert bar.loss_barrier == barriers(part.to_dict("records"))["train"]
        assert bar.error_barrier == barriers(part.to_dict("records"), "error")["train"]
    bezier = Curve(w0, w1, "bezier", param_vector(model))
    final = rows[(rows.path == "bezier") & (rows.curve_epoch == 2)]
    again = evaluate_path(bn_net(), bezier, final.t.tolist(), {"train": data}, data)
    assert final.loss.tolist() == pytest.approx([r["loss"] for r in again], rel=1e-5)
