import numpy as np
import torch

from harness.distill import kd_loss


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_kd_loss_matches_hand_computed_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    T = 5.0
    p, q = np_softmax(t.numpy() / T), np_softmax(s.numpy() / T)
    kl = (p * (np.log(p) - np.log(q))).sum(1).mean() * T * T
    assert abs(kd_loss(s, t, y, T, 1.0).item() - kl) < 1e-12
    ls = s.numpy() - s.numpy().max(1, keepdims=True)
    ce = -(ls - np.log(np.exp(ls).sum(1, keepdims=True)))[np.arange(6), y.numpy()].mean()
    assert abs(kd_loss(s, t, y, T, 0.3).item() - (0.3 * kl + 0.7 * ce)) < 1e-12


def test_kd_loss_zero_when_student_equals_teacher():
    z = torch.randn(4, 10)
    assert kd_loss(z, z.clone(), torch.zeros(4, dtype=torch.long), 5.0, 1.0).abs().item() < 1e-6
