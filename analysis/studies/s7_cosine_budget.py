"""S7 (closer look, footnote 4): cosine, SGDR and step schedules at one budget; SWA of the SGDR cycle ends."""
from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.claims import DIFFERENCE, Claim, above
from analysis.report import Report, accuracy_curves, over_seeds, per_seed, swa_accuracy
from analysis.study import Study
from harness.registry import register

CLAIMS = [
    Claim("s7", "cosine_beats_step", "A cosine decay over the entire budget consistently performed well "
          "(footnote 4).", "final test accuracy, cosine minus step decay", ("cosine", "step"), above(0.0),
          bounds=DIFFERENCE),
    Claim("s7", "linear_beats_step", "So did a linear decay over the entire budget (footnote 4).",
          "final test accuracy, linear minus step decay", ("linear", "step"), above(0.0), bounds=DIFFERENCE),
    Claim("s7", "decay_not_restarts", "The decay, and less so the restarts, plays the major role (footnote 4): "
          "cosine over the budget is no worse than SGDR (by more than 1 point).",
          "final test accuracy, cosine minus SGDR", ("cosine", "sgdr"), above(-0.01), bounds=DIFFERENCE),
    Claim("s7", "swa_on_sgdr", "Averaging iterates of the SGDR trajectory generalizes better than its last iterate "
          "(sec. 3: the region between W70 and W150 has lower validation loss).",
          "test accuracy on the report's images, SWA of the SGDR cycle ends minus SGDR's last iterate",
          ("sgdr_swa_accuracy", "sgdr_last_accuracy"), above(0.0), bounds=DIFFERENCE),
]


@register.study("s7")
class CosineBudget(Study):
    """S7 (closer look, footnote 4): cosine, SGDR and step schedules at one budget; SWA of the SGDR cycle ends."""

    claims = CLAIMS
    sizes = {"images": 200}
    columns = ("schedule.name",)

    def analyze(self, r: Report, *, images: int) -> pd.DataFrame:
        """Final accuracy per schedule over seeds; per seed, SWA of the SGDR iterates vs its last iterate on the first
        `images` test images; returns the per-seed frame of the claims."""
        acc = accuracy_curves(r, "schedule.name")
        stats = over_seeds(r, acc, "schedule.name", "accuracy_by_schedule")
        plots.lines(acc, "schedule.name", "final_accuracy", r.figure("final_accuracy"), over="seed",
                    title="final test accuracy (mean over seeds, 95% band)")
        r.say("## Final test accuracy per schedule (mean over seeds, 95% t interval)", "",
              stats.to_markdown(index=False, floatfmt=".4f"), "")
        frame = per_seed(acc, "schedule.name")
        averaged = []
        for _, p in r.points[r.points["schedule.name"] == "sgdr"].iterrows():
            if r.state(p.trial_id) != "done":
                continue
            trial = r.run.trial(p.trial_id)
            ckpts = trial.epoch_ckpts() or trial.iter_ckpts()[1:]  # not iteration 0
            swa, last = swa_accuracy(r, ckpts, images)
            averaged.append({"trial_id": p.trial_id, "seed": p.seed, "averaged": ", ".join(c.stem for c in ckpts),
                             "swa_accuracy": swa, "last_accuracy": last})
        if averaged:
            swa = r.table("sgdr_swa", pd.DataFrame(averaged))
            plots.lines(swa.melt(id_vars=["seed"], value_vars=["last_accuracy", "swa_accuracy"]), "variable", "value",
                        r.figure("sgdr_swa"), over="seed", title="SGDR: last iterate vs SWA of the cycle ends")
            r.say("## SWA of the SGDR cycle ends", "", swa.to_markdown(index=False, floatfmt=".4f"), "")
            frame = frame.join(swa.set_index("seed")[["swa_accuracy", "last_accuracy"]].add_prefix("sgdr_"))
        return frame
