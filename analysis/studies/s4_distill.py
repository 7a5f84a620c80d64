"""S4 (closer look, sec. 5): does distillation make a student's representations closer to its teacher's?"""
from __future__ import annotations

from analysis import plots
from analysis.report import Report, accuracy_curves, over_seeds, similarity
from harness.errors import ConfigError


def report_distill(r: Report, inputs: int = 200) -> None:
    """Distilled vs hard-label students: accuracy over seeds, SVCCA (with its permutation null) of every student
    layer against every teacher layer (lowest seed where both students finished) and the absolute difference of
    the two heatmaps."""
    if "distill" not in r.points:
        raise ConfigError(f"{r.name}: the S4 report runs on the students' sweep (the one that sets distill.teacher)")
    acc = accuracy_curves(r, "tags.student", split="val")
    stats = over_seeds(r, acc, "tags.student", "accuracy_by_student")
    r.say("## Validation accuracy over seeds (paper: best 85.18% distilled vs 83.01% hard labels)", "",
          stats.to_markdown(index=False, floatfmt=".4f"), "")
    teacher = r.run.reference(r.points.dropna(subset=["distill"]).distill.iloc[0]["teacher"])
    finished = r.points.assign(final=[r.final_ckpt(t) for t in r.points.trial_id]).dropna(subset=["final"])
    seeds = sorted(s for s, g in finished.groupby("seed") if set(g["tags.student"]) >= {"distilled", "hard_labels"})
    if not seeds:
        r.say("No seed has both students finished (diverged or still running): no SVCCA against the teacher.")
        return
    heat = {}
    for _, p in finished[finished.seed == seeds[0]].iterrows():
        heat[p["tags.student"]] = rows = similarity(r, p.final, teacher, inputs)
        plots.similarity_heatmap(rows, r.figure(f"cca_{p['tags.student']}_vs_teacher"),
                                 f"SVCCA student ({p['tags.student']}) x teacher")
    keys = ["index_a", "index_b", "layer_a", "layer_b"]
    values = keys + ["similarity", "null_mean"]
    diff = heat["distilled"][values].merge(heat["hard_labels"][values], on=keys,
                                           suffixes=("_distilled", "_hard_labels"))
    diff["similarity"] = (diff.similarity_distilled - diff.similarity_hard_labels).abs()
    plots.similarity_heatmap(diff, r.figure("cca_abs_difference"), "|SVCCA distilled - SVCCA hard labels|")
    r.table("cca_students_vs_teacher", diff)
    top = diff.sort_values("similarity", ascending=False).head(5)
    r.say("## Largest |SVCCA distilled - hard labels| (student layer x teacher layer)", "",
          "Each SVCCA next to its permutation null (null_mean: one side's rows shuffled).", "",
          top[["layer_a", "layer_b", "similarity_distilled", "null_mean_distilled", "similarity_hard_labels",
               "null_mean_hard_labels", "similarity"]]
          .to_markdown(index=False, floatfmt=".3f"), "")
