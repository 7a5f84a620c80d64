"""S4 (closer look, sec. 5): does distillation make a student's representations closer to its teacher's?"""
from __future__ import annotations

import pandas as pd

from analysis import benchmark, plots
from analysis.claims import DIFFERENCE, REFUSED, Claim, above
from analysis.evaluation import evaluate
from analysis.report import Report, accuracy_curves, over_seeds, per_seed, similarity
from analysis.study import Study
from analysis.studies.s3_warmup import is_fc
from harness.errors import ConfigError
from harness.registry import register

CLAIMS = [
    Claim("s4", "distill_beats_hard_labels", "Distillation helps the student: over 5 runs, best validation accuracy "
          "85.18% distilled vs 83.01% on hard labels (sec. 5).",
          "best validation accuracy, distilled minus hard-label student", ("distilled", "hard_labels"), above(0.0),
          bounds=DIFFERENCE),
    Claim("s4", "difference_in_fc_stack", "The difference distillation makes is restricted to the deeper layers (fc "
          "stack): |SVCCA(S_distilled, T) - SVCCA(S_indep, T)| is small for the shallow student layers relative to "
          "the deeper ones (Fig. 6).",
          "|SVCCA distilled - SVCCA hard labels| against every teacher layer: mean over the student's FC layers "
          "minus mean over its conv layers", ("fc_diff", "conv_diff"), above(0.0), bounds=DIFFERENCE),
]

TEACHER_MARGIN = 0.05  # declared before the second round: distill_beats_hard_labels is judged only when the
# teacher's test accuracy exceeds the hard-label students' mean final test accuracy by at least this much


def teacher_rule(teacher_accuracy: float, hard_label_accuracy: float) -> str | None:
    """Why distill_beats_hard_labels cannot be judged (a teacher not well above the hard-label student tests
    nothing), or None when the teacher clears TEACHER_MARGIN."""
    if teacher_accuracy >= hard_label_accuracy + TEACHER_MARGIN:
        return None
    return (f"not judged: the teacher's test accuracy {teacher_accuracy:.4f} is not {TEACHER_MARGIN:g} above the "
            f"hard-label students' {hard_label_accuracy:.4f} (rule: analysis/studies/s4_distill.py TEACHER_MARGIN)")


@register.study("s4")
class Distill(Study):
    """S4 (closer look, sec. 5): does distillation make a student's representations closer to its teacher's?"""

    claims = CLAIMS
    sizes = {"inputs": 200}
    columns = ("tags.student",)

    def analyze(self, r: Report, *, inputs: int) -> pd.DataFrame:
        """Distilled vs hard-label students: accuracy over seeds; SVCCA (with its permutation null) of every student
        layer against every teacher layer and the absolute difference of the two heatmaps, for every seed where both
        students finished (heatmaps of the lowest); returns the per-seed frame of the claims."""
        if "distill" not in r.points:
            raise ConfigError(f"{r.name}: the S4 report runs on the students' sweep (the one that sets distill.teacher)")
        acc = accuracy_curves(r, "tags.student", split="val")
        stats = over_seeds(r, acc, "tags.student", "accuracy_by_student")
        r.say("## Validation accuracy over seeds, mean and 95% t interval (paper: best 85.18% distilled vs 83.01% "
              "hard labels)", "", stats.to_markdown(index=False, floatfmt=".4f"), "")
        frame = per_seed(acc, "tags.student", "best_accuracy")
        teacher = r.run.reference(r.points.dropna(subset=["distill"]).distill.iloc[0]["teacher"])
        finished = r.points.assign(final=[r.final_ckpt(t) for t in r.points.trial_id]).dropna(subset=["final"])
        seeds = sorted(s for s, g in finished.groupby("seed") if set(g["tags.student"]) >= {"distilled", "hard_labels"})
        if not seeds:
            r.say("No seed has both students finished (diverged or still running): no SVCCA against the teacher.", "")
        refused = self.check_teacher(r, teacher, finished)
        keys = ["index_a", "index_b", "layer_a", "layer_b"]
        values = keys + ["similarity", "null_mean"]
        diffs = []
        for seed in seeds:
            heat = {}
            for _, p in finished[finished.seed == seed].iterrows():
                heat[p["tags.student"]] = rows = similarity(r, p.final, teacher, inputs)
                if seed == seeds[0]:
                    plots.similarity_heatmap(rows, r.figure(f"cca_{p['tags.student']}_vs_teacher"),
                                             f"SVCCA student ({p['tags.student']}, seed {seed}) x teacher")
            diff = heat["distilled"][values].merge(heat["hard_labels"][values], on=keys,
                                                   suffixes=("_distilled", "_hard_labels"))
            diff["similarity"] = (diff.similarity_distilled - diff.similarity_hard_labels).abs()
            if seed == seeds[0]:
                plots.similarity_heatmap(diff, r.figure("cca_abs_difference"),
                                         f"|SVCCA distilled - SVCCA hard labels| (seed {seed})")
            diffs.append(diff.assign(seed=seed))
        if diffs:
            diff = r.table("cca_students_vs_teacher", pd.concat(diffs, ignore_index=True))
            top = diff[diff.seed == seeds[0]].sort_values("similarity", ascending=False).head(5)
            r.say(f"## Largest |SVCCA distilled - hard labels| (student layer x teacher layer, seed {seeds[0]})", "",
                  "Each SVCCA next to its permutation null (null_mean: one side's rows shuffled).", "",
                  top[["layer_a", "layer_b", "similarity_distilled", "null_mean_distilled", "similarity_hard_labels",
                       "null_mean_hard_labels", "similarity"]]
                  .to_markdown(index=False, floatfmt=".3f"), "")
            part = diff.assign(part=diff.layer_a.map(lambda l: "fc_diff" if is_fc(l) else "conv_diff"))
            frame = frame.join(part.pivot_table(index="seed", columns="part", values="similarity"))
        frame.attrs[REFUSED] = refused
        return frame

    @staticmethod
    def check_teacher(r: Report, teacher, finished: pd.DataFrame) -> dict[str, str]:
        """The teacher's accuracy on the students' test split next to the hard-label students' final test accuracy,
        in the report; {claim id: why} for the claims TEACHER_MARGIN refuses."""
        hard = finished[finished["tags.student"] == "hard_labels"]
        test = benchmark.final_test_accuracy(r.metrics)
        if hard.empty or test.empty:
            return {"distill_beats_hard_labels": "not judged: no finished hard-label student with a test accuracy "
                                                 "to compare the teacher with (TEACHER_MARGIN)"}
        cs = r.open(hard.final.iloc[0], teacher)
        t_acc = evaluate(cs.model(1), cs.batches("test"))["accuracy"]
        s_acc = float(test.reindex(hard.trial_id).mean())
        r.say(f"Teacher: test accuracy {t_acc:.4f} on the students' {len(cs.batches('test'))} test images; hard-label "
              f"students: {s_acc:.4f} (mean final test accuracy); the rule asks for {TEACHER_MARGIN:g} more.", "")
        why = teacher_rule(t_acc, s_acc)
        return {"distill_beats_hard_labels": why} if why else {}
