"""The run-folder layout: every path heurbench reads or writes under a results root.

    <root>/<sweep>/sweep.yaml                          the resolved sweep, as run
    <root>/<sweep>/metrics/<trial_id>/part-<n>.parquet  metrics rows, one folder per trial (compacted: one part)
    <root>/<sweep>/trials/<trial_id>/{config.yaml,status.json}, config.json once the trial ended
    <root>/<sweep>/trials/<trial_id>/ckpt/{iter=000200,epoch=030,last}.pt
    <root>/<sweep>/analysis/<kind>/part-<digest>.parquet analysis rows (report tables: analysis/report/)
    <root>/<sweep>/derived/<kind>/<name>.pt             models an analysis made (curve bends, SWA)
    <root>/<sweep>/figures/<name>.png, report.md
    <root>/<sweep>/.lock, .locks/<trial_id>.lock          the sweep's and each trial's lock (harness.lock)
    <root>/<sweep>/.heurbench-sweep                    the sweep's name: the folder is heurbench's (harness.confine)

This module is the only place that joins those names; it imports nothing heavy.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from harness import confine
from harness.errors import ConfigError

PLAIN = re.compile(r"[A-Za-z0-9_.=-]+")  # a file or folder name that cannot leave its parent


def checkpoint_name(iteration: int, epoch: int | None = None) -> str:
    """Checkpoint file name: epoch=030.pt when taken at a listed epoch, else iter=000200.pt."""
    return f"epoch={epoch:03d}.pt" if epoch is not None else f"iter={iteration:06d}.pt"


class TrialDir:
    """<sweep>/trials/<trial_id>/: config, status and checkpoints of one trial."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.id = self.path.name
        self.config = self.path / "config.yaml"
        self.config_json = self.path / "config.json"  # the same as JSON once the trial ended: ~100x faster to read
        self.status = self.path / "status.json"
        self.ckpt_dir = self.path / "ckpt"
        self.last = self.ckpt_dir / "last.pt"

    def ckpt(self, name: str) -> Path:
        return self.ckpt_dir / name

    def named(self, iteration: int, epoch: int | None = None) -> Path:
        return self.ckpt(checkpoint_name(iteration, epoch))

    def iterations(self) -> list[int]:
        """Iterations of the trial's iter=NNNNNN.pt checkpoints, ascending."""
        return sorted(int(p.stem.split("=")[1]) for p in self.ckpt_dir.glob("iter=*.pt"))

    def epoch_ckpts(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("epoch=*.pt"))

    def iter_ckpts(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("iter=*.pt"))

    def read_status(self) -> dict:
        """status.json as a mapping ({} before the trial started); a truncated or corrupt one is a one-line
        ResultsError naming the file."""
        from harness.errors import ResultsError

        if not self.status.exists():
            return {}
        confine.readable(self.status)
        try:
            status = json.loads(self.status.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ResultsError(f"{self.status}: not a readable status file (truncated or corrupt: "
                               f"{' '.join(str(err).split())[:200]}); delete it to rerun the trial") from None
        if not isinstance(status, dict):
            raise ResultsError(f"{self.status}: not a readable status file (holds a {type(status).__name__}, "
                               f"expected a mapping); delete it to rerun the trial")
        return status

    @property
    def lock(self) -> Path:
        """<sweep>/.locks/<trial_id>.lock: held while a process trains the trial (harness.lock); outside the
        trial's folder, which a trial that starts afresh removes."""
        return self.path.parent.parent / ".locks" / f"{self.id}.lock"

    def temp_files(self) -> list[Path]:
        """Temp files an interrupted atomic write left in the trial's folders (harness.storage names them
        .<name>.<random>.tmp)."""
        return [p for d in (self.path, self.ckpt_dir) for p in d.glob(".*.tmp")]


class RunDir:
    """<root>/<sweep>/: one sweep's (or one trial's) results folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.name
        self.sweep_yaml = self.path / "sweep.yaml"
        self.metrics = self.path / "metrics"
        self.figures = self.path / "figures"
        self.report_md = self.path / "report.md"
        self.report_html = self.path / "report.html"
        self.tune = self.path / ".tune"

    @property
    def lock(self) -> Path:
        """<sweep>/.lock: held by the sweep driver for the whole sweep (harness.lock)."""
        return self.path / ".lock"

    def trial(self, trial_id: str) -> TrialDir:
        return TrialDir(self.path / "trials" / trial_id)

    def trial_ids(self) -> list[str]:
        """Ids of the trials with a folder under trials/, sorted."""
        return sorted(p.name for p in (self.path / "trials").glob("*") if p.is_dir())

    def metrics_of(self, trial_id: str) -> Path:
        """metrics/<trial_id>/: the trial's parts. A folder per trial lets a reader pick trials by path, and
        `pd.read_parquet(metrics)` still reads them all (it skips the hidden folders below)."""
        return self.metrics / trial_id

    def metrics_part(self, trial_id: str, n: int) -> Path:
        return self.metrics_of(trial_id) / f"part-{n:05d}.parquet"

    def metrics_temp_files(self, trial_id: str) -> list[Path]:
        """Temp files an interrupted write of the trial's metrics parts left behind."""
        return list(self.metrics_of(trial_id).glob(".part-*.tmp"))

    def metrics_parts(self, trial_id: str) -> dict[int, Path]:
        """The trial's metrics parts by (first) number."""
        return {int(p.stem.removeprefix("part-")): p for p in self.metrics_of(trial_id).glob("part-*.parquet")}

    def metrics_trials(self) -> list[str]:
        """Ids of the trials with a metrics folder, sorted."""
        return sorted(p.name for p in self.metrics.glob("*") if p.is_dir() and not p.name.startswith("."))

    def metrics_staged(self, trial_id: str) -> Path:
        """metrics/.<trial_id>.compact/: a compaction's merged part before it replaces the trial's folder."""
        return self.metrics / f".{trial_id}.compact"

    def metrics_staged_trials(self) -> list[str]:
        """Ids of the trials with a staged merged part (a compaction in progress, or killed)."""
        return sorted(p.name[1:].removesuffix(".compact") for p in self.metrics.glob(".*.compact"))

    def metrics_retired(self, trial_id: str) -> Path:
        """metrics/.<trial_id>.old/: the trial's parts once the merged part has replaced them."""
        return self.metrics / f".{trial_id}.old"

    def legacy_metrics_parts(self, trial_id: str) -> dict[int, Path]:
        """Parts of the earlier flat layout, metrics/part-<trial_id>-<n>.parquet, by number."""
        return {int(p.stem.rsplit("-", 1)[1]): p for p in self.metrics.glob(f"part-{trial_id}-*.parquet")}

    def analysis(self, kind: str) -> Path:
        """Folder of one analysis kind's Parquet parts."""
        return self.path / "analysis" / kind

    def analysis_part(self, kind: str, digest: str) -> Path:
        return self.analysis(kind) / f"part-{digest}.parquet"

    def report_table(self, name: str) -> Path:
        return self.analysis("report") / f"{name}.parquet"

    def derived(self, kind: str, name: str) -> Path:
        return self.path / "derived" / kind / name

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"

    def sibling(self, sweep: str) -> "RunDir":
        """Another sweep's folder under the same results root (for @sweep:point:file references)."""
        return RunDir(self.path.parent / sweep)

    def is_run(self) -> bool:
        """Whether the folder holds a sweep's (or a trial's) results."""
        return self.sweep_yaml.is_file() or self.metrics.is_dir() or (self.path / "trials").is_dir()

    def analysis_parts(self, kind: str) -> list[Path]:
        """One analysis kind's Parquet parts, sorted."""
        return sorted(self.analysis(kind).glob("part-*.parquet"))

    def derived_of(self, part: Path, prefix: str) -> Path:
        """derived/<kind>/<prefix>-<digest>.pt: a model an analysis made, named after its rows' part."""
        return self.derived(part.parent.name, f"{prefix}-{part.stem.removeprefix('part-')}.pt")

    def figure_of(self, part: Path, suffix: str) -> Path:
        """figures/<kind>-<digest>-<suffix>.png: a figure of one analysis part's rows."""
        return self.figure(f"{part.parent.name}-{part.stem.removeprefix('part-')}-{suffix}")

    def point_trials(self) -> dict[int, str]:
        """Trial id per grid-point index, from the resolved sweep.yaml."""
        from harness.yamlfile import read_yaml

        if not self.sweep_yaml.is_file():
            raise FileNotFoundError(f"{self.sweep_yaml} not found (run sweep {self.name!r} first)")
        return {p["index"]: p["trial_id"] for p in read_yaml(self.sweep_yaml)["points"]}

    def reference(self, ref: str) -> Path:
        """A plain path, or the checkpoint '@<sweep>:<point index>:<file>' names in a sibling sweep (resolved
        at run time, so trial ids stay independent of where the results root lives). The sweep and file must be
        plain names: a reference never leaves the results root."""
        if not ref.startswith("@"):
            return Path(ref)
        try:
            sweep, point, file = ref[1:].split(":")
            index = int(point)
        except ValueError:
            raise ConfigError(f"checkpoint reference {ref!r}: expected '@<sweep>:<point index>:<file>'") from None
        for what, name in (("sweep", sweep), ("file", file)):
            if not PLAIN.fullmatch(name) or name in (".", ".."):
                raise ConfigError(f"checkpoint reference {ref!r}: the {what} must be a plain name (letters, digits, "
                                  f"'_.=-'), so the reference stays inside the results root")
        trials = self.sibling(sweep).point_trials()
        if index not in trials:
            raise ConfigError(f"checkpoint reference {ref!r}: sweep {sweep!r} has points {sorted(trials)}")
        path = self.sibling(sweep).trial(trials[index]).ckpt(file)
        confine.inside(path, self.path.parent, f"checkpoint reference {ref!r}")  # links resolved, then confined
        return path


def run_of_checkpoint(path: str | Path) -> RunDir:
    """The sweep folder a checkpoint belongs to: <sweep> for <sweep>/trials/<id>/ckpt/<file>.pt and
    <sweep>/derived/<kind>/<file>.pt; the file's own folder otherwise."""
    path = Path(path).resolve()
    if path.parent.name == "ckpt" and len(path.parents) > 3 and path.parents[2].name == "trials":
        return RunDir(path.parents[3])
    if len(path.parents) > 2 and path.parents[1].name == "derived":
        return RunDir(path.parents[2])
    return RunDir(path.parent)


def trial_of_checkpoint(path: str | Path) -> str:
    """The trial folder name of <...>/trials/<id>/ckpt/<file>.pt, else the file's folder name."""
    path = Path(path)
    return path.parent.parent.name if path.parent.name == "ckpt" else path.parent.name
