"""S5 (Sadrtdinov, Kodryan et al.): regimes of the pre-training learning rate, and what fine-tuning,
SWA, angles, error barriers and frequency bands show about each."""
from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.claims import DIFFERENCE, Claim, above
from analysis.frequency import frequency
from analysis.geometry import geometry, segments
from analysis.report import Report, accuracy_curves, swa_accuracy
from analysis.study import Study
from harness.layout import run_of_checkpoint
from harness.registry import register

CLAIMS = [
    Claim("s5", "2A_beats_1_finetuned", "Only a narrow range of initial LRs slightly above the convergence threshold "
          "(regime 2A) leads to optimal results after fine-tuning with a small LR (abstract): better than "
          "converging LRs (regime 1).", "best fine-tuned test accuracy over (PLR in 2A, FLR) minus over (PLR in 1, "
          "FLR), per pre-training seed", ("finetuned_2A", "finetuned_1"), above(0.0), bounds=DIFFERENCE),
    Claim("s5", "2A_beats_2B_finetuned", "... and better than higher LRs of the chaotic regime (2B) (abstract).",
          "best fine-tuned test accuracy, 2A minus 2B, per pre-training seed", ("finetuned_2A", "finetuned_2B"),
          above(0.0), bounds=DIFFERENCE),
    Claim("s5", "2A_beats_3_finetuned", "Too large initial LRs (divergence, regime 3) fail to find a basin with good "
          "solutions (abstract).", "best fine-tuned test accuracy, 2A minus 3, per pre-training seed",
          ("finetuned_2A", "finetuned_3"), above(0.0), bounds=DIFFERENCE),
    Claim("s5", "2A_beats_1_swa", "The same holds for weight averaging (abstract: 'after fine-tuning with a small LR "
          "or weight averaging').", "best SWA test accuracy over PLRs in 2A minus over PLRs in 1, per seed",
          ("swa_2A", "swa_1"), above(0.0), bounds=DIFFERENCE),
]


def regimes(r: Report) -> pd.DataFrame:
    """Regime per (seed, pre-training LR), by the rule in sweeps/s5_pretrain.yaml: 3 if diverged or train
    accuracy below 1.5x chance (CIFAR-10), 1 if train loss fell below 1% of its start, else 2 (2A / 2B below /
    above the geometric middle of the seed's regime-2 PLRs)."""
    m = r.metrics[r.metrics.split == "train"].sort_values("iteration")
    rows = []
    for _, p in r.points.iterrows():
        part = m[m.trial_id == p.trial_id]
        ev = part[part.kind == "eval"]
        acc = ev.accuracy.iloc[-1] if len(ev) else float("nan")
        start, end = part.loss.iloc[0], ev.loss.iloc[-1] if len(ev) else float("nan")
        regime = ("3" if r.state(p.trial_id) == "diverged" or not acc >= 0.15 else "1" if end < 0.01 * start else "2")
        rows.append({"plr": p["optim.lr"], "seed": p.seed, "trial_id": p.trial_id, "state": r.state(p.trial_id),
                     "train_accuracy": acc, "train_loss_start": start, "train_loss_end": end, "regime": regime})
    df = pd.DataFrame(rows).sort_values(["seed", "plr"]).reset_index(drop=True)
    for _, part in df[df.regime == "2"].groupby("seed"):
        middle = (part.plr.min() * part.plr.max()) ** 0.5
        df.loc[part.index, "regime"] = ["2A" if v <= middle else "2B" for v in part.plr]
    return df


def best_per_regime(rows: pd.DataFrame, value: str, prefix: str) -> pd.DataFrame:
    """Per seed (rows' `seed`), the best `value` over the rows of each regime: columns <prefix>_<regime>."""
    best = rows.groupby(["seed", "regime"])[value].max().unstack("regime")
    return best.add_prefix(prefix + "_")


@register.study("s5")
class LrRegimes(Study):
    """S5 (Sadrtdinov, Kodryan et al.): regimes of the pre-training learning rate, and what fine-tuning,"""

    claims = CLAIMS
    sizes = {"images": 100, "t_points": 5}
    columns = ("optim.lr",)

    def analyze(self, r: Report, *, images: int, t_points: int) -> pd.DataFrame:
        """Regimes of the pre-training LR per seed, SWA of each pre-trained point's last checkpoints and, on the
        fine-tuning sweep, test accuracy per (PLR, FLR), angles and error barriers between solutions fine-tuned from
        neighbouring PLRs (smallest FLR, lowest seed) and their accuracy per frequency band; returns the per-seed frame of the claims."""
        fine = "model.init_from" in r.points
        pre = Report(run_of_checkpoint(r.run.reference(r.points["model.init_from"].iloc[0])).path) if fine else r
        reg = r.table("regimes", regimes(pre))
        r.say("## Pre-training regimes", "", reg.drop(columns="trial_id").to_markdown(index=False, floatfmt=".4g"), "")
        averaged = []
        for _, p in reg.iterrows():
            ckpts = pre.run.trial(p.trial_id).epoch_ckpts()
            if p.state != "done" or not ckpts:
                continue
            swa, last = swa_accuracy(r, ckpts, images)
            averaged += [{"plr": p.plr, "seed": p.seed, "regime": p.regime, "model": model, "accuracy": acc}
                         for model, acc in (("swa", swa), ("last", last))]
        frame = pd.DataFrame(index=pd.Index(sorted(reg.seed.unique()), name="seed"))
        if averaged:
            swa = r.table("swa", pd.DataFrame(averaged))
            plots.lines(swa, "plr", "accuracy", r.figure("swa_vs_plr"), by=["model"], over="seed",
                        title="SWA of the last pre-training checkpoints vs the last one (same test images)")
            wide = swa.pivot_table(index=["plr", "regime"], columns="model", values="accuracy")
            r.say("## SWA of the last pre-training checkpoints vs the last one (test accuracy on the same images, "
                  "mean over seeds)", "", wide.to_markdown(floatfmt=".4f"), "")
            frame = frame.join(best_per_regime(swa[swa.model == "swa"], "accuracy", "swa"))
        if fine:
            frame = frame.join(report_finetuned(r, reg, images, t_points))
        return frame


def report_finetuned(r: Report, reg: pd.DataFrame, images: int, t_points: int) -> pd.DataFrame:
    """The fine-tuning sweep's part of the S5 report; returns the per-seed best fine-tuned accuracy per regime
    (finetuned_<regime>; a fine-tuned trial's seed and regime are those of the pre-trained point it starts from)."""
    origin = {ref: reg.set_index("trial_id").loc[r.run.reference(ref).parents[1].name]
              for ref in r.points["model.init_from"].unique()}
    acc = accuracy_curves(r, "tags.plr").merge(r.points[["trial_id", "optim.lr", "model.init_from"]], on="trial_id")
    acc = acc.drop(columns="seed").assign(seed=[origin[ref].seed for ref in acc["model.init_from"]],
                                          regime=[origin[ref].regime for ref in acc["model.init_from"]])
    first = reg[reg.seed == reg.seed.min()]
    label = {row.plr: f"{row.plr:g} [{row.regime}]" for row in first.itertuples()}
    heat = acc.pivot_table(index="tags.plr", columns="optim.lr", values="final_accuracy")
    plots.heatmap(heat.values, [label.get(v, f"{v:g}") for v in heat.index], [f"{v:g}" for v in heat.columns],
                  r.figure("accuracy_plr_flr"), "test accuracy after fine-tuning [regime]", "FLR", "PLR")
    r.say("## Test accuracy per (PLR, FLR), mean over seeds (regimes of the lowest seed)", "",
          heat.to_markdown(floatfmt=".4f"), "")
    flr, seed_of = r.points["optim.lr"].min(), acc.set_index("trial_id").seed
    chosen = r.points[(r.points["optim.lr"] == flr) & (r.points.trial_id.map(seed_of) == seed_of.min())]
    tuned = [(p["tags.plr"], r.final_ckpt(p.trial_id)) for _, p in chosen.sort_values("tags.plr").iterrows()]
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
    return best_per_regime(acc, "final_accuracy", "finetuned")



