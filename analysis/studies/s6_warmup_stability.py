"""S6 (Kalra & Barkeshli): why warmup works, through stability limits and sharpness during warmup."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analysis import benchmark, plots
from analysis.claims import CHANCE_MARGIN, Claim, RateClaim, above, below, unstable
from analysis.report import Report
from analysis.study import Study
from analysis.sharpness import ITERS, TOL, sharpness
from harness.layout import checkpoint_name
from harness.registry import register


def log2_ratio(a: pd.Series, b: pd.Series) -> pd.Series:
    return np.log2(a / b)


CLAIMS = [
    Claim("s6", "warmup_raises_max_lr", "The overwhelming benefit of warmup is that the network tolerates a larger "
          "eta_trgt (abstract; SGD).", "log2 of the largest stable eta_trgt with the longest warmup from 0 over the "
          "largest without warmup (SGD; 1 = twice as large)", ("sgd_longest", "sgd_none"), above(0.0), log2_ratio),
    Claim("s6", "catapult_saves_warmup", "Starting warmup from the loss-catapult eta_init saves warmup steps: a shorter "
          "warmup from it tolerates the eta_trgt a longer one from 0 does (abstract; SGD). Margin: half an octave.",
          "log2 of the largest stable eta_trgt, short warmup from the catapult LR over longest warmup from 0 (SGD)",
          ("sgd_catapult", "sgd_longest"), above(-0.5), log2_ratio),
    Claim("s6", "warmup_ends_well_conditioned", "Warmup forces the network into better-conditioned regions: at the "
          "end of warmup the sharpness is below the target LR's stability limit 2 / eta_trgt (abstract; SGD).",
          "eta_trgt x top Hessian eigenvalue (of the loss with BN on each batch's statistics, the loss SGD follows) "
          "at the end of the longest warmup from 0, at the largest eta_trgt stable with it (SGD)",
          ("sgd_eta_sharpness",), below(2.0)),
    Claim("s6", "gi_adam_like_warmup", "GI-Adam (second moment initialised from the first gradient) gives benefits "
          "similar to warmup: without warmup it tolerates a larger eta_trgt than Adam (abstract).",
          "log2 of the largest stable eta_trgt without warmup, GI-Adam over Adam", ("gi_adam_none", "adam_none"),
          above(0.0), log2_ratio),
    RateClaim("s6", "warmup_lowers_instability", "Warmup lets the network train at an eta_trgt it does not tolerate "
              "without (abstract; SGD): at the grid's largest eta_trgt, the longest warmup from 0 is unstable on fewer "
              "seeds than no warmup.", "rate of unstable seeds (diverged, or final test accuracy <= chance + 0.1) at "
              "the largest eta_trgt of the grid, SGD: longest warmup from 0 vs none",
              ("unstable_sgd_longest", "unstable_sgd_none")),
    RateClaim("s6", "warmup_lowers_instability_adam", "The same for Adam (abstract): at the grid's largest eta_trgt, "
              "the longest warmup from 0 is unstable on fewer seeds than no warmup.", "rate of unstable seeds "
              "(diverged, or final test accuracy <= chance + 0.1) at the largest eta_trgt of the grid, Adam: longest "
              "warmup from 0 vs none", ("unstable_adam_longest", "unstable_adam_none")),
]
CHANCE = 0.1  # CIFAR-10


def is_stable(state: str, loss_start: float, loss_end: float, final_accuracy: float) -> bool:
    """The stability rule (round 2, declared before its run): the trial is done, its final train loss is below its
    first, and it is not `unstable` (final test accuracy above chance + CHANCE_MARGIN): a net stuck at chance
    whose loss started above ln 10 is not stable."""
    return bool(loss_end < loss_start) and unstable(state, final_accuracy, CHANCE, CHANCE_MARGIN) == 0.0


def per_seed_limits(best: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the largest stable eta_trgt of each optimizer without warmup (<opt>_none), with its longest warmup
    from 0 (<opt>_longest) and with its shortest warmup from the catapult LR (<opt>_catapult)."""
    cols = {}
    for (opt, seed), g in best.groupby(["optimizer", "seed"]):
        zero, cat = g[(g.start == "0") & (g.warmup > 0)], g[g.start == "catapult"]
        picks = {"none": g[g.warmup == 0], "longest": zero[zero.warmup == zero.warmup.max()],
                 "catapult": cat[cat.warmup == cat.warmup.min()]}
        for name, rows in picks.items():
            if len(rows):
                cols.setdefault(f"{opt}_{name}", {})[seed] = rows.eta_trgt.iloc[0]
    return pd.DataFrame(cols).rename_axis("seed")


def unstable_at_top_lr(grid: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the `unstable` outcome (analysis.claims.unstable) at each optimizer's largest eta_trgt in the grid,
    without warmup (unstable_<opt>_none) and with its longest warmup from 0 (unstable_<opt>_longest)."""
    cols = {}
    for opt, g in grid.groupby("optimizer"):
        top = g[(g.eta_trgt == g.eta_trgt.max()) & (g.start == "0")]
        for name, rows in (("none", top[top.warmup == 0]), ("longest", top[top.warmup == top.warmup.max()])):
            if len(rows) and (name == "none" or rows.warmup.max() > 0):
                cols[f"unstable_{opt}_{name}"] = {p.seed: unstable(p.state, p.final_accuracy, CHANCE)
                                                  for p in rows.itertuples()}
    return pd.DataFrame(cols).rename_axis("seed")


@register.study("s6")
class WarmupStability(Study):
    """S6 (Kalra & Barkeshli): why warmup works, through stability limits and sharpness during warmup."""

    claims = CLAIMS
    sizes = {"images": 100, "iters": ITERS, "bn": "batch"}
    columns = ("optim.lr", "warmup.length")

    def analyze(self, r: Report, *, images: int, iters: int, bn: str) -> pd.DataFrame:
        """Largest stable eta_trgt per optimizer, warmup start (0 or the loss-catapult LR) and warmup length
        (stable: done, final train loss below its start, and final test accuracy above chance + CHANCE_MARGIN,
        i.e. not `unstable`: a net stuck at chance is not stable); sharpness (top Hessian eigenvalue with BN as
        `bn` says, Lanczos to its default tolerance, at most `iters` steps) at the checkpoints through warmup;
        all per seed; returns the per-seed frame of the claims."""
        test = benchmark.final_test_accuracy(r.metrics)
        m = r.metrics[r.metrics.split == "train"].sort_values("iteration")
        rows = []
        for _, p in r.points.iterrows():
            part = m[m.trial_id == p.trial_id]
            state = r.status(p.trial_id)
            row = {"trial_id": p.trial_id, "optimizer": p.get("optim.name", r.config(p.trial_id)["optim"]["name"]),
                   "seed": p.seed, "eta_trgt": p["optim.lr"], "warmup": p["warmup.length"],
                   "start": "catapult" if p.get("warmup.eta_init") == "catapult" else "0",
                   "eta_init": float(state.get("eta_init", 0.0)), "state": state.get("state", "pending"),
                   "loss_start": part.loss.iloc[0], "loss_end": part.loss.iloc[-1],
                   "final_accuracy": test.get(p.trial_id, float("nan"))}
            rows.append({**row, "stable": is_stable(row["state"], row["loss_start"], row["loss_end"],
                                                    row["final_accuracy"])})
        grid = r.table("stability", pd.DataFrame(rows))
        keys = ["optimizer", "start", "warmup"]
        best = r.table("largest_stable", grid[grid.stable].groupby([*keys, "seed"]).eta_trgt.max().reset_index())
        plots.lines(best, "warmup", "eta_trgt", r.figure("largest_stable_lr"), by=["optimizer", "start"], logy=True,
                    over="seed", title="largest stable eta_trgt per warmup length (start: 0 or the catapult LR)")
        r.say("## Stability grid", "", grid.drop(columns="trial_id").to_markdown(index=False, floatfmt=".4g"), "",
              "## Largest stable eta_trgt per warmup length", "", best.to_markdown(index=False, floatfmt=".4g"), "")
        ckpts, inits, same_init = [], {}, {}  # iteration 0 is the same weights for the same seed and model
        for tid in r.points.trial_id:
            cfg = r.config(tid)
            init = inits.setdefault(json.dumps([cfg["seed"], cfg["model"]], sort_keys=True), tid)
            same_init[tid] = init
            ckpts += [r.ckpt(tid, checkpoint_name(i)) for i in r.iter_ckpts(tid) if i > 0 or init == tid]
        cs = r.open(*ckpts)
        train = cs.batches("train", images)
        sharp = sharpness(cs.by_id(), train, iters=iters, device=cs.device, bn=bn)
        cs.write_each("sharpness", sharp, ["ckpt"], method="lanczos", iters=iters, tol=TOL, probes=0, images=len(train),
                      bn=bn)
        sharp = sharp.assign(trial_id=sharp.ckpt.str.split("/").str[0])
        at0 = sharp[sharp.iteration == 0].set_index("trial_id")
        sharp = pd.concat([sharp[sharp.iteration > 0]] + [at0.loc[[init]].reset_index().assign(trial_id=tid)
                                                          for tid, init in same_init.items() if init in at0.index])
        sharp = sharp.merge(grid[["trial_id", *keys, "seed", "eta_trgt"]], on="trial_id")
        sharp = r.table("sharpness", sharp[["trial_id", *keys, "seed", "eta_trgt", "iteration", "top_eigenvalue"]]
                        .sort_values([*keys, "eta_trgt", "seed", "iteration"]))
        plots.lines(sharp, "iteration", "top_eigenvalue", r.figure("sharpness"), by=[*keys, "eta_trgt"], logy=True,
                    over="seed", title="top Hessian eigenvalue through warmup")
        r.say("## Sharpness (top Hessian eigenvalue) through warmup (mean over seeds)", "",
              sharp.pivot_table(index=[*keys, "eta_trgt"], columns="iteration", values="top_eigenvalue")
              .to_markdown(floatfmt=".3g"), "")
        frame = per_seed_limits(best)
        sgd = sharp[(sharp.optimizer == "sgd") & (sharp.start == "0") & (sharp.warmup > 0)]
        sgd = sgd[(sgd.warmup == sgd.warmup.max()) & (sgd.iteration == sgd.warmup)].merge(
            best[["optimizer", "start", "warmup", "seed", "eta_trgt"]], on=["optimizer", "start", "warmup", "seed",
                                                                              "eta_trgt"])
        if len(sgd):
            frame = frame.join(sgd.set_index("seed").eval("eta_trgt * top_eigenvalue").rename("sgd_eta_sharpness"),
                               how="outer")
        frame = frame.join(unstable_at_top_lr(grid), how="outer")
        return frame
