"""analysis/benchmark.py against brute-force references computed in the test on constructed metrics frames."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.benchmark import best_setting, over_seeds, per_trial, sensitivity, time_to_target
from harness.metrics import row

METHODS, LRS, SEEDS, EVALS = ("sgd", "adam"), (0.1, 0.01, 1.0), (0, 1, 2), 6
T975 = {1: 12.706204736, 2: 4.302652730}  # Student t quantiles at 0.975 (tables)


def frame(seed: int = 0) -> pd.DataFrame:
    """Random accuracy curves (plus step and train rows that must be ignored) for methods x lrs x seeds."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in METHODS:
        for lr in LRS:
            for s in SEEDS:
                tid = f"{m}-{lr}-{s}"
                base = {"sweep": "x", "trial_id": tid, "tags.run": m, "optim.lr": lr, "seed": s, "world_size": 1}
                for e in range(1, EVALS + 1):
                    at = dict(epoch=float(e), iteration=10 * e, lr=lr, loss=1.0, weight_norm=1.0,
                              wall_time=2.5 * e + rng.random(), images_per_s=100.0)
                    rows.append({**base, **row("eval", "test", accuracy=float(rng.random()), **at)})
                    rows.append({**base, **row("eval", "train", accuracy=1.0, **at)})
                    rows.append({**base, **row("step", "train", **at)})
    return pd.DataFrame(rows).sample(frac=1, random_state=seed)  # row order must not matter


def curves_of(m):
    """Each trial's test curve in iteration order, the brute-force way."""
    out = {}
    for r in m.to_dict("records"):
        if r["kind"] == "eval" and r["split"] == "test":
            out.setdefault(r["trial_id"], []).append(r)
    return {t: sorted(v, key=lambda r: r["iteration"]) for t, v in out.items()}


def ref_interval(xs, floor=-math.inf):
    xs = [x for x in xs if not math.isnan(x)]
    mean = sum(xs) / len(xs) if xs else math.nan
    if len(xs) < 2:
        return mean, math.nan, math.nan
    half = T975[len(xs) - 1] * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, max(mean - half, floor), mean + half


def test_per_trial_final_and_best():
    m = frame()
    got = per_trial(m).set_index("trial_id")
    for tid, curve in curves_of(m).items():
        assert got.loc[tid, "final_accuracy"] == curve[-1]["accuracy"]
        assert got.loc[tid, "best_accuracy"] == max(r["accuracy"] for r in curve)
        assert got.loc[tid, "iterations"] == 10 * EVALS and got.loc[tid, "tags.run"] == curve[0]["tags.run"]


@pytest.mark.parametrize("target", [0.5, 0.9, 0.999])
def test_time_to_target_per_trial(target):
    m = frame(1)
    got = time_to_target(m, target).set_index("trial_id")
    for tid, curve in curves_of(m).items():
        first = next((r for r in curve if r["accuracy"] >= target), None)
        assert got.loc[tid, "reached"] == (first is not None)
        for k in ("iteration", "epoch", "wall_time"):
            if first is None:
                assert math.isnan(got.loc[tid, k])
            else:
                assert got.loc[tid, k] == first[k]


def test_time_to_target_over_seeds():
    m, target = frame(2), 0.7
    got = time_to_target(m, target, by=["tags.run", "optim.lr"]).set_index(["tags.run", "optim.lr"])
    assert len(got) == len(METHODS) * len(LRS)
    curves = curves_of(m)
    for meth in METHODS:
        for lr in LRS:
            firsts = [next((r for r in curves[f"{meth}-{lr}-{s}"] if r["accuracy"] >= target), None) for s in SEEDS]
            g = got.loc[(meth, lr)]
            assert g.trials == len(SEEDS) and g.reached == sum(f is not None for f in firsts)
            for k in ("iteration", "wall_time"):
                mean, lo, hi = ref_interval([math.nan if f is None else f[k] for f in firsts], floor=0.0)
                np.testing.assert_allclose([g[f"{k}_mean"], g[f"{k}_lo"], g[f"{k}_hi"]], [mean, lo, hi],
                                           rtol=1e-8, atol=1e-9, equal_nan=True)


def test_a_time_interval_stops_at_zero():
    """Two seeds reaching the target at iterations 10 and 60: the t interval 35 +- 317.6 is [0, 352.6]."""
    rows = [{"sweep": "x", "trial_id": f"t{s}", "seed": s, "world_size": 1,
             **row("eval", "test", epoch=it / 10, iteration=it, lr=0.1, loss=1.0, weight_norm=1.0,
                   wall_time=float(it), images_per_s=1.0, accuracy=acc)}
            for s, first in ((0, 10), (1, 60)) for it, acc in ((10, 0.9 if first == 10 else 0.1), (60, 0.9))]
    got = time_to_target(pd.DataFrame(rows), 0.5, by=[]).iloc[0]
    half = T975[1] * statistics.stdev([10, 60]) / math.sqrt(2)
    assert got.iteration_mean == 35 and got.iteration_lo == 0.0 and got.iteration_hi == pytest.approx(35 + half)
    assert 35 - half < 0 and got.wall_time_lo == 0.0


def test_sensitivity_is_mean_and_t_interval_over_seeds():
    m = frame(3)
    got = sensitivity(m, "optim.lr", ["tags.run"]).set_index(["tags.run", "optim.lr"])
    curves = curves_of(m)
    for meth in METHODS:
        for lr in LRS:
            c = [curves[f"{meth}-{lr}-{s}"] for s in SEEDS]
            for name, value in (("final", lambda cv: cv[-1]["accuracy"]),
                                ("best", lambda cv: max(r["accuracy"] for r in cv))):
                mean, lo, hi = ref_interval([value(cv) for cv in c])
                want = (mean, max(lo, 0.0), min(hi, 1.0))  # an accuracy's interval stays inside [0, 1]
                have = [got.loc[(meth, lr), f"{name}_accuracy_{k}"] for k in ("mean", "lo", "hi")]
                np.testing.assert_allclose(have, want, rtol=1e-8, atol=1e-9)
    assert sorted(got.index.get_level_values("optim.lr").unique()) == sorted(LRS)


@pytest.mark.parametrize("by", ["final", "best"])
def test_best_setting_per_method(by):
    m = frame(4)
    got = best_setting(m, ["optim.lr"], ["tags.run"], by=by).set_index("tags.run")
    curves = curves_of(m)
    for meth in METHODS:
        def score(lr):
            vals = [curves[f"{meth}-{lr}-{s}"] for s in SEEDS]
            vals = [cv[-1]["accuracy"] if by == "final" else max(r["accuracy"] for r in cv) for cv in vals]
            return sum(vals) / len(vals)
        best_lr = max(LRS, key=score)
        assert got.loc[meth, "optim.lr"] == best_lr and got.loc[meth, "settings"] == len(LRS)
        assert got.loc[meth, f"{by}_accuracy_mean"] == pytest.approx(score(best_lr))


def test_best_setting_without_methods_and_one_seed():
    m = frame(5)
    m = m[(m.seed == 0) & (m["tags.run"] == "sgd")]
    got = best_setting(m, ["optim.lr"])
    finals = {lr: curves_of(m)[f"sgd-{lr}-0"][-1]["accuracy"] for lr in LRS}
    assert len(got) == 1 and got["optim.lr"].iloc[0] == max(finals, key=finals.get)
    assert got.trials.iloc[0] == 1 and math.isnan(got.final_accuracy_lo.iloc[0])


def test_over_seeds_skips_nan_and_counts_trials():
    df = pd.DataFrame({"g": ["a", "a", "a", "b"], "v": [1.0, math.nan, 3.0, 5.0]})
    got = over_seeds(df, ["g"], ["v"]).set_index("g")
    np.testing.assert_allclose(got.loc["a", ["v_mean", "v_lo", "v_hi"]].astype(float), ref_interval([1.0, 3.0]))
    assert got.loc["a", "trials"] == 3 and got.loc["b", "v_mean"] == 5.0 and math.isnan(got.loc["b", "v_lo"])


def test_sections_on_a_fabricated_sweep(tmp_path):
    """`sections` through a Report over a fabricated sweep folder (no training): tables of the finished trials
    (a diverged one left out), one sensitivity figure, and report.md + report.html from Report.finish."""
    from analysis import benchmark
    from analysis.report import Report
    from harness.layout import RunDir
    from harness.storage import write_json, write_parquet

    m, run = frame(6), RunDir(tmp_path / "x")
    m["data.batch_size"] = m["tags.run"].map({"sgd": 32.0, "adam": 256.0})  # fixed per method: not a setting
    trials = m.drop_duplicates("trial_id").sort_values("trial_id")
    swept = ("tags.run", "optim.lr", "seed", "data.batch_size")
    points = [{"index": i, "trial_id": t["trial_id"], "values": {k: t[k] for k in swept}}
              for i, t in enumerate(trials.to_dict("records"))]
    run.path.mkdir()
    run.sweep_yaml.write_text(yaml.safe_dump({"name": "x", "base": {"seed": 0}, "points": points}))
    for tid, part in m.groupby("trial_id"):
        write_parquet(run.metrics_part(tid, 0), part.to_dict("records"))
        write_json(run.trial(tid).status, {"state": "diverged" if tid == "sgd-0.1-0" else "done"})
    r = Report(run.path)
    benchmark.sections(r, target=0.6)
    r.finish()
    done = m[m.trial_id != "sgd-0.1-0"]
    sens = pd.read_parquet(run.report_table("sensitivity_optim.lr"))
    method = ["tags.run", "data.batch_size"]
    pd.testing.assert_frame_equal(sens, sensitivity(done, "optim.lr", method))
    assert sens.set_index(["tags.run", "optim.lr"]).loc[("sgd", 0.1), "trials"] == 2
    assert not run.report_table("sensitivity_data.batch_size").exists()
    best = pd.read_parquet(run.report_table("best_setting_best"))
    pd.testing.assert_frame_equal(best, best_setting(done, ["optim.lr"], method, by="best"))
    ttt = pd.read_parquet(run.report_table("time_to_target"))
    pd.testing.assert_frame_equal(ttt, time_to_target(done, 0.6, ["tags.run", "optim.lr", "data.batch_size"]))
    assert r.figures == [run.figure("sensitivity_optim.lr")] and r.figures[0].stat().st_size > 0
    md = run.report_md.read_text()
    assert "1 diverged or unfinished left out" in md and "### Time to test accuracy 0.6" in md
    assert run.report_html.read_text().count("<img ") == 1
