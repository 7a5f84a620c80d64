import torch

from harness import optim
from harness.config import OptimCfg
from harness.models import build


def test_sphere_sgd_keeps_unit_norm_and_moves():
    torch.manual_seed(0)
    model = build({"name": "si_resnet18", "num_classes": 10})
    opt = optim.build(OptimCfg(name="sphere_sgd", lr=0.1), model)
    params = [p for p in model.parameters() if p.requires_grad]
    norm = lambda: torch.linalg.vector_norm(torch.cat([p.detach().double().flatten() for p in params])).item()
    assert abs(norm() - 1) < 1e-6
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = torch.cat([p.detach().flatten() for p in params]).clone()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert abs(norm() - 1) < 1e-5
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in params]))


def test_sphere_step_is_tangent_then_retracted():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = optim.SphereSGD([w], lr=0.5)
    assert torch.allclose(w.detach(), torch.tensor([0.6, 0.8]))
    w.grad = torch.tensor([1.0, 0.0])
    opt.step()
    g_t = torch.tensor([1.0, 0.0]) - 0.6 * torch.tensor([0.6, 0.8])  # tangent part of the gradient
    expect = torch.tensor([0.6, 0.8]) - 0.5 * g_t
    assert torch.allclose(w.detach(), expect / expect.norm(), atol=1e-6)


def test_gi_adam_initialises_second_moment_from_first_gradient():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = optim.GIAdam([w], lr=0.1, betas=(0.9, 0.999), eps=0.0)
    w.grad = torch.tensor([0.5, -4.0])
    opt.step()
    # v1 = g^2 (v0 = g^2), m_hat = g, so the first step is lr * sign(g)
    assert torch.allclose(w.detach(), torch.tensor([0.9, -1.9]))
    assert torch.allclose(opt.state[w]["v"], torch.tensor([0.25, 16.0]))


def test_adam_and_sgd_built_with_config_values():
    m = torch.nn.Linear(3, 2)
    sgd = optim.build(OptimCfg(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-3), m)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 5e-3
    adam = optim.build(OptimCfg(name="adam", lr=1e-3), m)
    assert isinstance(adam, torch.optim.Adam)
    optim.set_lr(adam, 0.5)
    assert adam.param_groups[0]["lr"] == 0.5
