"""S7 (closer look, footnote 4): cosine, SGDR and step schedules at one budget; SWA of the SGDR cycle ends."""
from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.report import Report, accuracy_curves, over_seeds, swa_accuracy


def report_cosine_budget(r: Report, images: int = 200) -> None:
    """Final accuracy per schedule over seeds; SWA of the SGDR iterates."""
    acc = accuracy_curves(r, "schedule.name")
    stats = over_seeds(r, acc, "schedule.name", "accuracy_by_schedule")
    plots.lines(stats, "schedule.name", "final_mean", r.figure("final_accuracy"),
                title="final test accuracy (mean over seeds)")
    r.say("## Final test accuracy per schedule", "", stats.to_markdown(index=False, floatfmt=".4f"), "")
    averaged = []
    for _, p in r.points[r.points["schedule.name"] == "sgdr"].iterrows():
        if r.state(p.trial_id) != "done":
            continue
        trial = r.run.trial(p.trial_id)
        ckpts = trial.epoch_ckpts() or trial.iter_ckpts()[1:]  # not iteration 0
        averaged.append({"trial_id": p.trial_id, "seed": p.seed, "averaged": ", ".join(c.stem for c in ckpts),
                         "swa_accuracy": swa_accuracy(r, ckpts, images),
                         "final_accuracy": acc.set_index("trial_id").final_accuracy[p.trial_id]})
    if averaged:
        swa = r.table("sgdr_swa", pd.DataFrame(averaged))
        plots.lines(swa.melt(id_vars=["seed"], value_vars=["final_accuracy", "swa_accuracy"]), "variable", "value",
                    r.figure("sgdr_swa"), by=["seed"], title="SGDR: last iterate vs SWA of the cycle ends")
        r.say("## SWA of the SGDR cycle ends", "", swa.to_markdown(index=False, floatfmt=".4f"), "")
