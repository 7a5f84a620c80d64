"""analysis.cca against brute-force numpy references written here, plus invariances and errors."""
import numpy as np
import pytest
import torch

from analysis.cca import cca, layer_similarity, linear_cka, mean_cca, minibatch_cka, pwcca, svcca, svd_reduce


def np_cca(x, y):
    """Canonical correlations as sqrt of the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx (Hotelling 1936)."""
    x, y = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    vals, vecs = np.linalg.eig(m)
    order = np.argsort(-vals.real)
    k = min(x.shape[1], y.shape[1])
    return np.sqrt(np.clip(vals.real[order][:k], 0, 1)), vecs.real[:, order][:, :k]


def np_svd_reduce(x, keep=0.99):
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    frac = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.argmax(frac >= keep)) + 1
    return u[:, :k] * s[:k]


def np_pwcca(x, y):
    """Morcos et al. 2018: weights from the canonical variates of the smaller layer."""
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    rho, w = np_cca(x, y)
    xc = x - x.mean(0)
    h = xc @ w
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ xc).sum(1)
    return float((alpha / alpha.sum()) @ rho)


def np_hsic(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h)


def np_cka(x, y):
    k, l = x @ x.T, y @ y.T
    return np_hsic(k, l) / np.sqrt(np_hsic(k, k) * np_hsic(l, l))


def np_hsic_unbiased(k, l):
    """Song et al. 2012, eq. 5, written with explicit sums."""
    n = k.shape[0]
    kt, lt = k * (1 - np.eye(n)), l * (1 - np.eye(n))
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def shared_subspace(n=600, dx=12, dy=9, shared=4, noise=0.3, seed=0):
    """x and y = random mixes of a common latent (shared dims) plus private noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, dx)) + noise * rng.standard_normal((n, dx))
    y = z @ rng.standard_normal((shared, dy)) + noise * rng.standard_normal((n, dy))
    return x, y


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def random_orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def test_cca_matches_eigenproblem_reference():
    x, y = shared_subspace()
    ref, _ = np_cca(x, y)
    got = cca(t(x), t(y)).numpy()
    assert got.shape == (9,)
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_known_shared_subspace_is_recovered():
    x, y = shared_subspace(n=4000, noise=0.05)
    rho = cca(t(x), t(y)).numpy()
    assert (rho[:4] > 0.98).all()  # the 4 shared directions
    assert (rho[4:] < 0.15).all()  # private noise only


def test_svcca_matches_reference():
    x, y = shared_subspace()
    ref = np_cca(np_svd_reduce(x), np_svd_reduce(y))[0].mean()
    assert svcca(t(x), t(y)) == pytest.approx(ref, abs=1e-10)
    assert svd_reduce(t(x)).shape[1] == np_svd_reduce(x).shape[1]


def test_pwcca_matches_reference():
    x, y = shared_subspace()
    assert pwcca(t(x), t(y)) == pytest.approx(np_pwcca(x, y), abs=1e-10)
    assert pwcca(t(y), t(x)) == pytest.approx(np_pwcca(x, y), abs=1e-10)


def test_linear_cka_matches_hsic_with_centering_matrix():
    x, y = shared_subspace(n=300)
    assert linear_cka(t(x), t(y)) == pytest.approx(np_cka(x, y), abs=1e-12)


def test_minibatch_cka_matches_unbiased_hsic_reference():
    x, y = shared_subspace(n=300)
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]
    sums = np.zeros(3)
    for xb, yb in batches:
        k, l = xb @ xb.T, yb @ yb.T
        sums += [np_hsic_unbiased(k, l), np_hsic_unbiased(k, k), np_hsic_unbiased(l, l)]
    ref = sums[0] / np.sqrt(sums[1] * sums[2])
    assert minibatch_cka((t(a), t(b)) for a, b in batches) == pytest.approx(ref, abs=1e-12)
    # one large batch approaches the (biased) full-data linear CKA from below-or-near
    assert minibatch_cka([(t(x), t(y))]) == pytest.approx(np_cka(x, y), abs=0.05)


def halves_cka(a, b):
    return minibatch_cka([(a[:250], b[:250]), (a[250:], b[250:])])


@pytest.mark.parametrize("fn,rotate_smaller", [(mean_cca, True), (svcca, True),
                                               (linear_cka, True), (halves_cka, True), (pwcca, False)])
def test_identity_rotation_and_scale_invariance(fn, rotate_smaller):
    """PWCCA weights individual units of the smaller layer, so only the larger one may be rotated."""
    x, y = shared_subspace(n=500)  # x: 12 units, y: 9 units
    x, y = t(x), t(y)
    assert fn(x, x) == pytest.approx(1.0, abs=1e-9)
    base = fn(x, y)
    y_rot = y @ t(random_orthogonal(y.shape[1], 2)) if rotate_smaller else y
    rotated = fn(0.2 * x @ t(random_orthogonal(x.shape[1], 1)), 3.7 * y_rot)
    assert rotated == pytest.approx(base, abs=1e-9)


def test_float32_path_agrees_with_float64():
    x, y = shared_subspace(n=2000)
    x, y = t(x).float(), t(y).float()
    assert svcca(x, y, dtype=torch.float32) == pytest.approx(svcca(x, y), abs=1e-4)
    assert linear_cka(x, y, dtype=torch.float32) == pytest.approx(linear_cka(x, y), abs=1e-5)


def test_rank_deficient_and_tiny_inputs_raise_clear_errors():
    x, y = shared_subspace(n=100)
    dup = np.concatenate([x, x[:, :1]], axis=1)
    with pytest.raises(ValueError, match="rank-deficient"):
        cca(t(dup), t(y))
    with pytest.raises(ValueError, match="rank-deficient"):
        pwcca(t(np.concatenate([x, np.zeros((100, 1))], 1)), t(y))
    with pytest.raises(ValueError, match="more points than features"):
        cca(t(x[:10]), t(y[:10]))
    with pytest.raises(ValueError, match="more points than features"):
        svcca(t(x[:3]), t(y[:3]))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(50, 4), t(y[:50]))
    with pytest.raises(ValueError, match="constant"):
        svcca(torch.ones(50, 4), t(y[:50]))
    with pytest.raises(ValueError, match=">= 4 points"):
        minibatch_cka([(t(x[:3]), t(y[:3]))])
    with pytest.raises(ValueError, match="NaN"):
        cca(t(x).clone().fill_(float("nan")), t(y))
    # SVD reduction makes the duplicated unit harmless
    assert np.isfinite(svcca(t(dup), t(y)))


def test_layer_similarity_heatmap_over_conv_and_flat_layers():
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(40, 6, 8, 8, generator=g)
    pooled = torch.nn.functional.avg_pool2d(conv, 2)  # same features, coarser grid
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    flat = 2.0 * conv.mean(dim=(2, 3)) @ rotation
    acts = {"c": conv, "p": pooled, "f": flat}
    heat = layer_similarity(acts, acts, measure="cka")
    assert heat.shape == (3, 3)
    torch.testing.assert_close(heat.diagonal(), torch.ones(3, dtype=torch.float64))
    assert heat[0, 1] == pytest.approx(1.0)  # conv pooled to the 4x4 grid of `pooled` is identical
    assert heat[0, 2] == pytest.approx(1.0)  # conv vs flat: spatial mean, then a scaled rotation
    stretched = {"f": conv.mean(dim=(2, 3)) @ torch.randn(6, 6, generator=g)}
    assert layer_similarity({"c": conv}, stretched, measure="cca")[0, 0] == pytest.approx(1.0)
    assert layer_similarity({"c": conv}, stretched, measure="cka")[0, 0] < 0.99
    torch.testing.assert_close(heat, heat.T)


def test_layer_similarity_leaves_rejected_pairs_nan_and_says_why(caplog):
    g = torch.Generator().manual_seed(0)
    live, dead = torch.randn(50, 4, generator=g), torch.zeros(50, 4)
    heat = layer_similarity({"live": live, "dead": dead}, {"live": live}, measure="svcca")
    assert heat[0, 0] == pytest.approx(1.0) and torch.isnan(heat[1, 0])
    assert "dead vs live: constant features" in caplog.text
