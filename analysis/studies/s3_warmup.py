"""S3 (closer look, sec. 4): warmup, large batches and freezing the FC stack, seen through SVCCA."""
from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.report import Report, accuracy_curves, similarity
from harness.layout import checkpoint_name


def report_warmup(r: Report, inputs: int = 360) -> None:
    """Accuracy of SB / LB / LB+warmup / LB+freeze; SVCCA, next to its permutation null, of iteration 0 vs the
    end of warmup (and, for LB+warmup, the end of warmup vs the last checkpoint). The default `inputs` is the
    quickstart's whole test split (digits: 360 images)."""
    acc = accuracy_curves(r, "tags.run")
    r.say("## Accuracy (test split)", "", acc.to_markdown(index=False, floatfmt=".4f"), "")
    diagonals = []
    for _, p in r.points.iterrows():
        tid, run = p.trial_id, p["tags.run"]
        iters = r.iter_ckpts(tid)
        if len(iters) < 2 or iters[0] != 0:
            r.say(f"- {run}: no pair of checkpoints for CCA ({r.state(tid)}; iterations {iters})")
            continue
        w, end = iters[1], iters[-1]
        pairs = [(0, w)] + ([(w, end)] if run == "lb_warmup" and end > w else [])
        for i, j in pairs:
            rows = similarity(r, r.ckpt(tid, checkpoint_name(i)), r.ckpt(tid, checkpoint_name(j)), inputs)
            plots.similarity_heatmap(rows, r.figure(f"cca_{run}_iter{i}_vs_iter{j}"),
                                     f"SVCCA {run}: iter {i} vs iter {j}")
            diag = rows[rows.index_a == rows.index_b].drop(columns=["layer_b", "index_b"])
            diagonals.append(diag.assign(run=run, pair=f"iter{i}-iter{j}"))
    if diagonals:
        diag = r.table("cca_diagonal", pd.concat(diagonals, ignore_index=True))
        first = diag[diag.pair.str.startswith("iter0-")]
        plots.diagonal_lines(first, r.figure("cca_diagonal"), by=["run"],
                             title="per-layer SVCCA and its permutation null, iter 0 vs end of warmup")
        wide = first.pivot_table(index="layer_a", columns="run", values=["similarity", "null_mean"], sort=False)
        wide = pd.concat({f"{run}{suffix}": wide[value, run] for run in first.run.unique()
                          for value, suffix in (("similarity", ""), ("null_mean", " null"))}, axis=1)
        flags = first.groupby("layer_a", sort=False).agg(n=("n", "max"), underdetermined=("underdetermined", "any"))
        r.say("## Per-layer SVCCA, iter 0 vs end of warmup / freeze", "",
              "Each run's SVCCA, then its null (mean over shuffles of one side's rows); n data points per pair; "
              "underdetermined: n < 10 (d_a + d_b) after SVD truncation in some run.", "",
              wide.join(flags).to_markdown(floatfmt=".3f"), "")
