"""S2 (closer look, sec. 3, appendix 8-9): SGDR vs step decay seen through curves, planes and SVCCA."""
from __future__ import annotations

from analysis import plots
from analysis.landscape import plane
from analysis.report import Report, accuracy_curves, connect, similarity


def report_sgdr(r: Report, curve_epochs: tuple[int, ...] = (2,), images: int = 100, t_points: int = 5,
                grid: int = 5, inputs: int = 200) -> None:
    """Curves vs segments between iterates W_k, the plane through W70, W150 and their bend (other iterates
    projected), SVCCA of W10 vs W150 and W150 vs W155 (SGDR)."""
    acc = accuracy_curves(r, "tags.schedule")
    r.say("## Final test accuracy", "", acc.to_markdown(index=False, floatfmt=".4f"), "")
    pairs = {"sgdr": [(30, 70), (70, 150), (30, 150)], "step": [(55, 65), (145, 165), (55, 165)]}
    runs = [(p["tags.schedule"] + ("_bn" if p.get("model.bn") else ""), p["tags.schedule"], p.trial_id)
            for _, p in r.points.iterrows()]
    bends = connect(r, [(f"{tag}_W{i}-W{j}", r.at(tid, i), r.at(tid, j)) for tag, sched, tid in runs
                        for i, j in pairs[sched]], curve_epochs, images, t_points)
    for tag, _, tid in [run for run in runs if run[1] == "sgdr"]:
        cs = r.open(r.at(tid, 70), r.at(tid, 150), bends[f"{tag}_W70-W150"], *[r.at(tid, k) for k in (10, 30, 155)])
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
        for i, j in [(10, 150), (150, 155)]:
            rows = similarity(r, r.at(tid, i), r.at(tid, j), inputs)
            plots.similarity_heatmap(rows, r.figure(f"cca_{tag}_W{i}_vs_W{j}"), f"SVCCA {tag}: W{i} vs W{j}")
            r.table(f"cca_{tag}_W{i}_vs_W{j}", rows)
