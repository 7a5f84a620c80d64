"""`heurbench report runs/<sweep>`: run a study's analyses on its checkpoints and draw its figures.

Each study's report is a function of the sweep folder (its resolved `sweep.yaml`, metrics
Parquet and checkpoints). Analyses go through the same code as `heurbench analyze`, so
their rows land under <sweep>/analysis/; the numbers behind every figure are written to
<sweep>/analysis/report/<figure>.parquet and a markdown summary to <sweep>/report.md.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from analysis import plots, results

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
        self.points = pd.DataFrame([{"index": p["index"], "trial_id": p["trial_id"], **p["values"]}
                                    for p in spec["points"]])
        self.metrics = pd.read_parquet(self.dir / "metrics")
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
            raise FileNotFoundError(f"{self.dir / 'trials' / trial_id / 'ckpt'}: no checkpoint W{k} (epoch={k:03d}.pt or iter={k:06d}.pt)")
        return found

    def trials(self, **values) -> pd.DataFrame:
        """Grid points whose swept values match (dotted key -> value)."""
        pts = self.points
        for k, v in values.items():
            pts = pts[pts[k] == v]
        return pts

    def state(self, trial_id: str) -> str:
        import json

        p = self.dir / "trials" / trial_id / "status.json"
        return json.loads(p.read_text()).get("state", "?") if p.exists() else "pending"

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
    return rows_of(r, "cca", [",".join(ids_of(a, b))], inputs=inputs).drop_duplicates(["layer_a", "layer_b"])


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


STUDIES: dict[str, Callable[[Report], None]] = {"s3": report_warmup, "quickstart": report_warmup}


def report(run_dir: str | Path, study: str | None = None) -> Path:
    """Run the study's report on a sweep folder; the study defaults to the sweep name's prefix (s1..s7)."""
    r = Report(run_dir)
    key = study or next((k for k in STUDIES if r.name == k or r.name.startswith(k + "_")), None)
    if key not in STUDIES:
        raise ValueError(f"no report for sweep {r.name!r}; expected a study in {sorted(STUDIES)} (--study)")
    STUDIES[key](r)
    out = r.finish()
    log.info("report: %s (%d figures)", out, len(r.figures))
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="run a study's analyses on a sweep's checkpoints; figures + tables + report.md")
    p.add_argument("run_dir", help="runs/<sweep>")
    p.add_argument("--study", help=f"one of {sorted(STUDIES)} (default: from the sweep name)")
    p.set_defaults(func=lambda a: print(report(a.run_dir, a.study)) or 0)
