"""Every study YAML (sweeps/ at paper scale, sweeps/reduced/, sweeps/claims/) validates, plans with its
dependencies, and names a study that `heurbench report` knows; every study declares its claims; a study's claims
table from a synthetic metrics frame."""
from pathlib import Path

import pytest

from harness.grid import in_order
from harness.registry import register

STUDIES = register.names("study")

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
YAMLS = sorted(SWEEPS.glob("*.yaml")) + sorted(p for sub in ("reduced", "claims", "gpu")
                                              for p in (SWEEPS / sub).glob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(SWEEPS)))
def test_sweep_validates_and_plans(path):
    sweeps = in_order(path)
    assert sweeps[-1].source == path.resolve()
    assert all(s.points for s in sweeps)
    assert len({p.trial_id for s in sweeps for p in s.points}) == sum(len(s.points) for s in sweeps)


@pytest.mark.parametrize("path", sorted((SWEEPS / "reduced").glob("*.yaml")), ids=lambda p: p.name)
def test_reduced_sweep_is_named_for_its_study(path):
    name = in_order(path)[-1].name
    assert name.endswith("_reduced")
    assert name.split("_")[0] in STUDIES, f"{name}: its prefix is no study in {sorted(STUDIES)}"


def test_every_study_has_a_reduced_sweep():
    prefixes = {p.name.split("_")[0] for p in (SWEEPS / "reduced").glob("*.yaml")}
    assert prefixes == {f"s{i}" for i in range(1, 8)}


def test_every_study_has_a_claims_sweep_with_seeds():
    """sweeps/claims/: each study's sweeps are named <study>_..._claims and run at least 3 seeds (but the S4
    teacher, S5's one-seed pilot, and S5's fine-tuning, whose seeds are those of the pre-trained points it starts
    from)."""
    last = {}
    for path in sorted((SWEEPS / "claims").glob("*.yaml")):
        for s in in_order(path):
            assert s.name.endswith("_claims"), s.name
            last[s.name] = s
    assert {n.split("_")[0] for n in last} == {f"s{i}" for i in range(1, 8)}
    single = {"s4_teacher_claims", "s5_finetune_claims", "s5_pilot_claims"}
    assert all(len({p.cfg.seed for p in s.points}) >= 3 for n, s in last.items() if n not in single)
    assert len({p.cfg.model.init_from for p in last["s5_finetune_claims"].points}) == len(
        last["s5_pretrain_claims"].points)


def test_every_study_declares_its_claims():
    from analysis.claims import Claim, RateClaim

    for key in STUDIES:
        claims = register.get("study", key).obj.claims
        assert claims and all(isinstance(c, (Claim, RateClaim)) for c in claims), key
        assert len({c.id for c in claims}) == len(claims) and {c.study for c in claims} == {key.replace(
            "quickstart", "s3")}, key


@pytest.fixture
def s7_folder(trial_dict, tmp_path):
    """A one-trial S7-style sweep folder, trained here without Ray (write_resolved is what run_sweep writes)."""
    import yaml

    from harness.grid import load_sweep, write_resolved
    from harness.train import run_trial

    trial_dict.update(schedule={"name": "cosine", "unit": "iteration", "t0": 4}, checkpoints={"iterations": [0, 8]})
    path = tmp_path / "s7_tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "s7_tiny", "base": trial_dict,
                                    "grid": {"schedule.name": ["cosine", "sgdr"]}}))
    sweep = load_sweep(path)
    out = tmp_path / "runs" / "s7_tiny"
    for p in sweep.points:
        assert run_trial(p.cfg, out) == "done"
    write_resolved(sweep, out)
    return out


def test_report_option_a_study_does_not_take_is_one_line_error(s7_folder, capsys):
    from heurbench.cli import main

    assert main(["report", str(s7_folder), "--grid", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "heurbench: error: --grid: not used by the s7 report (it takes: --images)"
    assert not (s7_folder / "report.md").exists()


def test_report_options_reach_the_study(s7_folder):
    """--images 37 reaches the S7 report's SWA: its accuracy is the averaged model's on the first 37 test images,
    and the rows it recorded under analysis/swa are those of the library function called directly."""
    import pandas as pd

    from analysis import loading, results
    from analysis.evaluation import Batches, evaluate
    from analysis.report import report
    from analysis.swa import swa_rows
    from harness.layout import RunDir

    report(s7_folder, images=37)
    swa = pd.read_parquet(s7_folder / "analysis" / "report" / "sgdr_swa.parquet")
    [derived] = (s7_folder / "derived" / "swa").glob("*.pt")
    ck = loading.load(derived)
    ds = loading.load_data(ck["data_spec"])
    first = Batches(ds.test.images[:37], ds.test.labels[:37], 500, ds.normalize)
    assert swa.averaged.tolist() == ["iter=000008, iter=000016"]
    assert swa.swa_accuracy.tolist() == [evaluate(loading.build_model(ck, str(derived)), first)["accuracy"]]
    cs = loading.Checkpoints.open(RunDir(s7_folder).trial(swa.trial_id.item()).iter_ckpts()[1:])
    splits = cs.splits(37, 37)
    rows, _ = swa_rows(cs.model(0), list(cs.states().values()), splits, splits["train"])
    recorded = results.read(s7_folder, "swa")
    assert recorded[rows.columns].to_dict("records") == rows.to_dict("records")


def test_claims_table_of_a_study_from_a_synthetic_metrics_frame(trial_dict, tmp_path):
    """The S7 report on a sweep folder whose metrics are written here (no training, no checkpoints, so no SWA):
    its claims table has one row per S7 claim, each decided from the final accuracies paired by seed with the t
    interval computed here, and it is the study's last section of report.md."""
    import re

    import numpy as np
    import pandas as pd
    import yaml

    from analysis.report import report
    from analysis.studies.s7_cosine_budget import CLAIMS
    from harness.grid import load_sweep, write_resolved
    from harness.layout import RunDir
    from harness.metrics import row
    from harness.storage import write_parquet

    path = tmp_path / "s7_syn.yaml"
    path.write_text(yaml.safe_dump({"name": "s7_syn", "base": trial_dict, "seeds": [0, 1, 2],
                                    "grid": {"schedule.name": ["cosine", "linear", "sgdr", "step"]},
                                    "overrides": [{"when": {"schedule.name": "step"},
                                                   "set": {"schedule.milestones": [1]}}]}))
    sweep = load_sweep(path)
    run = RunDir(tmp_path / "runs" / "s7_syn")
    write_resolved(sweep, run.path)
    final = {"cosine": [0.60, 0.70, 0.50], "linear": [0.40, 0.72, 0.50], "sgdr": [0.62, 0.69, 0.52],
             "step": [0.55, 0.65, 0.45]}
    for p in sweep.points:
        name, seed = p.cfg.schedule.name, p.cfg.seed
        base = {"sweep": "s7_syn", "trial_id": p.trial_id, "schedule.name": name, "seed": seed, "world_size": 1}
        rows = [{**base, **row("eval", "test", epoch=e, iteration=10 * e, lr=0.1, loss=1.0, weight_norm=1.0,
                               wall_time=e, images_per_s=1.0, accuracy=acc)}
                for e, acc in ((1, 0.3), (2, final[name][seed]))]
        write_parquet(run.metrics_part(p.trial_id, 0), rows)
    md = report(run.path).read_text()
    got = pd.read_parquet(run.report_table("claims")).set_index("claim")
    assert list(got.index) == [c.id for c in CLAIMS]
    f = {k: np.array(v) for k, v in final.items()}

    def t95(d):
        return d.mean() - 4.303 * d.std(ddof=1) / 3 ** 0.5, d.mean() + 4.303 * d.std(ddof=1) / 3 ** 0.5

    for claim, d, verdict in [("cosine_beats_step", f["cosine"] - f["step"], "held"),  # +0.05 on every seed
                              ("linear_beats_step", f["linear"] - f["step"], "inconclusive"),
                              ("decay_not_restarts", f["cosine"] - f["sgdr"], "inconclusive")]:
        lo, hi = t95(d)
        assert got.loc[claim, ["ci_lo", "ci_hi"]].tolist() == pytest.approx([lo, hi], abs=1e-3), claim
        assert got.loc[claim, "verdict"] == verdict and got.loc[claim, "seeds"] == 3
    assert got.loc["swa_on_sgdr", "verdict"] == "inconclusive"
    assert got.loc["swa_on_sgdr", "note"].startswith("nothing in this sweep gives")
    assert md.index("## Final test accuracy per schedule") < md.index("## Claims")  # the study's last section
    assert re.search(r"\| cosine_beats_step +\| held +\|", md[md.index("## Claims"):])  # verdict next to the claim


def test_s6_limits_per_seed_pick_no_warmup_longest_from_zero_and_shortest_catapult():
    import pandas as pd

    from analysis.studies.s6_warmup_stability import CLAIMS, per_seed_limits
    from analysis.claims import judge

    rows = []
    for seed, (none, w50, w100, cat10, cat20) in {0: (2.0, 4.0, 8.0, 8.0, 16.0), 1: (2.0, 4.0, 8.0, 4.0, 8.0),
                                                   2: (4.0, 4.0, 16.0, 16.0, 16.0)}.items():
        rows += [("sgd", "0", 0, seed, none), ("sgd", "0", 50, seed, w50), ("sgd", "0", 100, seed, w100),
                 ("sgd", "catapult", 10, seed, cat10), ("sgd", "catapult", 20, seed, cat20)]
    best = pd.DataFrame(rows, columns=["optimizer", "start", "warmup", "seed", "eta_trgt"])
    got = per_seed_limits(best)
    assert got.to_dict() == {"sgd_none": {0: 2.0, 1: 2.0, 2: 4.0}, "sgd_longest": {0: 8.0, 1: 8.0, 2: 16.0},
                             "sgd_catapult": {0: 8.0, 1: 4.0, 2: 16.0}}
    raises = judge(CLAIMS[0], got)  # log2 longest / none = 2, 2, 2: held
    assert raises["mean"] == 2.0 and raises["verdict"] == "held"
    saves = judge(CLAIMS[1], got)  # log2 catapult / longest = 0, -1, 0
    assert saves["per_seed"] == "0: 0, 1: -1, 2: 0" and saves["verdict"] == "inconclusive"


def test_s6_instability_is_judged_at_the_grids_largest_lr_per_seed():
    import pandas as pd

    from analysis.claims import judge
    from analysis.studies.s6_warmup_stability import CLAIMS, unstable_at_top_lr

    rows = [("sgd", "0", w, s, lr, st, acc) for s in range(3) for w, lr, st, acc in
            [(0, 16.0, "diverged", float("nan")), (0, 8.0, "done", 0.5), (100, 16.0, "done", 0.15 if s else 0.6),
             (50, 16.0, "diverged", float("nan"))]]
    grid = pd.DataFrame(rows, columns=["optimizer", "start", "warmup", "seed", "eta_trgt", "state", "final_accuracy"])
    got = unstable_at_top_lr(grid)
    assert got.to_dict() == {"unstable_sgd_none": {0: 1.0, 1: 1.0, 2: 1.0},
                             "unstable_sgd_longest": {0: 0.0, 1: 1.0, 2: 1.0}}  # 0.15 is within 0.1 of chance
    row = judge(CLAIMS[4], got)
    assert row["claim"] == "warmup_lowers_instability" and row["verdict"] == "inconclusive" and row["seeds"] == 3
    assert judge(CLAIMS[5], got)["note"].startswith("nothing in this sweep gives")


def test_s6_stable_needs_done_a_falling_loss_and_accuracy_above_chance_plus_margin():
    from analysis.studies.s6_warmup_stability import is_stable

    assert is_stable("done", 2.5, 1.2, 0.45)
    assert not is_stable("done", 2.5, 2.2, 0.2)  # round 1 called this stable: loss fell from above ln 10, at chance
    assert not is_stable("done", 2.0, 2.1, 0.45) and not is_stable("diverged", 2.5, 1.2, 0.45)
    assert not is_stable("running", 2.5, 1.2, float("nan")) and not is_stable("done", 2.5, 1.2, float("nan"))
