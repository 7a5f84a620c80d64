"""analysis.claims: t quantiles against published table values, the interval against its formula, the verdict rules
on constructed per-seed data, pairing by seed; the seed aggregation of tables (over_seeds) and curve figures."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import claims, plots
from analysis.claims import Claim, above, below, within

# t_{0.975, df} from printed t tables (e.g. Fisher & Yates; NIST/SEMATECH handbook 1.3.6.7.2), 3 decimals
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 29: 2.045, 100: 1.984}


@pytest.mark.parametrize("df", list(T975))
def test_t_quantile_matches_the_table(df):
    assert claims.t_quantile(0.975, df) == pytest.approx(T975[df], abs=6e-4)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5, 9.0])
def test_t_cdf_matches_closed_forms(t):
    """df 1 (Cauchy): P(|T| < t) = 2 atan(t) / pi; df 2: t / sqrt(2 + t^2); df 3: 2/pi (atan(u) + u / (1 + u^2)),
    u = t / sqrt(3); large df tends to the normal's erf(t / sqrt 2)."""
    assert claims.t_cdf_two_sided(t, 1) == pytest.approx(2 * math.atan(t) / math.pi, rel=1e-12)
    assert claims.t_cdf_two_sided(t, 2) == pytest.approx(t / math.sqrt(2 + t * t), rel=1e-12)
    u = t / math.sqrt(3)
    assert claims.t_cdf_two_sided(t, 3) == pytest.approx(2 / math.pi * (math.atan(u) + u / (1 + u * u)), rel=1e-12)
    assert claims.t_cdf_two_sided(t, 4000) == pytest.approx(math.erf(t / math.sqrt(2)), abs=2e-4)


def test_interval_is_mean_plus_minus_t_s_over_root_n():
    x = [0.81, 0.86, 0.78, float("nan")]  # NaN seeds are dropped
    got = claims.interval(x)
    finite = np.array(x[:3])
    half = 4.303 * finite.std(ddof=1) / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(finite.mean())
    assert got["lo"] == pytest.approx(finite.mean() - half, abs=1e-4)
    assert got["hi"] == pytest.approx(finite.mean() + half, abs=1e-4)


def test_interval_with_fewer_than_two_values_is_nan():
    for x in ([], [0.5], [0.5, float("nan")]):
        got = claims.interval(x)
        assert math.isnan(got["lo"]) and math.isnan(got["hi"]) and math.isnan(got["std"])


def frame(a, b):
    return pd.DataFrame({"a": a, "b": b}, index=pd.Index(range(len(a)), name="seed"))


@pytest.mark.parametrize("rule, diffs, verdict", [
    (above(0.0), [0.05, 0.06, 0.04], "held"),
    (above(0.0), [-0.05, -0.06, -0.04], "not held"),
    (above(0.0), [0.05, -0.04, 0.01], "inconclusive"),
    (above(0.1), [0.05, 0.06, 0.04], "not held"),  # above zero but below the stated margin
    (below(0.1), [0.05, 0.06, 0.04], "held"),
    (below(0.0), [0.05, 0.06, 0.04], "not held"),
    (within(0.02), [0.001, -0.002, 0.0], "held"),
    (within(0.02), [0.10, 0.12, 0.11], "not held"),
    (within(0.02), [-0.10, -0.12, -0.11], "not held"),
    (within(0.02), [0.01, 0.03, 0.02], "inconclusive"),  # straddles the margin
])
def test_verdict_follows_the_rule_on_the_interval(rule, diffs, verdict):
    b = np.array([0.5, 0.6, 0.7])
    row = claims.judge(Claim("t", "c", "paper says", "a minus b", ("a", "b"), rule), frame(b + diffs, b))
    assert row["verdict"] == verdict, row
    assert row["seeds"] == 3 and row["mean"] == pytest.approx(np.mean(diffs))


def test_comparisons_are_paired_by_seed():
    """Seeds differ a lot, the difference within each seed is small and steady: paired, the claim holds; the same
    numbers compared as two unpaired groups would give an interval half-width larger than the difference."""
    b = np.array([0.3, 0.6, 0.9])
    diffs = np.array([0.010, 0.012, 0.011])
    row = claims.judge(Claim("t", "c", "", "", ("a", "b"), above(0.0)), frame(b + diffs, b))
    assert row["verdict"] == "held"
    unpaired_half = 2.776 * math.sqrt(np.var(b + diffs, ddof=1) / 3 + np.var(b, ddof=1) / 3)
    assert unpaired_half > diffs.mean()  # so pairing is what decides


def test_one_seed_or_a_missing_setting_is_inconclusive_with_a_note():
    c = Claim("t", "c", "", "", ("a", "b"), above(0.0))
    one = claims.judge(c, frame([0.9], [0.1]))
    assert one["verdict"] == "inconclusive" and one["seeds"] == 1 and one["mean"] == pytest.approx(0.8)
    assert "an interval needs 2" in one["note"] and math.isnan(one["ci_lo"])
    missing = claims.judge(Claim("t", "c", "", "", ("a", "zzz"), above(0.0)), frame([0.9, 0.8], [0.1, 0.2]))
    assert missing["verdict"] == "inconclusive" and missing["note"] == "nothing in this sweep gives: zzz"


def test_a_custom_statistic_and_a_single_column():
    f = frame([1.0, 2.0, 4.0], [1.0, 1.0, 1.0])
    ratio = Claim("t", "r", "", "log2 a/b", ("a", "b"), above(0.0), value=lambda a, b: np.log2(a / b))
    assert claims.judge(ratio, f)["per_seed"] == "0: 0, 1: 1, 2: 2"
    single = Claim("t", "s", "", "a", ("a",), below(10.0))
    assert claims.judge(single, f)["mean"] == pytest.approx(7 / 3)


def test_a_within_rule_needs_a_margin():
    with pytest.raises(ValueError):
        within(0.0)


def test_over_seeds_gives_mean_and_t_interval_per_setting(tmp_path):
    class Table:  # the one Report method over_seeds uses
        def table(self, name, df):
            return df

    from analysis.report import over_seeds

    acc = pd.DataFrame({"run": ["x", "x", "x", "y"], "seed": [0, 1, 2, 0], "final_accuracy": [0.5, 0.7, 0.6, 0.9],
                        "best_accuracy": [0.6, 0.8, 0.7, 0.95]})
    got = over_seeds(Table(), acc, "run", "t").set_index("run")
    half = 4.303 * 0.1 / math.sqrt(3)
    assert got.loc["x", "seeds"] == 3 and got.loc["x", "final_mean"] == pytest.approx(0.6)
    assert got.loc["x", "final_lo"] == pytest.approx(0.6 - half, abs=1e-4)
    assert got.loc["x", "best_hi"] == pytest.approx(0.7 + half, abs=1e-4)
    assert got.loc["y", "seeds"] == 1 and math.isnan(got.loc["y", "final_lo"])


def test_curves_over_several_seeds_are_a_mean_line_with_a_band(tmp_path, monkeypatch):
    """`plots.lines(..., over="seed")`: the line of a setting with 3 seeds is the mean per x, its band the 95% t
    interval (clipped to [0, 1] for an accuracy); a setting with one seed is its plain line, without a band."""
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig))
    rng = np.random.default_rng(0)
    acc = rng.uniform(0, 1, (3, 4))
    df = pd.concat([pd.DataFrame({"epoch": np.arange(4), "accuracy": acc[s], "seed": s, "run": "lb"}) for s in range(3)]
                   + [pd.DataFrame({"epoch": np.arange(4), "accuracy": [0.1, 0.2, 0.3, 0.4], "seed": 0, "run": "sb"})])
    plots.lines(df, "epoch", "accuracy", tmp_path / "x.png", by=["run"], over="seed")
    ax = drawn["fig"].axes[0]
    lb, sb = ax.get_lines()
    assert np.allclose(lb.get_ydata(), acc.mean(0)) and np.allclose(sb.get_ydata(), [0.1, 0.2, 0.3, 0.4])
    [band] = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    half = 4.303 * acc.std(0, ddof=1) / math.sqrt(3)
    lo, hi = np.clip(acc.mean(0) - half, 0, 1), np.clip(acc.mean(0) + half, 0, 1)  # an accuracy stays in [0, 1]
    assert (acc.mean(0) - half).min() < 0 and np.isclose(sorted(ys)[0], lo.min(), atol=1e-3)
    assert np.isclose(sorted(ys)[-1], hi.max(), atol=1e-3)
