"""`heurbench report runs/<sweep>`: run a study's analyses on its checkpoints and draw its figures.

Each study's report (analysis/studies/) is a function of the sweep folder (its resolved `sweep.yaml`,
metrics Parquet and checkpoints). It calls the analyses as library functions and records their rows
under <sweep>/analysis/<kind>/ as `heurbench analyze` does; the numbers behind every figure go to
<sweep>/analysis/report/<figure>.parquet and a markdown summary to <sweep>/report.md.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from analysis import claims as claims_lib
from analysis import benchmark, html, plots, results
from analysis.activations import fixed_inputs
from analysis.cca import PERMUTATIONS, cca_rows, underdetermined
from analysis.connectivity import connect as connect_curve
from analysis.evaluation import evaluate
from analysis.loading import Checkpoints
from analysis.swa import swa_rows
from harness import provenance
from harness.errors import ConfigError
from harness.layout import RunDir, checkpoint_name
from harness.registry import import_plugins, register
from harness.yamlfile import read_yaml

if TYPE_CHECKING:
    from analysis.study import Study

log = logging.getLogger("heurbench.analysis")


class Report:
    """A sweep folder plus what a report has written so far (figures, tables, summary lines)."""

    def __init__(self, run_dir: str | Path):
        self.run = RunDir(run_dir)
        self.dir = self.run.path
        if not self.run.sweep_yaml.is_file():
            raise FileNotFoundError(f"{self.run.sweep_yaml}: no resolved sweep here (run `heurbench sweep` first)")
        self.spec = spec = read_yaml(self.run.sweep_yaml)
        self.name = spec["name"]
        seed = spec["base"].get("seed", 0)  # a column even when the sweep has no seeds axis
        self.points = pd.DataFrame([{"index": p["index"], "trial_id": p["trial_id"], "seed": seed, **p["values"]}
                                    for p in spec["points"]])
        # only the sweep's current points: a re-run of an edited YAML leaves earlier trials' rows behind
        metrics = pd.read_parquet(self.run.metrics)
        self.metrics = metrics[metrics.trial_id.isin(self.points.trial_id)]
        self.lines: list[str] = [f"# Report: {self.name}", ""]
        self.figures: list[Path] = []
        self.similarities: list[pd.DataFrame] = []  # every `similarity` call's rows: one underdetermined summary

    def ckpt(self, trial_id: str, name: str) -> Path | None:
        p = self.run.trial(trial_id).ckpt(name)
        return p if p.is_file() else None

    def iter_ckpts(self, trial_id: str) -> list[int]:
        """Iterations of the trial's iter=NNNNNN.pt checkpoints, ascending."""
        return self.run.trial(trial_id).iterations()

    def final_ckpt(self, trial_id: str) -> Path | None:
        """The checkpoint a finished (not diverged) trial wrote at its last iteration."""
        iters = self.iter_ckpts(trial_id)
        return self.ckpt(trial_id, checkpoint_name(iters[-1])) if iters and self.state(trial_id) == "done" else None

    def at(self, trial_id: str, k: int) -> Path:
        """Checkpoint W_k: epoch=k (paper scale) or iter=k (reduced sweeps map one paper epoch to one iteration)."""
        names = [checkpoint_name(k, k), checkpoint_name(k)]
        found = self.ckpt(trial_id, names[0]) or self.ckpt(trial_id, names[1])
        if found is None:
            raise FileNotFoundError(f"{self.run.trial(trial_id).ckpt_dir}: no W{k} ({', '.join(names)})")
        return found

    def status(self, trial_id: str) -> dict:
        """The trial's status.json ({} before it started)."""
        return self.run.trial(trial_id).read_status()

    def state(self, trial_id: str) -> str:
        return self.status(trial_id).get("state", "pending")

    def config(self, trial_id: str) -> dict:
        """The trial's resolved config as a mapping."""
        return read_yaml(self.run.trial(trial_id).config)

    def open(self, *ckpts: Path, batch_size: int = 500) -> Checkpoints:
        """Checkpoints to analyse, their data from the first one's spec; rows are recorded in this sweep."""
        return Checkpoints.open(ckpts, out=self.dir, batch_size=batch_size)

    def table(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        results.atomic_write(self.run.report_table(name), lambda tmp: df.to_parquet(tmp, index=False))
        return df

    def figure(self, name: str) -> Path:
        path = self.run.figure(name)
        self.figures.append(path)
        return path

    def say(self, *lines: str) -> None:
        self.lines += list(lines)

    def missing_checkpoints(self) -> list[str]:
        """'<trial_id>/ckpt/iter=NNNNNN.pt' for each iteration checkpoint a trial's config declares, that the trial
        passed, and that is not on disk (deleted or lost): the analyses that need it skip it or take another."""
        missing = []
        for tid in self.points.trial_id:
            if not self.run.trial(tid).config.is_file():
                continue
            declared = (self.config(tid).get("checkpoints") or {}).get("iterations", [0])
            passed, have = self.status(tid).get("iteration", 0), set(self.iter_ckpts(tid))
            missing += [f"{tid}/ckpt/{checkpoint_name(i)}" for i in declared if i < passed and i not in have]
        return missing

    def finish(self) -> Path:
        if missing := self.missing_checkpoints():
            n = len(missing)
            line = (f"{n} checkpoint{'s' if n > 1 else ''} the trials declared and passed {'are' if n > 1 else 'is'} "
                    f"not on disk, so the analyses that need {'them' if n > 1 else 'it'} skipped "
                    f"{'them' if n > 1 else 'it'} or took another: {', '.join(missing[:6])}"
                    f"{' ...' if len(missing) > 6 else ''}")
            log.warning("%s: %s", self.name, line)
            self.say("", f"**Missing checkpoints.** {line}.")
        if self.similarities and (summary := underdetermined(pd.concat(self.similarities))):
            log.warning("%s: svcca: %s", self.name, summary)
            self.say("", f"SVCCA: {summary}.")
        html.write(self.run.report_html, f"{self.name} report", "\n".join(self.lines), self.figures,
                   self.run.report_table("claims"))
        self.say("", "## Figures", *[f"- `{p.relative_to(self.dir)}`" for p in self.figures],
                 "", f"Tables: `{self.run.analysis('report').relative_to(self.dir)}/*.parquet`")
        out = self.run.report_md
        results.atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(self.lines) + "\n"))
        return out


def similarity(r: Report, a: Path, b: Path, inputs: int, diagonal: bool = False) -> pd.DataFrame:
    """SVCCA layer x layer rows, with n, widths and permutation null, between two checkpoints over the first
    `inputs` test images (more than the test split holds: a one-line error); with `diagonal`, only each layer
    against the same layer of the other checkpoint (a tenth of the cost for an 11-layer net)."""
    cs = r.open(a, b)
    test = cs.batches("test")
    model_a, model_b = cs.model(0), cs.model(1)
    x = fixed_inputs(test.inputs, inputs, split="test")
    if diagonal:
        rows = pd.concat([cca_rows(model_a, model_b, x, test.transform, cs.batch_size, layers_a=[layer],
                                   layers_b=[layer]).assign(index_a=i, index_b=i)
                          for i, layer in enumerate(model_a.probe_layers)], ignore_index=True)
    else:
        rows = cca_rows(model_a, model_b, x, test.transform, cs.batch_size)
    r.similarities.append(rows)
    cs.write("cca", rows, measure="svcca", conv="positions", inputs=inputs, split="test", permutations=PERMUTATIONS,
             diagonal=diagonal)
    return rows


def connect(r: Report, pairs: list[tuple[str, Path, Path]], curve_epochs: tuple[int, ...], images: int,
            t_points: int, lr: float = 0.015) -> tuple[dict[str, Path], pd.DataFrame, pd.DataFrame]:
    """Polychain curve vs straight segment for each (label, a, b) pair (Garipov et al.; closer look sec. 2-3):
    loss and accuracy along t (figures connect_<label>_{loss,accuracy}), tables connect_curves and
    connect_barriers; returns each pair's bend checkpoint and the two tables (column `pair`: the label)."""
    curves, bars, bends = [], [], {}
    params = dict(curve="polychain", epochs=max(curve_epochs), lr=lr)
    for label, a, b in pairs:
        cs = r.open(a, b, batch_size=50)
        splits = cs.splits(images, images)
        rows, bar, bend = connect_curve(cs.model(0), cs.ckpts[0]["model"], cs.ckpts[1]["model"], splits,
                                        splits["train"], epochs=curve_epochs, t_points=t_points, lr=lr)
        written = cs.write("connect", rows, **params)
        bends[label] = cs.save(r.run.derived_of(written, "bend-polychain"), bend, "connect", ends=cs.ids)
        cs.write("connect_barrier", bar.assign(bend=str(bends[label].relative_to(r.dir))), **params)
        final = rows[rows.curve_epoch.isin([0, max(curve_epochs)])]
        for metric in ("loss", "accuracy"):
            plots.lines(final, "t", metric, r.figure(f"connect_{label}_{metric}"), by=["path", "split"],
                        title=f"{r.name}: {label}, curve (epoch {max(curve_epochs)}) vs segment")
        curves.append(rows.assign(pair=label))
        bars.append(bar.assign(pair=label))
    curves = r.table("connect_curves", pd.concat(curves, ignore_index=True))
    bar = r.table("connect_barriers", pd.concat(bars, ignore_index=True)[
        ["pair", "path", "curve_epoch", "split", "loss_barrier", "error_barrier"]])
    r.say("## Barriers: max along the path above both ends (segment: curve_epoch 0)", "",
          bar.to_markdown(index=False, floatfmt=".4f"), "")
    return bends, curves, bar


def accuracy_curves(r: Report, by: str, split: str = "test") -> pd.DataFrame:
    """Figure + table: `split` accuracy vs epoch per value of the `by` column (mean over seeds with a 95% band
    where a setting has several); final and best per trial, with its seed and state."""
    ev = r.metrics[(r.metrics.kind == "eval") & (r.metrics.split == split)].sort_values("iteration")
    plots.lines(ev, "epoch", "accuracy", r.figure(f"{split}_accuracy"), by=[by], over="seed",
                title=f"{r.name}: {split} accuracy")
    acc = benchmark.per_trial(r.metrics, split)
    acc = acc.assign(state=[r.state(t) for t in acc.trial_id])[["trial_id", by, "seed", "state", "final_accuracy",
                                                                 "best_accuracy", "epochs"]]
    return r.table(f"{split}_accuracy", acc.sort_values([by, "seed"]))


def over_seeds(r: Report, acc: pd.DataFrame, by: str | list[str], name: str,
               values: dict[str, str] | None = None) -> pd.DataFrame:
    """Table `name`: per value of `by`, the number of seeds and, for each prefix: column of `values` (default
    final: final_accuracy, best: best_accuracy), the mean over seeds and its 95% t interval (<prefix>_mean, _lo,
    _hi; lo and hi NaN with one seed)."""
    values = values or {"final": "final_accuracy", "best": "best_accuracy"}
    df = benchmark.over_seeds(acc, [by] if isinstance(by, str) else by, list(values.values()))
    return r.table(name, df.rename(columns={"trials": "seeds", **{f"{column}_{s}": f"{prefix}_{s}"
                                                                  for prefix, column in values.items()
                                                                  for s in ("mean", "lo", "hi")}}))


def per_seed(acc: pd.DataFrame, by: str, value: str = "final_accuracy") -> pd.DataFrame:
    """The per-seed frame of claims: index seed, one column per value of `by` holding `value`."""
    return acc.pivot_table(index="seed", columns=by, values=value, aggfunc="first")


def outcomes(acc: pd.DataFrame, by: str, chance: float) -> pd.DataFrame:
    """The per-seed frame of a study's accuracy and rate claims: final test accuracy per value of `by`, and the
    per-seed outcome `unstable` (analysis.claims.unstable, chance level `chance`) as unstable_<value>."""
    flags = acc.assign(unstable=[claims_lib.unstable(st, a, chance) for st, a in zip(acc.state, acc.final_accuracy)])
    return per_seed(acc, by).join(per_seed(flags, by, "unstable").add_prefix("unstable_"), how="outer")


def claims(r: Report, claims: list, frame: pd.DataFrame) -> pd.DataFrame:
    """The study's claims judged on the per-seed `frame` (analysis.claims): table `claims`, a forest plot per
    claim (figures/claim_<id>.png) and the report's claims section, the plots under the table."""
    table = r.table("claims", claims_lib.table(claims, frame))
    forests = [plots.forest(claims_lib.evidence(c, frame), r.figure(f"claim_{c.id}"), f"{c.id}: {verdict}",
                            c.statistic) for c, verdict in zip(claims, table.verdict)]
    r.say("## Claims", "", "Each claim's statistic per seed (paired by seed), its mean over seeds and 95% interval "
          "(method named per row, inside the statistic's range); rate claims: each setting's exact interval and an "
          "exact test. The verdict applies the rule (declared in the study's code before any run). Seeds needed: an "
          "estimate at the spread observed, not a promise. Under the table, each claim's seeds (points), mean or "
          "rate (diamond) and interval (bar) against its rule's thresholds (dashed).", "",
          claims_lib.markdown(table), "", *[f"![{p.stem}]({p.relative_to(r.dir)})" for p in forests], "",
          *[f"- `{c.id}`: {c.statement}" for c in claims], "")
    return table


def swa_accuracy(r: Report, ckpts: list[Path], images: int) -> tuple[float, float]:
    """Test accuracy of the average of `ckpts` (BN recomputed on the first `images` train images) and of the last
    checkpoint as saved, both on the first `images` test images (the same images, so the two compare)."""
    cs = r.open(*ckpts)
    splits = cs.splits(images, images)
    last = evaluate(cs.model(len(ckpts) - 1), splits["test"])["accuracy"]
    rows, model = swa_rows(cs.model(0), [c["model"] for c in cs.ckpts], splits, splits["train"])
    written = cs.write("swa", rows)
    cs.save(r.run.derived_of(written, "swa"), model, "swa", averaged=cs.ids)
    return rows.query("split == 'test'").accuracy.iloc[0], last


# `heurbench report` options that scale a study's analyses; each study declares the ones it takes (Study.sizes).
SIZES = {"images": dict(help="train/test images per evaluation (curves, planes, SWA, sharpness, frequency)"),
         "inputs": dict(help="inputs per CCA"), "t_points": dict(help="points along each curve/segment"),
         "grid": dict(help="plane grid per axis"),
         "curve_epochs": dict(nargs="+", help="curve training epochs at which to evaluate (the last is the training "
                              "length)"),
         "iters": dict(help="Lanczos iterations at most (it stops earlier once converged)"),
         "bn": dict(type=str, choices=("running", "batch"), help="BN in the sharpness Hessian: running (eval-mode "
                    "statistics) or batch (each batch's own, as in the loss SGD follows)")}  # add_argument keywords


def study_of(r: Report, study: str | None = None) -> tuple[str, "Study"]:
    """The study a report runs (its registered name and an instance): `study` (a name or `module:Class`), else
    the sweep YAML's `study:`, else the study whose name is the sweep name or its prefix (s3_reduced -> s3)."""
    import analysis.study  # noqa: F401  (the study contract, checked as each study registers)

    spec = r.spec
    import_plugins(spec.get("base", {}).get("plugins") or [], near=spec.get("plugin_path"))  # a study among them
    key = study or spec.get("study")
    if key is None:
        key = next((k for k in register.names("study") if r.name == k or r.name.startswith(k + "_")), None)
        if key is None:
            raise ConfigError(f"no study for sweep {r.name!r}: name one with --study or `study:` in the sweep YAML "
                              f"(known: {register.names('study')})")
    try:
        entry = register.get("study", key)
    except ValueError as err:
        raise ConfigError(f"--study {key}: {err}") from None
    missing = [c for c in entry.obj.columns if c not in r.points.columns]
    if missing:
        raise ConfigError(f"study {entry.name!r} reads point columns {list(entry.obj.columns)}; sweep {r.name!r} has "
                          f"no {missing[0]!r} (its axes: {[c for c in r.points.columns if c not in ('index', 'trial_id')]})")
    return entry.name, entry.obj()


RAN_ON = ("device", "device_count", "torch", "cuda", "cudnn", "commit")  # the keys of 'What it ran on'


def ran_on(r: Report) -> pd.DataFrame:
    """Section 'What it ran on' and table ran_on: the trials per distinct device and versions (RAN_ON) with their
    host count; then one warning (also logged) per key of provenance.COMPARED on which the trials differ. The
    comparison is per sweep: this sweep's trials against each other, never against another sweep's."""
    ran = [r.status(t).get("provenance") for t in r.points.trial_id]
    df = pd.DataFrame([{k: str(p.get(k)) for k in {*RAN_ON, *provenance.COMPARED, "host"}} for p in ran if p])
    r.say("## What it ran on", "")
    missing = len(ran) - len(df)
    if missing:
        r.say(f"{missing} of {len(ran)} trials recorded no provenance (not started, or run before it was "
              "recorded).", "")
    if df.empty:
        return df
    table = r.table("ran_on", df.groupby(list(RAN_ON)).agg(hosts=("host", "nunique"), trials=("host", "size"))
                    .reset_index())
    r.say(table.to_markdown(index=False, disable_numparse=True), "")  # cuda 13.0, not 13
    for k in provenance.COMPARED:
        counts = df[k].value_counts()
        if len(counts) > 1:
            values = ", ".join(f"{v} ({n} of {len(df)} trials)" for v, n in counts.items())
            log.warning("sweep %s: its trials ran on more than one %s: %s", r.name, k, values)
            r.say(f"**Warning**: this sweep's trials ran on more than one {k}: {values}.", "")
    return table


def report(run_dir: str | Path, study: str | None = None, target: float | None = None, **sizes) -> Path:
    """Run a study's report on a sweep folder (`study_of` says which): its analyses, its claims judged on the
    per-seed frame they return, the benchmark sections and what the trials ran on (`ran_on`). `sizes` (see SIZES)
    override the study's defaults, which are set for the reduced sweeps; `target` is the accuracy of the benchmark
    sections' time-to-target table (analysis.benchmark.sections)."""
    r = Report(run_dir)
    key, s = study_of(r, study)
    unused = sorted(k for k, v in sizes.items() if v is not None and k not in s.sizes)
    if unused:
        raise ConfigError(f"--{unused[0].replace('_', '-')}: not used by the {key} report (it takes: "
                          f"{', '.join('--' + k.replace('_', '-') for k in sorted(s.sizes)) or 'none'})")
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in sizes.items() if v is not None}
    frame = s.analyze(r, **{**s.sizes, **given})
    claims(r, s.claims, frame)
    benchmark.sections(r, target)
    ran_on(r)
    out = r.finish()
    log.info("report: %s (%d figures)", out, len(r.figures))
    return out


def add_parser(sub, help: str) -> None:
    """Register `report` on a `parser.add_subparsers()` object; it sets func=."""
    p = sub.add_parser("report", help=help)
    p.add_argument("run_dir", help="runs/<sweep>")
    p.add_argument("--study", help=f"a registered study ({', '.join(register.names('study'))}, or a plug-in's), or "
                   "module:Class (default: the sweep YAML's `study:`, else the sweep name's prefix)")
    p.add_argument("--target", type=float, help="test accuracy for the time-to-target table (default: 0.9 x the "
                   "best any finished trial reached)")
    for k, spec in SIZES.items():
        p.add_argument("--" + k.replace("_", "-"), **{"type": int, **spec,
                                                       "help": spec["help"] + " (default: the study's, sized for the reduced sweeps)"})

    def run(a) -> int:
        print(report(a.run_dir, a.study, a.target, **{k: getattr(a, k) for k in SIZES}))
        return 0

    p.set_defaults(func=run)
