"""S6 (Kalra & Barkeshli): why warmup works, through stability limits and sharpness during warmup."""
from __future__ import annotations

import json

import pandas as pd

from analysis import plots
from analysis.report import Report
from analysis.sharpness import ITERS, TOL, sharpness
from harness.layout import checkpoint_name


def report_warmup_stability(r: Report, images: int = 100, iters: int = ITERS) -> None:
    """Largest stable eta_trgt per optimizer, warmup start (0 or the loss-catapult LR) and warmup length
    (stable: not diverged and final train loss below its start); sharpness (top Hessian eigenvalue, Lanczos to
    its default tolerance, at most `iters` steps) at the checkpoints through warmup."""
    m = r.metrics[r.metrics.split == "train"].sort_values("iteration")
    rows = []
    for _, p in r.points.iterrows():
        part = m[m.trial_id == p.trial_id]
        state = r.status(p.trial_id)
        rows.append({"trial_id": p.trial_id, "optimizer": p.get("optim.name", r.config(p.trial_id)["optim"]["name"]),
                     "eta_trgt": p["optim.lr"], "warmup": p["warmup.length"],
                     "start": "catapult" if p.get("warmup.eta_init") == "catapult" else "0",
                     "eta_init": float(state.get("eta_init", 0.0)), "state": state.get("state", "pending"),
                     "loss_start": part.loss.iloc[0], "loss_end": part.loss.iloc[-1],
                     "stable": state.get("state") == "done" and part.loss.iloc[-1] < part.loss.iloc[0]})
    grid = r.table("stability", pd.DataFrame(rows))
    keys = ["optimizer", "start", "warmup"]
    best = r.table("largest_stable", grid[grid.stable].groupby(keys).eta_trgt.max().reset_index())
    plots.lines(best, "warmup", "eta_trgt", r.figure("largest_stable_lr"), by=["optimizer", "start"], logy=True,
                title="largest stable eta_trgt per warmup length (start: 0 or the catapult LR)")
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
    sharp = sharpness(cs.by_id(), train, iters=iters, device=cs.device)
    cs.write_each("sharpness", sharp, ["ckpt"], method="lanczos", iters=iters, tol=TOL, probes=0, images=len(train))
    sharp = sharp.assign(trial_id=sharp.ckpt.str.split("/").str[0])
    at0 = sharp[sharp.iteration == 0].set_index("trial_id")
    sharp = pd.concat([sharp[sharp.iteration > 0]] + [at0.loc[[init]].reset_index().assign(trial_id=tid)
                                                      for tid, init in same_init.items() if init in at0.index])
    sharp = sharp.merge(grid[["trial_id", *keys, "eta_trgt"]], on="trial_id")
    sharp = r.table("sharpness", sharp[["trial_id", *keys, "eta_trgt", "iteration", "top_eigenvalue"]]
                    .sort_values([*keys, "eta_trgt", "iteration"]))
    plots.lines(sharp, "iteration", "top_eigenvalue", r.figure("sharpness"), by=[*keys, "eta_trgt"], logy=True,
                title="top Hessian eigenvalue through warmup")
    r.say("## Sharpness (top Hessian eigenvalue) through warmup", "",
          sharp.pivot_table(index=[*keys, "eta_trgt"], columns="iteration", values="top_eigenvalue")
          .to_markdown(floatfmt=".3g"), "")
