"""S5 (Sadrtdinov, Kodryan et al.): regimes of the pre-training learning rate, and what fine-tuning,
SWA, angles, error barriers and frequency bands show about each."""
from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.frequency import frequency
from analysis.geometry import geometry, segments
from analysis.report import Report, accuracy_curves, swa_accuracy
from harness.layout import run_of_checkpoint


def regimes(r: Report) -> pd.DataFrame:
    """Regime per pre-training LR, by the rule in sweeps/s5_pretrain.yaml: 3 if diverged or train accuracy
    below 1.5x chance (CIFAR-10), 1 if train loss fell below 1% of its start, else 2 (2A / 2B below / above
    the geometric middle of the regime-2 PLRs)."""
    m = r.metrics[r.metrics.split == "train"].sort_values("iteration")
    rows = []
    for _, p in r.points.iterrows():
        part = m[m.trial_id == p.trial_id]
        ev = part[part.kind == "eval"]
        acc = ev.accuracy.iloc[-1] if len(ev) else float("nan")
        start, end = part.loss.iloc[0], ev.loss.iloc[-1] if len(ev) else float("nan")
        regime = ("3" if r.state(p.trial_id) == "diverged" or not acc >= 0.15 else "1" if end < 0.01 * start else "2")
        rows.append({"plr": p["optim.lr"], "trial_id": p.trial_id, "state": r.state(p.trial_id), "train_accuracy": acc,
                     "train_loss_start": start, "train_loss_end": end, "regime": regime})
    df = pd.DataFrame(rows).sort_values("plr")
    two = df[df.regime == "2"].plr
    if len(two):
        middle = (two.min() * two.max()) ** 0.5
        df.loc[df.regime == "2", "regime"] = ["2A" if v <= middle else "2B" for v in two]
    return df


def report_lr_regimes(r: Report, images: int = 100, t_points: int = 5) -> None:
    """Regimes of the pre-training LR, SWA of each pre-trained point's last checkpoints and, on the fine-tuning
    sweep, test accuracy per (PLR, FLR), angles and error barriers between solutions fine-tuned from neighbouring
    PLRs (smallest FLR) and their accuracy per frequency band."""
    fine = "model.init_from" in r.points
    pre = Report(run_of_checkpoint(r.run.reference(r.points["model.init_from"].iloc[0])).path) if fine else r
    reg = r.table("regimes", regimes(pre))
    r.say("## Pre-training regimes", "", reg.drop(columns="trial_id").to_markdown(index=False, floatfmt=".4g"), "")
    averaged = []
    for _, p in reg.iterrows():
        ckpts = pre.run.trial(p.trial_id).epoch_ckpts()
        if p.state != "done" or not ckpts:
            continue
        test = pre.metrics[(pre.metrics.trial_id == p.trial_id) & (pre.metrics.split == "test")]
        averaged += [{"plr": p.plr, "regime": p.regime, "model": "swa", "accuracy": swa_accuracy(r, ckpts, images)},
                     {"plr": p.plr, "regime": p.regime, "model": "last",
                      "accuracy": test.sort_values("iteration").accuracy.iloc[-1]}]
    if averaged:
        swa = r.table("swa", pd.DataFrame(averaged))
        plots.lines(swa, "plr", "accuracy", r.figure("swa_vs_plr"), by=["model"],
                    title="SWA of the last pre-training checkpoints")
        wide = swa.pivot_table(index=["plr", "regime"], columns="model", values="accuracy")
        r.say("## SWA of the last pre-training checkpoints (test accuracy)", "", wide.to_markdown(floatfmt=".4f"), "")
    if not fine:
        return
    acc = accuracy_curves(r, "tags.plr").merge(r.points[["trial_id", "optim.lr"]], on="trial_id")
    label = {row.plr: f"{row.plr:g} [{row.regime}]" for row in reg.itertuples()}
    heat = acc.pivot_table(index="tags.plr", columns="optim.lr", values="final_accuracy")
    plots.heatmap(heat.values, [label.get(v, f"{v:g}") for v in heat.index], [f"{v:g}" for v in heat.columns],
                  r.figure("accuracy_plr_flr"), "test accuracy after fine-tuning [regime]", "FLR", "PLR")
    r.say("## Test accuracy per (PLR, FLR)", "", heat.to_markdown(floatfmt=".4f"), "")
    flr = r.points["optim.lr"].min()
    tuned = [(p["tags.plr"], r.final_ckpt(p.trial_id)) for _, p in r.points[r.points["optim.lr"] == flr]
             .sort_values("tags.plr").iterrows()]
    tuned = [(plr, c) for plr, c in tuned if c is not None]
    if len(tuned) >= 2:
        paths = [c for _, c in tuned]
        cs = r.open(*paths)
        model, states, splits = cs.model(0), cs.states(), cs.splits(images, images)
        dist = geometry(model, states, "consecutive")
        along, bars = segments(model, states, splits, splits["train"], "consecutive", t_points)
        for kind, rows in (("geometry", dist), ("interpolation", along), ("error_barrier", bars)):
            cs.write_each(kind, rows, ["ckpt_a", "ckpt_b"])
        plr = dict(zip(cs.ids, [f"{v:g}" for v, _ in tuned]))
        geo = (dist.query("group == 'all'")[["ckpt_a", "ckpt_b", "angle_deg", "distance"]]
               .merge(bars.query("split == 'test'")[["ckpt_a", "ckpt_b", "error_barrier"]], on=["ckpt_a", "ckpt_b"]))
        geo.insert(0, "plr_pair", geo.ckpt_a.map(plr) + "-" + geo.ckpt_b.map(plr))
        geo = r.table("geometry", geo.drop(columns=["ckpt_a", "ckpt_b"]).assign(flr=flr))
        plots.lines(geo.melt(id_vars=["plr_pair"], value_vars=["angle_deg", "error_barrier"]), "plr_pair", "value",
                    r.figure("geometry"), by=["variable"], title=f"fine-tuned at FLR {flr:g}, neighbouring PLRs")
        r.say(f"## Neighbouring fine-tuned solutions (FLR {flr:g}): angle and test error barrier", "",
              geo.to_markdown(index=False, floatfmt=".3f"), "")
    if tuned:
        cs = r.open(*[c for _, c in tuned])
        test = cs.batches("test", images)
        freq = frequency(cs.by_id(), test, device=cs.device)
        cs.write_each("frequency", freq, ["ckpt"], cutoffs=[1 / 3, 2 / 3], box=0.5, images=len(test))
        freq = freq.assign(plr=freq.ckpt.map(dict(zip(cs.ids, [v for v, _ in tuned]))))[["plr", "variant", "accuracy"]]
        r.table("frequency", freq)
        plots.lines(freq, "variant", "accuracy", r.figure("frequency"), by=["plr"],
                    title=f"accuracy per frequency band (FLR {flr:g})")
        r.say("## Accuracy per frequency band", "", freq.pivot(index="plr", columns="variant", values="accuracy")
              .to_markdown(floatfmt=".4f"), "")
