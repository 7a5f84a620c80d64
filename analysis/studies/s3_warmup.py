"""S3 (closer look, sec. 4): warmup, large batches and freezing the FC stack, seen through SVCCA."""
from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.claims import DIFFERENCE, Claim, RateClaim, above, within
from analysis.progress import Progress
from analysis.report import Report, accuracy_curves, outcomes, over_seeds, similarity
from analysis.study import Study
from harness.layout import checkpoint_name
from harness.registry import register

CLAIMS = [
    Claim("s3", "warmup_helps_lb", "Warmup is what lets large-batch training use the linearly scaled learning rate "
          "without instability (sec. 4, after Goyal et al.): LB + warmup ends above LB without warmup (Fig. 4a).",
          "final test accuracy, LB + warmup minus LB", ("lb_warmup", "lb"), above(0.0), bounds=DIFFERENCE),
    Claim("s3", "lb_warmup_matches_sb", "With warmup, the large batch reaches the small batch's accuracy (Fig. 4a).",
          "final test accuracy, LB + warmup minus SB", ("lb_warmup", "sb"), within(0.02), bounds=DIFFERENCE),
    Claim("s3", "warmup_keeps_fc", "Warmup avoids unstably large changes in the FC stack: its layers' similarity "
          "between iteration 0 and the end of warmup is higher with warmup than in LB without (Fig. 4c, 5).",
          "SVCCA minus its permutation null, mean over the FC-stack layers, iter 0 vs end of warmup: LB + warmup "
          "minus LB", ("fc_lb_warmup", "fc_lb"), above(0.0)),
    Claim("s3", "freeze_like_warmup", "Freezing the FC stack instead of warming up gives comparable performance "
          "(Fig. 4d; sec. 6: 'comparable training performance').",
          "final test accuracy, LB + FC freeze minus LB + warmup", ("lb_freeze", "lb_warmup"), within(0.02), bounds=DIFFERENCE),
    RateClaim("s3", "warmup_lowers_instability", "Warmup is what lets large-batch training use the linearly scaled "
              "learning rate without instability (sec. 4): LB + warmup is unstable on fewer seeds than LB.",
              "rate of unstable seeds (diverged, or final test accuracy <= chance + 0.1), LB + warmup vs LB",
              ("unstable_lb_warmup", "unstable_lb")),
    RateClaim("s3", "freeze_lowers_instability", "Freezing the FC stack instead of warming up also avoids the "
              "instability (Fig. 4d, sec. 6): LB + FC freeze is unstable on fewer seeds than LB.",
              "rate of unstable seeds (diverged, or final test accuracy <= chance + 0.1), LB + FC freeze vs LB",
              ("unstable_lb_freeze", "unstable_lb")),
]
CHANCE = 0.1  # 10 classes (CIFAR-10, digits)


def is_fc(layer: str) -> bool:
    """A layer of the FC stack (VGG's classifier, ResNet's fc)."""
    return layer.startswith("classifier") or layer == "fc"


@register.study("s3")
@register.study("quickstart")
class Warmup(Study):
    """S3 (closer look, sec. 4): warmup, large batches and freezing the FC stack, seen through SVCCA."""

    claims = CLAIMS
    sizes = {"inputs": 360}
    columns = ("tags.run",)

    def analyze(self, r: Report, *, inputs: int) -> pd.DataFrame:
        """Accuracy of SB / LB / LB+warmup / LB+freeze over seeds; SVCCA, next to its permutation null, of
        iteration 0 vs the end of warmup: layer x layer heatmaps for the lowest seed (with, for LB+warmup, the end of
        warmup vs the last checkpoint), the per-layer diagonal for every seed; returns the per-seed frame of the claims. The default
        `inputs` is the quickstart's whole test split (digits: 360 images)."""
        acc = accuracy_curves(r, "tags.run")
        stats = over_seeds(r, acc, "tags.run", "accuracy_by_run")
        r.say("## Test accuracy over seeds (mean, 95% t interval)", "", stats.to_markdown(index=False, floatfmt=".4f"),
              "", "Per trial:", "", acc.to_markdown(index=False, floatfmt=".4f"), "")
        diagonals, first_seed = [], r.points.seed.min()
        progress = Progress(len(r.points), "SVCCA: trials", every_s=30.0)
        for _, p in r.points.iterrows():
            tid, run = p.trial_id, p["tags.run"]
            iters = r.iter_ckpts(tid)
            if len(iters) < 2 or iters[0] != 0:
                r.say(f"- {run}, seed {p.seed}: no pair of checkpoints for CCA ({r.state(tid)}; iterations {iters})")
                progress.step()
                continue
            w, end, first = iters[1], iters[-1], p.seed == first_seed
            pairs = [(0, w)] + ([(w, end)] if first and run == "lb_warmup" and end > w else [])
            for i, j in pairs:
                rows = similarity(r, r.ckpt(tid, checkpoint_name(i)), r.ckpt(tid, checkpoint_name(j)), inputs,
                                  diagonal=not first)
                if first:
                    plots.similarity_heatmap(rows, r.figure(f"cca_{run}_iter{i}_vs_iter{j}"),
                                             f"SVCCA {run} (seed {p.seed}): iter {i} vs iter {j}", f"iter {j}", f"iter {i}")
                diag = rows[rows.index_a == rows.index_b].drop(columns=["layer_b", "index_b"])
                diagonals.append(diag.assign(run=run, seed=p.seed, pair=f"iter{i}-iter{j}"))
            progress.step()
        frame = outcomes(acc, "tags.run", CHANCE)
        if diagonals:
            diag = r.table("cca_diagonal", pd.concat(diagonals, ignore_index=True))
            first = diag[diag.pair.str.startswith("iter0-")]
            plots.diagonal_lines(first, r.figure("cca_diagonal"), by=["run"], over="seed",
                                 title="per-layer SVCCA and its permutation null, iter 0 vs end of warmup")
            wide = first.pivot_table(index="layer_a", columns="run", values=["similarity", "null_mean"], sort=False)
            wide = pd.concat({f"{run}{suffix}": wide[value, run] for run in first.run.unique()
                              for value, suffix in (("similarity", ""), ("null_mean", " null"))}, axis=1)
            flags = first.groupby("layer_a", sort=False).agg(n=("n", "max"), underdetermined=("underdetermined", "any"))
            r.say("## Per-layer SVCCA, iter 0 vs end of warmup / freeze (mean over seeds)", "",
                  "Each run's SVCCA, then its null (mean over shuffles of one side's rows); n data points per pair; "
                  "underdetermined: n < 10 (d_a + d_b) after SVD truncation in some run.", "",
                  wide.join(flags).to_markdown(floatfmt=".3f"), "")
            fc = first[first.layer_a.map(is_fc)].assign(above=lambda d: d.similarity - d.null_mean)
            frame = frame.join(fc.pivot_table(index="seed", columns="run", values="above").add_prefix("fc_"))
        return frame
