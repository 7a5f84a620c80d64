"""analysis.sharpness against the exact Hessian of a tiny MLP (torch.autograd.functional.hessian)."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from analysis.evaluation import Batches, param_vector, unflatten
from analysis.sharpness import hessian_vector_product, hutchinson_trace, top_eigenvalue


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()  # 38 parameters
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(90, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (90,), generator=g)
    return model, Batches(x, y, 32)  # three uneven batches


def exact_hessian(model, data):
    def loss(vector):
        logits = functional_call(model, unflatten(model, vector), (data.inputs,))
        return nn.functional.cross_entropy(logits, data.labels)

    return torch.autograd.functional.hessian(loss, param_vector(model).double())


def test_hvp_equals_exact_hessian_times_vector():
    model, data = tiny_problem()
    h = exact_hessian(model, data)
    v = torch.randn(h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(hessian_vector_product(model, data)(v), h @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalue_matches_eigvalsh(method):
    model, data = tiny_problem()
    exact = torch.linalg.eigvalsh(exact_hessian(model, data))
    assert exact[-1] > abs(exact[0])  # largest magnitude is the top one, so power iteration applies too
    got = top_eigenvalue(model, data, method=method, iters=38 if method == "lanczos" else 500, tol=1e-10)
    assert got == pytest.approx(float(exact[-1]), rel=1e-6)


def test_hutchinson_trace_within_statistical_tolerance():
    model, data = tiny_problem()
    data.batch_size = len(data)  # one batch: the estimator's statistics do not depend on batching
    exact = float(torch.trace(exact_hessian(model, data)))
    mean, stderr = hutchinson_trace(model, data, probes=300, seed=0)
    assert stderr > 0
    assert abs(mean - exact) < 4 * stderr
    assert stderr < 0.2 * abs(exact)


def test_model_left_as_found():
    model, data = tiny_problem()
    model.train()
    before = param_vector(model).clone()
    top_eigenvalue(model, data, iters=5)
    assert model.training
    torch.testing.assert_close(param_vector(model), before)
