"""analysis.claims: t intervals against published t-table values, the interval against its formula, the verdict rules
on constructed per-seed data, pairing by seed; the seed aggregation of tables (over_seeds) and curve figures."""
import importlib
import math

import numpy as np
import pandas as pd
import pytest

from analysis import claims, plots
from analysis.claims import Claim, above, below, within

# t_{0.975, df} from printed t tables (e.g. Fisher & Yates; NIST/SEMATECH handbook 1.3.6.7.2), 3 decimals
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 29: 2.045, 100: 1.984}


@pytest.mark.parametrize("df", list(T975))
def test_t_interval_uses_the_tables_quantile(df):
    """The t interval of n = df + 1 values with sample std sqrt(n) is mean +- t_{0.975, df} (scipy.stats.t)."""
    x = np.zeros(df + 1)
    x[:2] = [-1, 1]
    x *= np.sqrt(df + 1) / x.std(ddof=1)
    assert claims.interval(x)["hi"] == pytest.approx(T975[df], abs=6e-4)


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


def test_an_interval_stays_inside_the_statistics_range_and_names_its_method():
    """The issue's LB - SB per seed (0.17 - 0.99, ...): the t interval of 3 seeds leaves [-1, 1]; clipped, it
    does not, and the row says so."""
    f = frame([0.21, 0.36, 0.98], [0.99, 1.00, 0.99])
    row = claims.judge(Claim("t", "c", "", "", ("a", "b"), within(0.02), bounds=claims.DIFFERENCE), f)
    assert -1 <= row["ci_lo"] < row["ci_hi"] <= 1 and row["ci_lo"] == -1
    assert row["method"] == "t 95%, clipped to [-1, 1]"


def test_an_inconclusive_claim_says_how_many_seeds_would_decide_it():
    row = claims.judge(Claim("t", "c", "", "", ("a", "b"), above(0.0)), frame([0.55, 0.58, 0.61], [0.5, 0.6, 0.55]))
    assert row["verdict"] == "inconclusive" and row["seeds_needed"] > 3
    assert row["note"].startswith("estimate: ~") and str(row["seeds_needed"]) in row["note"]


def test_a_rate_claim_uses_exact_intervals_and_test():
    from scipy import stats as sp

    f = pd.DataFrame({"w": [0, 0, 0, 0, 0, 0, 1, 0], "n": [1, 1, 1, 1, 1, 0, 1, 1]},
                     index=pd.Index(range(8), name="seed"))
    row = claims.judge(claims.RateClaim("t", "r", "", "", ("w", "n")), f)
    assert row["p_value"] == pytest.approx(sp.fisher_exact([[1, 7], [7, 1]], alternative="less").pvalue)
    assert row["verdict"] == "held" and row["mean"] == pytest.approx(1 / 8 - 7 / 8)
    ci = sp.binomtest(1, 8).proportion_ci(method="exact")
    assert f"[{ci.low:.3g}, {ci.high:.3g}]" in row["interval"]
    same = claims.judge(claims.RateClaim("t", "r", "", "", ("w", "w")), f)
    assert same["verdict"] == "inconclusive" and "no number of seeds" in same["note"]
    flipped = claims.judge(claims.RateClaim("t", "r", "", "", ("n", "w")), f)
    assert flipped["verdict"] == "not held"


def test_markdown_puts_the_verdict_next_to_the_claim():
    """One renderer for the claims table: the COLUMNS the rows have, in order, the verdict second."""
    rows = claims.table([Claim("t", "c", "", "a minus b", ("a", "b"), above(0.0)),
                         claims.RateClaim("t", "r", "", "rate", ("a", "b"))], frame([1, 1, 0], [0, 1, 1]))
    header = [h.strip() for h in claims.markdown(rows).splitlines()[0].strip("|").split("|")]
    assert header == list(claims.COLUMNS) and header[:2] == ["claim", "verdict"]
    assert set(claims.COLUMNS) < set(rows.columns)  # the rest (statement, per_seed, ...) stay in the Parquet
    assert claims.markdown([{"note": "n", "verdict": "held", "claim": "x"}]).splitlines()[0].split() == \
        ["|", "claim", "|", "verdict", "|", "note", "|"]
    with pytest.raises(ValueError, match="claims table: no 'verdict' column"):
        claims.markdown(rows.drop(columns="verdict"))


def test_a_refused_claim_keeps_its_interval_and_is_not_judged():
    from analysis.claims import NOT_JUDGED, REFUSED

    c = Claim("s", "c", "statement", "a minus b", ("a", "b"), above(0.0))
    frame = pd.DataFrame({"a": [0.9, 0.8, 0.85], "b": [0.1, 0.2, 0.15]}, index=pd.Index([0, 1, 2], name="seed"))
    judged = claims.table([c], frame).iloc[0]
    frame.attrs[REFUSED] = {"c": "not judged: the teacher is weak"}
    refused = claims.table([c], frame).iloc[0]
    assert judged.verdict == "held" and refused.verdict == NOT_JUDGED
    assert refused.note == "not judged: the teacher is weak" and refused.ci_lo == judged.ci_lo


def test_s4_teacher_rule_needs_the_declared_margin():
    from analysis.studies.s4_distill import TEACHER_MARGIN, teacher_rule

    assert teacher_rule(0.60 + TEACHER_MARGIN, 0.60) is None
    why = teacher_rule(0.489, 0.522)
    assert why.startswith("not judged: the teacher's test accuracy 0.4890 is not 0.05 above") and "\n" not in why


def test_s1s_error_barrier_interval_stays_at_or_above_zero():
    """S1 round 2's G-A barriers per seed (0, 0.052, 0.018): the unclipped t interval starts at -0.042, below any
    barrier; the claim's starts at 0, its upper end and verdict unchanged."""
    from analysis.studies.s1_connectivity import CLAIMS
    claim = next(c for c in CLAIMS if c.id == "connected_G-A")
    row = claims.judge(claim, pd.DataFrame({"G-A": [0.0, 0.052, 0.018]}, index=pd.Index([0, 1, 2], name="seed")))
    x = np.array([0.0, 0.052, 0.018])
    half = T975[2] * x.std(ddof=1) / math.sqrt(3)
    assert x.mean() - half < 0 and row["ci_lo"] == 0 and row["ci_hi"] == pytest.approx(x.mean() + half, abs=1e-5)
    assert row["method"] == "t 95%, clipped to [0, 1]" and row["verdict"] == "inconclusive"


ACCURACY_DIFFERENCES = {
    "s2_sgdr": ["bend_generalizes_worse"], "s4_distill": ["distill_beats_hard_labels", "difference_in_fc_stack"],
    "s5_lr_regimes": ["2A_beats_1_finetuned", "2A_beats_2B_finetuned", "2A_beats_3_finetuned", "2A_beats_1_swa"],
    "s7_cosine_budget": ["cosine_beats_step", "linear_beats_step", "decay_not_restarts", "swa_on_sgdr"]}


@pytest.mark.parametrize("study,claim_id", [(s, c) for s, ids in ACCURACY_DIFFERENCES.items() for c in ids])
def test_a_difference_of_accuracies_keeps_its_interval_inside_minus_one_one(study, claim_id):
    """Per-seed differences 1, -0.9, 0.95: their t interval reaches far beyond [-1, 1]; each study's claim on a
    difference of two accuracies (or errors, or SVCCA values) keeps it inside."""
    claim = next(c for c in importlib.import_module(f"analysis.studies.{study}").CLAIMS if c.id == claim_id)
    pairs = ([1.0, 0.1, 1.0], [0.0, 1.0, 0.05])
    values = dict(zip(claim.columns, pairs if len(claim.columns) == 2 else ([1.0, -0.9, 0.95],)))
    f = pd.DataFrame(values, index=pd.Index([0, 1, 2], name="seed"))
    row = claims.judge(claim, f)
    assert (row["ci_lo"], row["ci_hi"]) == (-1, 1) and row["method"] == "t 95%, clipped to [-1, 1]"
