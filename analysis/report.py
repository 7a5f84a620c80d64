"""`heurbench report runs/<sweep>`: run a study's analyses on its checkpoints and draw its figures.

Each study's report is a function of the sweep folder (its resolved `sweep.yaml`, metrics
Parquet and checkpoints). Analyses go through the same code as `heurbench analyze`, so
their rows land under <sweep>/analysis/; the numbers behind every figure are written to
<sweep>/analysis/report/<figure>.parquet and a markdown summary to <sweep>/report.md.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from analysis import plots, results
from harness.config import ConfigError

log = logging.getLogger("heurbench.analysis")


class Report:
    """A sweep folder plus what a report has written so far (figures, tables, summary lines)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        resolved = self.dir / "sweep.yaml"
        if not resolved.is_file():
            raise FileNotFoundError(f"{resolved}: no resolved sweep here (run `heurbench sweep` first)")
        spec = yaml.safe_load(resolved.read_text())
        self.name = spec["name"]
        seed = spec["base"].get("seed", 0)  # a column even when the sweep has no seeds axis
        self.points = pd.DataFrame([{"index": p["index"], "trial_id": p["trial_id"], "seed": seed, **p["values"]}
                                    for p in spec["points"]])
        # only the sweep's current points: a re-run of an edited YAML leaves earlier trials' rows behind
        metrics = pd.read_parquet(self.dir / "metrics")
        self.metrics = metrics[metrics.trial_id.isin(self.points.trial_id)]
        self.lines: list[str] = [f"# Report: {self.name}", ""]
        self.figures: list[Path] = []

    def ckpt(self, trial_id: str, name: str) -> Path | None:
        p = self.dir / "trials" / trial_id / "ckpt" / name
        return p if p.is_file() else None

    def iter_ckpts(self, trial_id: str) -> list[int]:
        """Iterations of the trial's iter=NNNNNN.pt checkpoints, ascending."""
        return sorted(int(p.stem.split("=")[1]) for p in (self.dir / "trials" / trial_id / "ckpt").glob("iter=*.pt"))

    def final_ckpt(self, trial_id: str) -> Path | None:
        """The checkpoint a finished (not diverged) trial wrote at its last iteration."""
        iters = self.iter_ckpts(trial_id)
        return self.ckpt(trial_id, f"iter={iters[-1]:06d}.pt") if iters and self.state(trial_id) == "done" else None

    def at(self, trial_id: str, k: int) -> Path:
        """Checkpoint W_k: epoch=k (paper scale) or iter=k (reduced sweeps map one paper epoch to one iteration)."""
        found = self.ckpt(trial_id, f"epoch={k:03d}.pt") or self.ckpt(trial_id, f"iter={k:06d}.pt")
        if found is None:
            raise FileNotFoundError(f"{self.dir}/trials/{trial_id}/ckpt: no W{k} (epoch={k:03d}.pt, iter={k:06d}.pt)")
        return found

    def status(self, trial_id: str) -> dict:
        """The trial's status.json ({} before it started)."""
        from harness.record import read_status

        return read_status(self.dir / "trials" / trial_id)

    def state(self, trial_id: str) -> str:
        return self.status(trial_id).get("state", "pending")

    def config(self, trial_id: str) -> dict:
        """The trial's resolved config as a mapping."""
        return yaml.safe_load((self.dir / "trials" / trial_id / "config.yaml").read_text())

    def table(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        results.atomic_write(self.dir / "analysis" / "report" / f"{name}.parquet",
                             lambda tmp: df.to_parquet(tmp, index=False))
        return df

    def figure(self, name: str) -> Path:
        path = self.dir / "figures" / f"{name}.png"
        self.figures.append(path)
        return path

    def say(self, *lines: str) -> None:
        self.lines += list(lines)

    def finish(self) -> Path:
        self.say("", "## Figures", *[f"- `{p.relative_to(self.dir)}`" for p in self.figures],
                 "", f"Tables: `{(self.dir / 'analysis' / 'report').relative_to(self.dir)}/*.parquet`")
        out = self.dir / "report.md"
        results.atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(self.lines) + "\n"))
        return out


def analyze(*argv: str) -> None:
    """Run one `heurbench analyze ...` sub-command in this process."""
    from analysis import cli

    parser = argparse.ArgumentParser(prog="heurbench")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *map(str, argv)])
    args.func(args)


def ids_of(*paths: Path) -> list[str]:
    """The analysis ids ("<trial_id>/<file stem>") of checkpoint files."""
    from analysis import checkpoints

    return [checkpoints.checkpoint_id(checkpoints.load(p)) for p in paths]


def rows_of(r: Report, kind: str, ckpts: list[str], **params) -> pd.DataFrame:
    """Rows of one analysis kind whose `ckpts` key is one of `ckpts` (comma-joined ids) and whose params match."""
    df = results.read(r.dir, kind)
    df = df[df.ckpts.isin(ckpts)]
    for k, v in params.items():
        df = df[df[k] == v]
    return df


def similarity(r: Report, a: Path, b: Path, inputs: int) -> pd.DataFrame:
    """SVCCA layer x layer rows between two checkpoints (computed, then read back from Parquet)."""
    analyze("cca", a, b, "--inputs", inputs, "--out", r.dir)
    rows = rows_of(r, "cca", [",".join(ids_of(a, b))], measure="svcca")  # inputs is capped by the split's size
    return rows.drop_duplicates(["layer_a", "layer_b"], keep="last")


def heatmap_of(rows: pd.DataFrame, path: Path, title: str) -> None:
    m = rows.pivot_table(index="index_a", columns="index_b", values="similarity")
    la = rows.drop_duplicates("index_a").sort_values("index_a").layer_a.tolist()
    lb = rows.drop_duplicates("index_b").sort_values("index_b").layer_b.tolist()
    plots.heatmap(m.values, la, lb, path, title)


def accuracy_curves(r: Report, by: str, split: str = "test") -> pd.DataFrame:
    """Figure + table: `split` accuracy vs epoch per value of the `by` column; final and best per trial."""
    ev = r.metrics[(r.metrics.kind == "eval") & (r.metrics.split == split)].sort_values("iteration")
    plots.lines(ev, "epoch", "accuracy", r.figure(f"{split}_accuracy"), by=[by], title=f"{r.name}: {split} accuracy")
    rows = []
    for tid, part in ev.groupby("trial_id"):
        rows.append({"trial_id": tid, by: part[by].iloc[0], "state": r.state(tid), "final_accuracy": part.accuracy.iloc[-1],
                     "best_accuracy": part.accuracy.max(), "epochs": part.epoch.iloc[-1]})
    return r.table(f"{split}_accuracy", pd.DataFrame(rows).sort_values(by))


def over_seeds(r: Report, acc: pd.DataFrame, by: str, name: str) -> pd.DataFrame:
    """Table `name`: mean and std over seeds of the final and best accuracy per value of `by`."""
    return r.table(name, acc.groupby(by).agg(
        final_mean=("final_accuracy", "mean"), final_std=("final_accuracy", "std"), best_mean=("best_accuracy", "mean"),
        best_std=("best_accuracy", "std"), seeds=("trial_id", "size")).reset_index())


def swa_accuracy(r: Report, ckpts: list[Path], images: int) -> float:
    """Test accuracy of the average of `ckpts` (BN recomputed on the first `images` train images)."""
    analyze("swa", *ckpts, "--train-images", images, "--test-images", images, "--out", r.dir)
    return rows_of(r, "swa", [",".join(ids_of(*ckpts))]).query("split == 'test'").accuracy.iloc[0]


def report_warmup(r: Report, inputs: int = 500) -> None:
    """S3 (closer look, sec. 4): accuracy of SB / LB / LB+warmup / LB+freeze; CCA iter 0 vs end of warmup."""
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
            rows = similarity(r, r.ckpt(tid, f"iter={i:06d}.pt"), r.ckpt(tid, f"iter={j:06d}.pt"), inputs)
            heatmap_of(rows, r.figure(f"cca_{run}_iter{i}_vs_iter{j}"), f"SVCCA {run}: iter {i} vs iter {j}")
            diag = rows[rows.index_a == rows.index_b][["index_a", "layer_a", "similarity"]]
            diagonals.append(diag.assign(run=run, pair=f"iter{i}-iter{j}"))
    if diagonals:
        diag = r.table("cca_diagonal", pd.concat(diagonals, ignore_index=True))
        first = diag[diag.pair.str.startswith("iter0-")]
        plots.lines(first, "layer_a", "similarity", r.figure("cca_diagonal"), by=["run"],
                    title="per-layer SVCCA, iter 0 vs end of warmup")
        wide = first.pivot_table(index="layer_a", columns="run", values="similarity", sort=False)
        r.say("## Per-layer SVCCA, iter 0 vs end of warmup / freeze", "", wide.to_markdown(floatfmt=".3f"), "")


def connect(r: Report, pairs: list[tuple[str, Path, Path]], curve_epochs: tuple[int, ...], images: int,
            t_points: int, lr: float = 0.015) -> dict[str, Path]:
    """Polychain curve vs straight segment for each (label, a, b) pair (Garipov et al.; closer look sec. 2-3):
    loss and accuracy along t (figures connect_<label>_{loss,accuracy}), tables connect_curves and
    connect_barriers; returns each pair's bend checkpoint."""
    curves, bars, bends = [], [], {}
    for label, a, b in pairs:
        analyze("connect", a, b, "--epochs", max(curve_epochs), "--eval-epochs", *curve_epochs, "--t-points", t_points,
                "--lr", lr, "--batch-size", 50, "--train-images", images, "--test-images", images, "--out", r.dir)
        key, params = [",".join(ids_of(a, b))], dict(curve="polychain", epochs=max(curve_epochs), lr=lr)
        rows = rows_of(r, "connect", key, **params).assign(pair=label)
        final = rows[rows.curve_epoch.isin([0, max(curve_epochs)])]
        for metric in ("loss", "accuracy"):
            plots.lines(final, "t", metric, r.figure(f"connect_{label}_{metric}"), by=["path", "split"],
                        title=f"{r.name}: {label}, curve (epoch {max(curve_epochs)}) vs segment")
        curves.append(rows)
        bars.append(rows_of(r, "connect_barrier", key, **params).assign(pair=label))
        bends[label] = r.dir / bars[-1].bend.iloc[0]
    r.table("connect_curves", pd.concat(curves, ignore_index=True))
    bar = r.table("connect_barriers", pd.concat(bars, ignore_index=True)[
        ["pair", "path", "curve_epoch", "split", "loss_barrier", "error_barrier"]])
    r.say("## Barriers: max along the path above both ends (segment: curve_epoch 0)", "",
          bar.to_markdown(index=False, floatfmt=".4f"), "")
    return bends


def report_connectivity(r: Report, curve_epochs: tuple[int, ...] = (1, 2), images: int = 100,
                        t_points: int = 5) -> None:
    """S1 (closer look, sec. 2.1.1): is mode G connected to each variant X by a low-loss polychain?"""
    acc = accuracy_curves(r, "tags.mode")
    r.say("## Final test accuracy per mode", "", acc.to_markdown(index=False, floatfmt=".4f"), "")
    final = {p["tags.mode"]: r.final_ckpt(p.trial_id) for _, p in r.points.iterrows()}
    if final.get("G") is None:
        raise ConfigError(f"{r.dir}: mode G has no final checkpoint ({r.state(r.points.trial_id[0])})")
    r.say(*[f"- G -> {m}: skipped ({m} has no final checkpoint)" for m, c in final.items() if c is None])
    connect(r, [(f"G-{m}", final["G"], c) for m, c in final.items() if m != "G" and c is not None],
            curve_epochs, images, t_points)


def report_sgdr(r: Report, curve_epochs: tuple[int, ...] = (2,), images: int = 100, t_points: int = 5,
                grid: int = 5, inputs: int = 200) -> None:
    """S2 (closer look, sec. 3, appendix 8-9): curves vs segments between iterates W_k, the plane through
    W70, W150 and their bend (other iterates projected), SVCCA of W10 vs W150 and W150 vs W155 (SGDR)."""
    acc = accuracy_curves(r, "tags.schedule")
    r.say("## Final test accuracy", "", acc.to_markdown(index=False, floatfmt=".4f"), "")
    pairs = {"sgdr": [(30, 70), (70, 150), (30, 150)], "step": [(55, 65), (145, 165), (55, 165)]}
    runs = [(p["tags.schedule"] + ("_bn" if p.get("model.bn") else ""), p["tags.schedule"], p.trial_id)
            for _, p in r.points.iterrows()]
    bends = connect(r, [(f"{tag}_W{i}-W{j}", r.at(tid, i), r.at(tid, j)) for tag, sched, tid in runs
                        for i, j in pairs[sched]], curve_epochs, images, t_points)
    for tag, _, tid in [run for run in runs if run[1] == "sgdr"]:
        ends = [r.at(tid, 70), r.at(tid, 150), bends[f"{tag}_W70-W150"]]
        others = [r.at(tid, k) for k in (10, 30, 155)]
        analyze("plane", *ends, *others, "--grid", grid, "--train-images", images, "--test-images", images,
                "--out", r.dir)
        key = [",".join(ids_of(*ends, *others))]
        plane, where = rows_of(r, "plane", key, grid=grid), rows_of(r, "plane_points", key, grid=grid)
        where = where.assign(label=["W70", "W150", "bend", "W10", "W30", "W155"])
        for split in ("train", "test"):
            plots.plane_contour(plane[plane.split == split], "loss", where, r.figure(f"plane_{tag}_{split}_loss"),
                                f"{r.name}: {split} loss on the plane through W70, W150 and their bend")
        r.table(f"plane_{tag}", plane)
        r.table(f"plane_points_{tag}", where)
        r.say(f"## Plane through W70, W150 and their bend ({tag}): projected iterates", "",
              where[["label", "x", "y", "residual"]].to_markdown(index=False, floatfmt=".3f"), "")
        for i, j in [(10, 150), (150, 155)]:
            rows = similarity(r, r.at(tid, i), r.at(tid, j), inputs)
            heatmap_of(rows, r.figure(f"cca_{tag}_W{i}_vs_W{j}"), f"SVCCA {tag}: W{i} vs W{j}")
            r.table(f"cca_{tag}_W{i}_vs_W{j}", rows)


def report_distill(r: Report, inputs: int = 200) -> None:
    """S4 (closer look, sec. 5): distilled vs hard-label students: accuracy over seeds, SVCCA of every student
    layer against every teacher layer (lowest seed where both students finished) and the absolute difference
    of the two heatmaps."""
    from harness.refs import resolve

    if "distill" not in r.points:
        raise ConfigError(f"{r.name}: the S4 report runs on the students' sweep (the one that sets distill.teacher)")
    acc = accuracy_curves(r, "tags.student", split="val")
    stats = over_seeds(r, acc, "tags.student", "accuracy_by_student")
    r.say("## Validation accuracy over seeds (paper: best 85.18% distilled vs 83.01% hard labels)", "",
          stats.to_markdown(index=False, floatfmt=".4f"), "")
    teacher = resolve(r.points.dropna(subset=["distill"]).distill.iloc[0]["teacher"], r.dir)
    finished = r.points.assign(final=[r.final_ckpt(t) for t in r.points.trial_id]).dropna(subset=["final"])
    seeds = sorted(s for s, g in finished.groupby("seed") if set(g["tags.student"]) >= {"distilled", "hard_labels"})
    if not seeds:
        r.say("No seed has both students finished (diverged or still running): no SVCCA against the teacher.")
        return
    heat = {}
    for _, p in finished[finished.seed == seeds[0]].iterrows():
        heat[p["tags.student"]] = rows = similarity(r, p.final, teacher, inputs)
        heatmap_of(rows, r.figure(f"cca_{p['tags.student']}_vs_teacher"),
                   f"SVCCA student ({p['tags.student']}) x teacher")
    keys = ["index_a", "index_b", "layer_a", "layer_b"]
    diff = heat["distilled"][keys + ["similarity"]].merge(heat["hard_labels"][keys + ["similarity"]], on=keys,
                                                         suffixes=("_distilled", "_hard_labels"))
    diff["similarity"] = (diff.similarity_distilled - diff.similarity_hard_labels).abs()
    heatmap_of(diff, r.figure("cca_abs_difference"), "|SVCCA distilled - SVCCA hard labels|")
    r.table("cca_students_vs_teacher", diff)
    top = diff.sort_values("similarity", ascending=False).head(5)
    r.say("## Largest |SVCCA distilled - hard labels| (student layer x teacher layer)", "",
          top[["layer_a", "layer_b", "similarity_distilled", "similarity_hard_labels", "similarity"]]
          .to_markdown(index=False, floatfmt=".3f"), "")


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
    """S5 (Sadrtdinov, Kodryan et al.): regimes of the pre-training LR, SWA of each pre-trained point's last
    checkpoints and, on the fine-tuning sweep, test accuracy per (PLR, FLR), angles and error barriers between
    solutions fine-tuned from neighbouring PLRs (smallest FLR) and their accuracy per frequency band."""
    from harness.refs import resolve

    fine = "model.init_from" in r.points
    pre = Report(resolve(r.points["model.init_from"].iloc[0], r.dir).parents[3]) if fine else r
    reg = r.table("regimes", regimes(pre))
    r.say("## Pre-training regimes", "", reg.drop(columns="trial_id").to_markdown(index=False, floatfmt=".4g"), "")
    swa_rows = []
    for _, p in reg.iterrows():
        ckpts = sorted((pre.dir / "trials" / p.trial_id / "ckpt").glob("epoch=*.pt"))
        if p.state != "done" or not ckpts:
            continue
        test = pre.metrics[(pre.metrics.trial_id == p.trial_id) & (pre.metrics.split == "test")]
        swa_rows += [{"plr": p.plr, "regime": p.regime, "model": "swa", "accuracy": swa_accuracy(r, ckpts, images)},
                     {"plr": p.plr, "regime": p.regime, "model": "last",
                      "accuracy": test.sort_values("iteration").accuracy.iloc[-1]}]
    if swa_rows:
        swa = r.table("swa", pd.DataFrame(swa_rows))
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
        analyze("geometry", *paths, "--pairs", "consecutive", "--barrier", "--t-points", t_points,
                "--train-images", images, "--test-images", images, "--out", r.dir)
        pairs = [(f"{a:g}-{b:g}", ",".join(ids_of(x, y))) for (a, x), (b, y) in zip(tuned, tuned[1:])]
        angles = rows_of(r, "geometry", [k for _, k in pairs]).query("group == 'all'")
        angles = angles[["ckpts", "angle_deg", "distance"]]
        bars = rows_of(r, "error_barrier", [k for _, k in pairs]).query("split == 'test'")[["ckpts", "error_barrier"]]
        geo = r.table("geometry", pd.DataFrame(pairs, columns=["plr_pair", "ckpts"]).merge(angles, on="ckpts")
                      .merge(bars, on="ckpts").drop(columns="ckpts").assign(flr=flr))
        plots.lines(geo.melt(id_vars=["plr_pair"], value_vars=["angle_deg", "error_barrier"]), "plr_pair", "value",
                    r.figure("geometry"), by=["variable"], title=f"fine-tuned at FLR {flr:g}, neighbouring PLRs")
        r.say(f"## Neighbouring fine-tuned solutions (FLR {flr:g}): angle and test error barrier", "",
              geo.to_markdown(index=False, floatfmt=".3f"), "")
    if tuned:
        analyze("frequency", *[c for _, c in tuned], "--test-images", images, "--out", r.dir)
        freq = rows_of(r, "frequency", ids_of(*[c for _, c in tuned]), images=images)
        freq = freq.merge(pd.DataFrame({"ckpts": ids_of(*[c for _, c in tuned]), "plr": [plr for plr, _ in tuned]}),
                          on="ckpts")[["plr", "variant", "accuracy"]]
        r.table("frequency", freq)
        plots.lines(freq, "variant", "accuracy", r.figure("frequency"), by=["plr"],
                    title=f"accuracy per frequency band (FLR {flr:g})")
        r.say("## Accuracy per frequency band", "", freq.pivot(index="plr", columns="variant", values="accuracy")
              .to_markdown(floatfmt=".4f"), "")


def report_warmup_stability(r: Report, images: int = 100, iters: int = 5) -> None:
    """S6 (Kalra & Barkeshli): largest stable eta_trgt per optimizer, warmup start (0 or the loss-catapult LR)
    and warmup length (stable: not diverged and final train loss below its start); sharpness (top Hessian
    eigenvalue, Lanczos) at the checkpoints through warmup."""
    m = r.metrics[r.metrics.split == "train"].sort_values("iteration")
    rows = []
    for _, p in r.points.iterrows():
        part = m[m.trial_id == p.trial_id]
        state = r.status(p.trial_id)
        rows.append({"trial_id": p.trial_id, "optimizer": p.get("optim.name", r.config(p.trial_id)["optim"]["name"]),
                     "eta_trgt": p["optim.lr"], "warmup": p["warmup.length"],
                     "start": "catapult" if p.get("warmup.eta_init") == "catapult" else "0",
                     "eta_init": float(state.get("eta_init", 0.0)), "state": state.get("state", "pending"),
                     "loss_start": part.loss.iloc[0], "loss_end": part.loss.iloc[-1],
                     "stable": state.get("state") == "done" and part.loss.iloc[-1] < part.loss.iloc[0]})
    grid = r.table("stability", pd.DataFrame(rows))
    keys = ["optimizer", "start", "warmup"]
    best = r.table("largest_stable", grid[grid.stable].groupby(keys).eta_trgt.max().reset_index())
    plots.lines(best, "warmup", "eta_trgt", r.figure("largest_stable_lr"), by=["optimizer", "start"], logy=True,
                title="largest stable eta_trgt per warmup length (start: 0 or the catapult LR)")
    r.say("## Stability grid", "", grid.drop(columns="trial_id").to_markdown(index=False, floatfmt=".4g"), "",
          "## Largest stable eta_trgt per warmup length", "", best.to_markdown(index=False, floatfmt=".4g"), "")
    ckpts, inits, same_init = [], {}, {}  # iteration 0 is the same weights for the same seed and model
    for tid in r.points.trial_id:
        cfg = r.config(tid)
        init = inits.setdefault(json.dumps([cfg["seed"], cfg["model"]], sort_keys=True), tid)
        same_init[tid] = init
        ckpts += [r.ckpt(tid, f"iter={i:06d}.pt") for i in r.iter_ckpts(tid) if i > 0 or init == tid]
    analyze("sharpness", *ckpts, "--iters", iters, "--train-images", images, "--out", r.dir)
    sharp = rows_of(r, "sharpness", ids_of(*ckpts), method="lanczos", iters=iters, images=images)
    sharp = sharp.assign(trial_id=sharp.ckpts.str.split("/").str[0])
    at0 = sharp[sharp.iteration == 0].set_index("trial_id")
    sharp = pd.concat([sharp[sharp.iteration > 0]] + [at0.loc[[init]].reset_index().assign(trial_id=tid)
                                                      for tid, init in same_init.items() if init in at0.index])
    sharp = sharp.merge(grid[["trial_id", *keys, "eta_trgt"]], on="trial_id")
    sharp = r.table("sharpness", sharp[["trial_id", *keys, "eta_trgt", "iteration", "top_eigenvalue"]]
                    .sort_values([*keys, "eta_trgt", "iteration"]))
    plots.lines(sharp, "iteration", "top_eigenvalue", r.figure("sharpness"), by=[*keys, "eta_trgt"], logy=True,
                title="top Hessian eigenvalue through warmup")
    r.say("## Sharpness (top Hessian eigenvalue) through warmup", "",
          sharp.pivot_table(index=[*keys, "eta_trgt"], columns="iteration", values="top_eigenvalue")
          .to_markdown(floatfmt=".3g"), "")


def report_cosine_budget(r: Report, images: int = 200) -> None:
    """S7 (closer look, footnote 4): final accuracy per schedule over seeds; SWA of the SGDR iterates."""
    acc = accuracy_curves(r, "schedule.name")
    stats = over_seeds(r, acc, "schedule.name", "accuracy_by_schedule")
    plots.lines(stats, "schedule.name", "final_mean", r.figure("final_accuracy"),
                title="final test accuracy (mean over seeds)")
    r.say("## Final test accuracy per schedule", "", stats.to_markdown(index=False, floatfmt=".4f"), "")
    swa_rows = []
    for _, p in r.points[r.points["schedule.name"] == "sgdr"].iterrows():
        if r.state(p.trial_id) != "done":
            continue
        folder = r.dir / "trials" / p.trial_id / "ckpt"
        ckpts = sorted(folder.glob("epoch=*.pt")) or sorted(folder.glob("iter=*.pt"))[1:]  # not iteration 0
        swa_rows.append({"trial_id": p.trial_id, "seed": p.seed, "averaged": ", ".join(c.stem for c in ckpts),
                         "swa_accuracy": swa_accuracy(r, ckpts, images),
                         "final_accuracy": acc.set_index("trial_id").final_accuracy[p.trial_id]})
    if swa_rows:
        swa = r.table("sgdr_swa", pd.DataFrame(swa_rows))
        plots.lines(swa.melt(id_vars=["seed"], value_vars=["final_accuracy", "swa_accuracy"]), "variable", "value",
                    r.figure("sgdr_swa"), by=["seed"], title="SGDR: last iterate vs SWA of the cycle ends")
        r.say("## SWA of the SGDR cycle ends", "", swa.to_markdown(index=False, floatfmt=".4f"), "")


STUDIES: dict[str, Callable[[Report], None]] = {
    "s1": report_connectivity, "s2": report_sgdr, "s3": report_warmup, "s4": report_distill, "s5": report_lr_regimes,
    "s6": report_warmup_stability, "s7": report_cosine_budget, "quickstart": report_warmup}


# `heurbench report` options that scale a study's analyses; each study takes the ones in its signature.
SIZES = {"images": "train/test images per evaluation (curves, planes, SWA, sharpness, frequency)",
         "inputs": "inputs per CCA", "t_points": "points along each curve/segment", "grid": "plane grid per axis",
         "curve_epochs": "curve training epochs at which to evaluate (the last is the training length)",
         "iters": "Lanczos iterations"}


def report(run_dir: str | Path, study: str | None = None, **sizes) -> Path:
    """Run the study's report on a sweep folder; the study defaults to the sweep name's prefix (s1..s7).
    `sizes` (see SIZES) override the study's defaults, which are set for the reduced sweeps."""
    import inspect

    r = Report(run_dir)
    key = study or next((k for k in STUDIES if r.name == k or r.name.startswith(k + "_")), None)
    if key not in STUDIES:
        raise ConfigError(f"no report for sweep {r.name!r}; expected a study in {sorted(STUDIES)} (--study)")
    takes = set(inspect.signature(STUDIES[key]).parameters) - {"r"}
    unused = sorted(k for k, v in sizes.items() if v is not None and k not in takes)
    if unused:
        raise ConfigError(f"--{unused[0].replace('_', '-')}: not used by the {key} report (it takes: "
                         f"{', '.join('--' + k.replace('_', '-') for k in sorted(takes)) or 'none'})")
    STUDIES[key](r, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in sizes.items() if v is not None})
    out = r.finish()
    log.info("report: %s (%d figures)", out, len(r.figures))
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="run a study's analyses on a sweep's checkpoints; figures + tables + report.md")
    p.add_argument("run_dir", help="runs/<sweep>")
    p.add_argument("--study", help=f"one of {sorted(STUDIES)} (default: from the sweep name)")
    for k, text in SIZES.items():
        p.add_argument("--" + k.replace("_", "-"), type=int, nargs="+" if k == "curve_epochs" else None,
                       help=text + " (default: the study's, sized for the reduced sweeps)")

    def run(a) -> int:
        print(report(a.run_dir, a.study, **{k: getattr(a, k) for k in SIZES}))
        return 0

    p.set_defaults(func=run)
