"""analysis.cca against brute-force numpy references written here, plus invariances, noise floors and errors."""
import pandas as pd
import logging
import math

import numpy as np
import pytest
import torch

from analysis.cca import (cca, cca_rows, debiased_cka, layer_similarity, linear_cka, mean_cca, minibatch_cka,
                          pair_similarity, pwcca, svcca, svd_reduce)

COLUMNS = ["layer_a", "layer_b", "index_a", "index_b", "similarity", "n", "d_a", "d_b", "underdetermined",
           "null_mean", "null_max"]


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


def heat(rows):
    return torch.tensor(rows.pivot(index="index_a", columns="index_b", values="similarity").values)


def test_layer_similarity_heatmap_over_conv_and_flat_layers():
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(400, 6, 8, 8, generator=g)
    pooled = torch.nn.functional.avg_pool2d(conv, 2)  # same features, coarser grid
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    flat = 2.0 * conv.mean(dim=(2, 3)) @ rotation
    acts = {"c": conv, "p": pooled, "f": flat}
    rows = layer_similarity(acts, acts, measure="cka")
    h = heat(rows)
    assert h.shape == (3, 3)
    assert set(rows.n) == {400}  # conv-conv pairs (400 x 16 or 64 positions) subsampled to the flat pairs' n
    torch.testing.assert_close(h.diagonal(), torch.ones(3, dtype=torch.float64))
    assert h[0, 1] == pytest.approx(1.0)  # conv pooled to the 4x4 grid of `pooled` is identical
    assert h[0, 2] == pytest.approx(1.0)  # conv vs flat: spatial mean, then a scaled rotation
    stretched = {"f": conv.mean(dim=(2, 3)) @ torch.randn(6, 6, generator=g)}
    assert heat(layer_similarity({"c": conv}, stretched, measure="cca"))[0, 0] == pytest.approx(1.0)
    assert heat(layer_similarity({"c": conv}, stretched, measure="cka"))[0, 0] < 0.99
    torch.testing.assert_close(h, h.T)
    conv_only = layer_similarity({"c": conv}, {"p": pooled}, max_points=1000)
    assert conv_only.n.item() == 1000 and conv_only.similarity.item() == pytest.approx(1.0)


def test_layer_similarity_leaves_rejected_pairs_nan_and_says_why(caplog):
    g = torch.Generator().manual_seed(0)
    live, dead = torch.randn(100, 4, generator=g), torch.zeros(100, 4)
    rows = layer_similarity({"live": live, "dead": dead}, {"live": live}, measure="svcca")
    assert rows.similarity[0] == pytest.approx(1.0) and math.isnan(rows.similarity[1])
    assert math.isnan(rows.null_mean[1]) and rows.d_a[1] == 4  # widths before the failed reduction
    assert "dead vs live: constant features" in caplog.text


def test_cca_rows_are_the_rows_of_the_captured_layers():
    from analysis.activations import capture

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    b = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh())
    a.probe_layers = ["0", "2"]
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    rows = cca_rows(a, b, x, batch_size=64, layers_b=["0", "1"], measure="cka")
    ref = layer_similarity(capture(a, ["0", "2"], x), capture(b, ["0", "1"], x), measure="cka")
    assert list(rows.columns) == COLUMNS
    assert list(zip(rows.layer_a, rows.layer_b)) == [("0", "0"), ("0", "1"), ("2", "0"), ("2", "1")]
    assert rows.to_dict("records") == ref.to_dict("records")
    assert rows.n.tolist() == [200] * 4 and rows.d_a.tolist() == [8, 8, 4, 4] and rows.d_b.tolist() == [6, 6] * 2
    assert (rows.null_max >= rows.null_mean).all() and (rows.null_mean < rows.similarity).all()


def pillai_sd(n, dx, dy):
    """Standard deviation of the mean squared canonical correlation of independent Gaussians: Pillai's trace V
    (sum of the p = min(dx, dy) squared correlations) has variance 2 p q (m-p)(m-q) / (m^2 (m-1)(m+2)),
    q = max(dx, dy), m = n - 1 degrees of freedom after centring (Anderson 2003, sec. 8.6)."""
    m, p, q = n - 1, min(dx, dy), max(dx, dy)
    return math.sqrt(2 * p * q * (m - p) * (m - q) / (m**2 * (m - 1) * (m + 2))) / p


@pytest.mark.parametrize("n,dx,dy", [(130, 64, 64), (200, 64, 64), (1000, 64, 64), (400, 16, 48)])
def test_null_of_independent_gaussians_is_d_over_n(n, dx, dy):
    """For independent data E[tr(Px Py)] = tr(Px) q / m (Py projects on a uniformly random q-dim subspace of the
    m = n - 1 centred dimensions), so E[mean rho^2] = max(dx, dy) / (n - 1) exactly. Tolerance: 4 sd of one
    draw (pillai_sd; the mean of 3 permutations only spreads less)."""
    g = torch.Generator().manual_seed(n + dx)
    x, y = torch.randn(n, dx, generator=g, dtype=torch.float64), torch.randn(n, dy, generator=g, dtype=torch.float64)
    theory, tol = max(dx, dy) / (n - 1), 4 * pillai_sd(n, dx, dy)
    row = pair_similarity(x, y, "cca_r2", permutations=3, seed=1)
    assert row["null_mean"] == pytest.approx(theory, abs=tol)
    assert row["similarity"] == pytest.approx(theory, abs=tol)  # independent already: the null is what it measures
    assert row["null_mean"] <= row["null_max"] <= theory + 2 * tol
    assert (row["n"], row["d_a"], row["d_b"]) == (n, dx, dy)


def test_null_is_far_below_a_real_shared_subspace_and_seeded():
    x, y = shared_subspace(n=1000, noise=0.1)
    row = pair_similarity(t(x), t(y), "svcca", permutations=4, seed=3)
    assert row["similarity"] > 0.5 > 0.1 > row["null_max"] >= row["null_mean"] > 0
    assert row == pair_similarity(t(x), t(y), "svcca", permutations=4, seed=3)
    assert row["null_mean"] != pair_similarity(t(x), t(y), "svcca", permutations=4, seed=4)["null_mean"]
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(3))
    first = pair_similarity(t(x), t(y), "svcca", permutations=1, seed=3)
    assert first["null_mean"] == pytest.approx(svcca(t(x), t(y)[perm]), abs=1e-10)


def test_debiased_cka_is_unbiased_hsic_and_near_zero_for_independent_data():
    x, y = shared_subspace(n=80)
    k, l = x @ x.T, y @ y.T  # uncentred: the unbiased estimator does not need centring
    ref = np_hsic_unbiased(k, l) / np.sqrt(np_hsic_unbiased(k, k) * np_hsic_unbiased(l, l))
    assert debiased_cka(t(x), t(y)) == pytest.approx(ref, abs=1e-12)
    wide = np.concatenate([x, np.random.default_rng(5).standard_normal((80, 200))], 1)  # more features than points
    k = wide @ wide.T
    ref = np_hsic_unbiased(k, l) / np.sqrt(np_hsic_unbiased(k, k) * np_hsic_unbiased(l, l))
    assert debiased_cka(t(wide), t(y)) == pytest.approx(ref, abs=1e-12)
    for seed in range(5):  # n = 130 points, 64 + 64 independent features
        g = torch.Generator().manual_seed(seed)
        a, b = (torch.randn(130, 64, generator=g, dtype=torch.float64) for _ in range(2))
        assert linear_cka(a, b) > 0.3  # biased: about d / n
        assert abs(debiased_cka(a, b)) < 0.03  # 0 in expectation; spread about 0.01 here


def test_underdetermined_flag_fires_exactly_below_ten_points_per_feature(caplog):
    g = torch.Generator().manual_seed(0)
    acts = {"w4": torch.randn(200, 4, generator=g), "w16": torch.randn(200, 16, generator=g),
            "w6": torch.randn(200, 6, generator=g)}
    with caplog.at_level(logging.DEBUG, logger="heurbench.analysis"):  # each pair's line is DEBUG (--verbose)
        rows = layer_similarity(acts, acts, measure="cka")
    expected = [200 < 10 * (a + b) for a, b in zip(rows.d_a, rows.d_b)]
    assert rows.underdetermined.tolist() == expected and any(expected) and not all(expected)
    assert not rows.set_index(["layer_a", "layer_b"]).underdetermined[("w4", "w16")]  # 200 = 10 (4 + 16): not below
    flagged = {(r.layer_a, r.layer_b) for r in rows.itertuples() if r.underdetermined}
    assert {tuple(rec.getMessage().split(": ")[0].split(" ")[1::2]) for rec in caplog.records} == flagged
    low_rank = torch.randn(200, 3, generator=g) @ torch.randn(3, 30, generator=g)
    row = layer_similarity({"low": low_rank}, {"w6": acts["w6"]}, measure="svcca").iloc[0]
    assert row.d_a == svd_reduce(low_rank).shape[1] <= 3 and not row.underdetermined  # widths after truncation


def test_underdetermined_summary_counts_pairs_and_names_the_worst():
    from analysis.cca import underdetermined

    rows = pd.DataFrame({"layer_a": ["a", "b", "c", "a"], "layer_b": ["a", "b", "c", "b"], "n": [100, 100, 100, 30],
                         "d_a": [5, 20, 2, 5], "d_b": [5, 30, 2, 10], "underdetermined": [False, True, False, True]},
                        index=[0, 0, 1, 1])  # concatenated calls repeat index labels
    line = underdetermined(rows)
    assert line.startswith("2 of 4 layer pairs underdetermined") and "= 2.00 (b vs b: 100 points for 20 + 30" in line
    assert underdetermined(rows[~rows.underdetermined]) is None
