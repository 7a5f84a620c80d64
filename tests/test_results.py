"""heurbench.results (one typed table over a results root) and harness.metrics compaction (atomic, re-runnable)."""
import copy
import json
import os

import pandas as pd
import pyarrow as pa
import pytest

from analysis import results as analysis_results
from harness import metrics
from harness.config import dump, parse_trial
from harness.errors import ResultsError
from harness.grid import set_dotted
from harness.layout import RunDir
from harness.metrics import MetricsWriter, row, tag_columns
from harness.storage import write_json, write_text
from heurbench import results
from heurbench.cli import main


def fake_trial(root, sweep, trial_dict, parts=3, state="done", tags=None, **values):
    """A trial folder as a run leaves it (config.yaml, status.json, one metrics part per evaluation, written by
    the real MetricsWriter); `values` set dotted config keys. Returns (trial id, every row written, in order)."""
    d = copy.deepcopy(trial_dict)
    for key, v in values.items():
        set_dotted(d, key, v, "fake_trial")
    d["tags"] = tags or {}
    cfg = parse_trial(d)
    run, tid = RunDir(root / sweep), cfg.trial_id()
    write_text(run.trial(tid).config, dump(cfg))
    write_json(run.trial(tid).status, {"state": state})
    w = MetricsWriter(run, tid, {"sweep": sweep, "trial_id": tid, **tag_columns([cfg.tags])[0], "seed": cfg.seed,
                                 "world_size": 1})
    for n in range(parts):
        w.add(row("step", "train", epoch=n, iteration=10 * n, lr=0.1 + n, loss=2.0 - n / 10, weight_norm=1.0,
                  wall_time=n, images_per_s=5.0))
        w.add(row("eval", "test", epoch=n + 1, iteration=10 * n + 10, lr=0.1 + n, loss=1.0, accuracy=n / parts,
                  weight_norm=1.0, wall_time=n + 0.5, images_per_s=5.0))
        w.flush()
    return tid, pd.read_parquet(run.metrics_of(tid)).sort_values(["iteration", "kind"]).reset_index(drop=True)


@pytest.fixture
def tree(trial_dict, tmp_path):
    """Two sweeps: s1 (warmup swept as a whole mapping, batch 50 and 100) and s2 (eta_init catapult, batch 100)."""
    ids = {}
    for n, b in enumerate((50, 100)):
        ids[("s1", b)] = fake_trial(tmp_path, "s1", trial_dict, parts=2 + n, tags={"warmup": json.dumps({"length": 4}),
                                    "data.batch_size": float(b), "lr": 9.0}, **{"warmup.length": 4,
                                    "data.batch_size": b, "freeze.groups": ["features"], "freeze.length": 2})[0]
    ids[("s2", 100)] = fake_trial(tmp_path, "s2", trial_dict, parts=2, state="diverged",
                                  **{"warmup.eta_init": "catapult", "data.batch_size": 100, "warmup.length": 8})[0]
    (tmp_path / "s1" / "figures").mkdir()
    (tmp_path / "s1" / "figures" / "acc.png").write_bytes(b"\x89PNG not parquet")  # what trips pd.read_parquet
    return tmp_path, ids


def test_load_gives_every_row_of_every_sweep_with_the_config_as_typed_columns(tree):
    root, ids = tree
    df = results.load(root)
    assert len(df) == 2 * (2 + 3 + 2) and sorted(set(df.sweep)) == ["s1", "s2"]
    assert df.groupby("trial_id").size().to_dict() == {ids[("s1", 50)]: 4, ids[("s1", 100)]: 6, ids[("s2", 100)]: 4}
    assert df["data.batch_size"].dtype == "int64" and df["warmup.length"].dtype == "int64"
    assert df["seed"].dtype == "int64" and df["iteration"].dtype == "int64"
    assert set(df["warmup.eta_init"]) == {0.0, "catapult"}  # a number or catapult, as the schema allows
    s1 = df[df.sweep == "s1"]
    assert (s1["freeze.groups"] == '["features"]').all() and (s1["freeze.length"] == 2).all()
    assert (df[df.sweep == "s2"]["state"] == "diverged").all() and (s1["state"] == "done").all()
    assert "warmup" not in df.columns  # the swept mapping's text gave way to its typed fields
    assert sorted(set(s1.lr)) == [0.1, 1.1, 2.1]  # a tag named like a metrics field does not replace it
    assert list(df.columns[:2]) == ["sweep", "trial_id"]


def test_where_on_config_columns_opens_only_the_matching_trials_files(tree):
    root, ids = tree
    run = RunDir(root / "s1")
    for p in run.metrics_parts(ids[("s1", 50)]).values():
        p.write_bytes(b"PAR1 corrupt")  # opening it would raise
    df = results.load(root, where={"data.batch_size": 100, "split": "test"})
    assert set(df.trial_id) == {ids[("s1", 100)], ids[("s2", 100)]} and (df.split == "test").all()
    assert len(results.load(root, where={"trial_id": ids[("s2", 100)]})) == 4
    assert len(results.load(root, sweep="s2")) == 4
    with pytest.raises(pa.ArrowInvalid):
        results.load(root, sweep="s1")  # the corrupt part is read when its trial is asked for


def test_where_keeps_rows_holding_any_listed_value_and_bad_names_are_one_line_errors(tree):
    root, ids = tree
    df = results.load(root, sweep=["s1"], where={"kind": "eval", "epoch": [1.0, 3.0]})
    assert sorted(df.epoch) == [1.0, 1.0, 3.0] and (df.kind == "eval").all()
    with pytest.raises(ResultsError, match="no sweep 's9'"):
        results.load(root, sweep="s9")
    assert set(results.load(root, where={"warmup.eta_init": "catapult"}).sweep) == {"s2"}
    with pytest.raises(ResultsError, match="no sweep under .* has a column 'nope'"):
        results.load(root, where={"nope": 1})
    for where in ({"data.batch_size": 7}, {"trial_id": "0123456789"}):
        with pytest.raises(ResultsError, match="no metrics rows"):
            results.load(root, where=where)


def test_a_single_sweep_folder_and_analysis_tables_load_the_same_way(tree):
    root, ids = tree
    assert len(results.load(root / "s2")) == 4
    for sweep in ("s1", "s2"):
        analysis_results.write(root / sweep, "connect", [{"t": 0.5, "loss": 1.0}], ["a", "b"])
    df = results.load(root, table="connect")
    assert sorted(df.sweep) == ["s1", "s2"] and list(df.columns[:2]) == ["sweep", "kind"]
    assert len(pd.read_parquet(root / "s1" / "metrics")) == 10  # one sweep's folder stays a plain dataset


def test_compaction_merges_a_trials_parts_into_one_with_the_same_rows_and_is_idempotent(tree):
    root, ids = tree
    run, tid = RunDir(root / "s1"), ids[("s1", 100)]
    before = pd.read_parquet(run.metrics_of(tid))
    assert metrics.compact(run, tid) and not metrics.compact(run, tid)
    (merged,) = run.metrics_parts(tid).values()
    pd.testing.assert_frame_equal(pd.read_parquet(merged), before)
    assert metrics.part_rows(merged) == [2, 2, 2] and not any(p.name.startswith(".") for p in run.metrics.iterdir())
    assert results.compact(root) == 2  # the other two trials (one done, one diverged)
    assert all(len(RunDir(root / s).metrics_parts(t)) == 1 for (s, _), t in ids.items())


def test_a_resume_cuts_a_merged_part_back_to_the_parts_before_its_checkpoint(tree):
    root, ids = tree
    run, tid = RunDir(root / "s1"), ids[("s1", 100)]
    before = pd.read_parquet(run.metrics_of(tid))
    metrics.compact(run, tid)
    MetricsWriter(run, tid, {}, parts=2)  # resuming from the checkpoint taken after part 1
    (merged,) = run.metrics_parts(tid).values()
    pd.testing.assert_frame_equal(pd.read_parquet(merged), before.iloc[:4])
    assert metrics.part_rows(merged) == [2, 2]
    MetricsWriter(run, tid, {}, parts=0)  # starting afresh
    assert run.metrics_parts(tid) == {}


class Killed(BaseException):
    pass


def kill_at(monkeypatch, target, name, at):
    """Make `target.name` raise Killed on its `at`-th call (what a kill between two steps leaves)."""
    real, calls = getattr(target, name), []

    def step(*a, **k):
        calls.append(a)
        if len(calls) == at:
            raise Killed(name)
        return real(*a, **k)
    monkeypatch.setattr(target, name, step)


@pytest.mark.parametrize("target,name,at", [
    ("storage", "os.replace", 1),  # killed writing the merged part (staged temp file left)
    ("metrics", "os.rename", 1),  # merged part staged, parts untouched
    ("metrics", "os.rename", 2),  # parts folder retired, merged part not yet in place
    ("metrics", "shutil.rmtree", 3),  # merged part in place, retired parts not yet removed
])
def test_compaction_killed_at_any_step_never_shows_a_row_twice_and_a_rerun_completes_it(tree, monkeypatch, caplog,
                                                                                         target, name, at):
    from harness import storage

    root, ids = tree
    run, tid = RunDir(root / "s1"), ids[("s1", 100)]
    before = pd.read_parquet(run.metrics_of(tid))
    module, attr = name.split(".")
    with monkeypatch.context() as m:
        kill_at(m, getattr({"storage": storage, "metrics": metrics}[target], module), attr, at)
        with pytest.raises(Killed):
            metrics.compact(run, tid)
    seen = pd.read_parquet(run.metrics)
    mine = seen[seen.trial_id == tid]
    if name == "os.rename" and at == 2:
        assert mine.empty  # the one moment the trial is not visible: it is never visible twice
        results.load(root, sweep="s1")
        assert f"{tid} were killed mid-compaction" in caplog.text
    else:
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), before)
    assert len(seen) == 10 - 6 + len(mine)
    results.compact(root, "s1")
    (merged,) = run.metrics_parts(tid).values()
    pd.testing.assert_frame_equal(pd.read_parquet(merged), before)
    assert sorted(p.name for p in run.metrics.iterdir()) == sorted(t for (s, _), t in ids.items() if s == "s1")


def test_results_compact_moves_parts_of_the_earlier_flat_layout_into_the_trials_folder(tree, capsys):
    root, ids = tree
    run, tid = RunDir(root / "s2"), ids[("s2", 100)]
    before = pd.read_parquet(run.metrics_of(tid))
    for n, p in run.metrics_parts(tid).items():
        os.replace(p, run.metrics / f"part-{tid}-{n:05d}.parquet")
    assert main(["results", "compact", str(root)]) == 0
    assert "compacted the metrics parts of 3 ended trials" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(run.metrics), before)
    assert sorted(p.name for p in run.metrics.iterdir()) == [tid]


@pytest.mark.slow
def test_a_real_trial_ends_with_its_parts_compacted_into_the_same_rows(trial_dict, tmp_path, monkeypatch):
    from harness.train import run_trial

    seen, real = {}, metrics.compact

    def spy(run, tid):
        seen["parts"] = len(run.metrics_parts(tid))
        seen["rows"] = pd.read_parquet(run.metrics_of(tid))
        return real(run, tid)
    monkeypatch.setattr(metrics, "compact", spy)
    cfg = parse_trial(trial_dict)
    assert run_trial(cfg, tmp_path / "t") == "done"
    run = RunDir(tmp_path / "t")
    (merged,) = run.metrics_parts(cfg.trial_id()).values()
    assert seen["parts"] == 2 and metrics.part_rows(merged) == [6, 6]
    pd.testing.assert_frame_equal(pd.read_parquet(merged), seen["rows"])
    df = results.load(tmp_path / "t")
    assert len(df) == 12 and (df["data.batch_size"] == 50).all() and (df.state == "done").all()
