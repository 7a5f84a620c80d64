"""S2 (closer look, sec. 3, appendix 8-9): SGDR vs step decay seen through curves, planes and SVCCA."""
from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.claims import DIFFERENCE, Claim, above, below
from analysis.landscape import plane
from analysis.report import Report, accuracy_curves, connect, over_seeds, similarity
from analysis.study import Study
from harness.registry import register

BARRIER = 0.1  # nats of train loss: a barrier is a rise of more than this above the worse end
CLAIMS = [
    Claim("s2", "sgdr_barrier_W70-W150", "For {W70, W150} the training loss on the segment is much higher than at "
          f"the ends: SGDR moves over a barrier (sec. 3, Fig. 2b). Margin: {BARRIER} nats.",
          "train loss barrier on the segment W70-W150 (SGDR)", ("sgdr_W70-W150",), above(BARRIER)),
    Claim("s2", "sgdr_barrier_W30-W150", "Likewise for {W30, W150} (sec. 3, Fig. 2b).",
          "train loss barrier on the segment W30-W150 (SGDR)", ("sgdr_W30-W150",), above(BARRIER)),
    Claim("s2", "step_no_barrier", "For SGD with step decay none of the three pairs shows a training loss barrier on "
          "the segment (sec. 3, Fig. 2c).", "largest train loss barrier on the segments W55-W65, W145-W165, "
          "W55-W165 (step)", ("step_max",), below(BARRIER)),
    Claim("s2", "curve_removes_barrier", "Mode connectivity finds a curve between W70 and W150 without the barrier "
          "(Fig. 2b, MC curve).", "train loss barrier on the W70-W150 polychain at the last curve epoch (SGDR)",
          ("sgdr_W70-W150_curve",), below(BARRIER)),
    Claim("s2", "bend_below_W150", "The path found by mode connectivity has lower training loss than the iterate SGDR "
          "converges to: L(W150) > L(W70-150) (sec. 3, Fig. 3a).",
          "train loss at W150 minus at the W70-W150 bend (curve t = 0.5)", ("sgdr_bend_gain",), above(0.0)),
    Claim("s2", "bend_generalizes_worse", "Models on that curve overfit: they do not generalize as well as W70 and "
          "W150 (sec. 3, Fig. 3b).", "test error at the bend minus the mean test error of W70 and W150",
          ("sgdr_bend_test_gap",), above(0.0), bounds=DIFFERENCE),
    Claim("s2", "shallow_layers_stay", "Between W10 and W150 the shallower layers are more alike than the deeper "
          "ones, as Raghu et al. saw for SGD (sec. 3, appendix 9).", "per-layer SVCCA minus its permutation null, "
          "W10 vs W150: mean over the first half of the layers minus the second half (SGDR)", ("sgdr_cca_depth",),
          above(0.0)),
]


def last(table: pd.DataFrame, pair: str, path: str, split: str, t: float | None = None) -> pd.Series:
    """The row of `pair`, `path`, `split` (and point `t`) at the last curve epoch (the segment's is 0)."""
    rows = table[(table.pair == pair) & (table.path == path) & (table.split == split)]
    if t is not None:
        rows = rows[(rows.t - t).abs() < 1e-9]
    return rows.sort_values("curve_epoch").iloc[-1]


@register.study("s2")
class Sgdr(Study):
    """S2 (closer look, sec. 3, appendix 8-9): SGDR vs step decay seen through curves, planes and SVCCA."""

    claims = CLAIMS
    sizes = {"curve_epochs": (2,), "images": 100, "t_points": 5, "grid": 5, "inputs": 200}
    columns = ("tags.schedule",)

    def analyze(self, r: Report, *,
                curve_epochs: tuple[int, ...], images: int, t_points: int, grid: int, inputs: int) -> pd.DataFrame:
        """Curves vs segments between iterates W_k for every seed, the plane through W70, W150 and their bend (other
        iterates projected; lowest seed), SVCCA of W10 vs W150 (every seed) and W150 vs W155 (lowest seed) for SGDR;
        returns the per-seed frame of the claims. Labels get _seed<s> beyond the lowest seed."""
        acc = accuracy_curves(r, "tags.schedule")
        stats = over_seeds(r, acc, "tags.schedule", "accuracy_by_schedule")
        r.say("## Final test accuracy (mean over seeds, 95% t interval)", "", stats.to_markdown(index=False, floatfmt=".4f"),
              "")
        pairs = {"sgdr": [(30, 70), (70, 150), (30, 150)], "step": [(55, 65), (145, 165), (55, 165)]}
        first = r.points.seed.min()
        runs = [(p["tags.schedule"] + ("_bn" if p.get("model.bn") else "") + ("" if p.seed == first else f"_seed{p.seed}"),
                 p["tags.schedule"], p.trial_id, p.seed) for _, p in r.points.iterrows()]
        bends, curves, bars = connect(r, [(f"{tag}_W{i}-W{j}", r.at(tid, i), r.at(tid, j)) for tag, sched, tid, _ in runs
                                          for i, j in pairs[sched]], curve_epochs, images, t_points)
        frame = {}
        for tag, sched, tid, seed in runs:
            seg = {f"W{i}-W{j}": last(bars, f"{tag}_W{i}-W{j}", "segment", "train").loss_barrier for i, j in pairs[sched]}
            row = frame.setdefault(seed, {})
            if sched == "step":
                row["step_max"] = max(seg.values())
                continue
            label = f"{tag}_W70-W150"
            row.update({"sgdr_W70-W150": seg["W70-W150"], "sgdr_W30-W150": seg["W30-W150"],
                        "sgdr_W70-W150_curve": last(bars, label, "polychain", "train").loss_barrier})
            if t_points % 2:  # t = 0.5, the bend, is a point of the curve
                end, bend = (last(curves, label, "polychain", "train", t) for t in (1.0, 0.5))
                row["sgdr_bend_gain"] = end.loss - bend.loss
                err = {t: 1 - last(curves, label, "polychain", "test", t).accuracy for t in (0.0, 0.5, 1.0)}
                row["sgdr_bend_test_gap"] = err[0.5] - (err[0.0] + err[1.0]) / 2
            rows = similarity(r, r.at(tid, 10), r.at(tid, 150), inputs)
            diag = rows[rows.index_a == rows.index_b].sort_values("index_a")
            above_null = (diag.similarity - diag.null_mean).to_numpy()
            half = len(above_null) // 2
            row["sgdr_cca_depth"] = above_null[:half].mean() - above_null[len(above_null) - half:].mean()
            if seed != first:
                continue
            plots.similarity_heatmap(rows, r.figure(f"cca_{tag}_W10_vs_W150"), f"SVCCA {tag}: W10 vs W150")
            r.table(f"cca_{tag}_W10_vs_W150", rows)
            rows = similarity(r, r.at(tid, 150), r.at(tid, 155), inputs)
            plots.similarity_heatmap(rows, r.figure(f"cca_{tag}_W150_vs_W155"), f"SVCCA {tag}: W150 vs W155")
            r.table(f"cca_{tag}_W150_vs_W155", rows)
            cs = r.open(r.at(tid, 70), r.at(tid, 150), bends[label], *[r.at(tid, k) for k in (10, 30, 155)])
            splits = cs.splits(images, images)
            params = dict(grid=grid, margin=0.2)
            rows, where = plane(cs.model(0), cs.states(), splits, splits["train"], **params)
            cs.write("plane", rows, **params)
            cs.write("plane_points", where, **params)
            where = where.assign(label=["W70", "W150", "bend", "W10", "W30", "W155"])
            for split in ("train", "test"):
                plots.plane_contour(rows[rows.split == split], "loss", where, r.figure(f"plane_{tag}_{split}_loss"),
                                    f"{r.name}: {split} loss on the plane through W70, W150 and their bend")
            r.table(f"plane_{tag}", rows)
            r.table(f"plane_points_{tag}", where)
            r.say(f"## Plane through W70, W150 and their bend ({tag}): projected iterates", "",
                  where[["label", "x", "y", "residual"]].to_markdown(index=False, floatfmt=".3f"), "")
        return pd.DataFrame.from_dict(frame, orient="index").rename_axis("seed")
