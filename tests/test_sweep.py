"""harness.grid, harness.tune_driver and `heurbench sweep`: grid expansion and validation, `sweep plan`, and real Ray Tune sweeps (local cluster),
including a driver killed mid-sweep and re-run (finished trials skipped, unfinished ones resumed)."""
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from harness.errors import ConfigError
from harness.grid import in_order, load_sweep, seed_list
from harness.metrics import tag_columns
from harness.runner import run_point
from heurbench.cli import main

ROW_KEY = ["trial_id", "kind", "split", "iteration"]


@pytest.fixture
def trial_dict(trial_dict):
    """conftest's tiny trial, with the budget and logging cadence these tests count on."""
    trial_dict.update(budget={"iterations": 16}, eval={"every": 8, "unit": "iteration", "train_stride": 2,
                                                        "log_every": 8})
    return trial_dict


def write_sweep(tmp_path, base, name="s", **spec):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, **spec}))
    return path


def statuses(out):
    return {p.parent.name: yaml.safe_load(p.read_text()) for p in out.glob("trials/*/status.json")}


def test_grid_zip_seeds_and_overrides_expand_to_validated_trials(trial_dict, tmp_path):
    path = write_sweep(tmp_path, trial_dict, grid={"model.name": ["student_cnn", "vgg11"]},
                       zip=[{"data.batch_size": [100, 5000], "warmup.length": [0, 200]}], seeds=[0, 1],
                       overrides=[{"when": {"data.batch_size": 5000}, "set": {"optim.lr": 2.5}}])
    sweep = load_sweep(path)
    assert len(sweep.points) == 2 * 2 * 2
    p = sweep.points[3]  # student_cnn, batch 5000, seed 1: seeds vary fastest
    assert p.values == {"model.name": "student_cnn", "data.batch_size": 5000, "warmup.length": 200, "seed": 1,
                        "optim.lr": 2.5}
    assert (p.cfg.model.name, p.cfg.data.batch_size, p.cfg.warmup.length, p.cfg.seed, p.cfg.optim.lr) == \
        ("student_cnn", 5000, 200, 1, 2.5)
    assert p.cfg.tags == {"model.name": "student_cnn", "data.batch_size": 5000, "warmup.length": 200, "optim.lr": 2.5}
    assert [q.cfg.optim.lr for q in sweep.points] == [0.02, 0.02, 2.5, 2.5] * 2
    assert len({q.trial_id for q in sweep.points}) == 8
    assert load_sweep(path).points[5].trial_id == sweep.points[5].trial_id  # ids are stable


def test_base_file_is_relative_to_the_sweep_and_depends_on_orders_sweeps(trial_dict, tmp_path):
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(trial_dict))
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({"name": "teacher", "base_file": "trial.yaml"}))
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump({"name": "student", "base_file": "trial.yaml", "depends_on": ["teacher.yaml"],
                                    "grid": {"optim.lr": [0.01, 0.02]}}))
    assert [s.name for s in in_order(path)] == ["teacher", "student"]
    assert len(load_sweep(tmp_path / "teacher.yaml").points) == 1
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({"name": "teacher", "base_file": "trial.yaml",
                                                           "depends_on": ["student.yaml"]}))
    with pytest.raises(ConfigError, match="cycle"):
        in_order(path)


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"optim.lrr": [0.1]}}, r"grid point 0 \(optim.lrr=0.1\): unknown key 'optim.lrr'"),
    ({"grid": {"optim.lr": [0.1, -1.0]}}, r"grid point 1 \(optim.lr=-1.0\): optim.lr = -1.0: .*greater than 0"),
    ({"grid": {"optim.lr": []}}, r"s.yaml: grid = .*has no values"),
    ({"zip": [{"optim.lr": [0.1, 0.2], "seed": [0]}]}, r"s.yaml: zip = .*equal length"),
    ({"seeds": [0, 0]}, r"grid points 0 and 1 are the same trial"),
    ({"grid": {"optim.lr": [0.1, 0.2]}, "overrides": [{"when": {"optim.lr": 0.2}, "set": {"optim.lr": 0.1}}]},
     r"grid points 0 and 1 are the same trial \(optim.lr=0.2\)"),
    ({"resources": {"gpus_per_trial": 1.5}}, r"resources = .*whole number"),
    ({"resources": {"cpus": 2}}, r"unknown key 'resources.cpus'"),
    ({"overrides": [{"when": {}, "set": {"optim.lr": 1}}]}, r"overrides.0.when = \{\}: .*at least 1"),
    ({"grdi": {}}, r"unknown key 'grdi'"),
    ({"grid": {"seed.x": [1]}}, r"s.yaml: seed.x: 'seed' is not a section"),
    ({"name": ".."}, r"name = '..': must be a plain name"),
    ({"name": "../x"}, r"must be a plain name"),
    ({"grdi": {}, "grid": {}}, r"unknown key 'grdi' \(did you mean 'grid'\?\)"),
    ({"overrides": [{"when": {"data.batchsize": 50}, "set": {"optim.lr": 1}}]},
     r"overrides.0.when: unknown key 'data.batchsize' \(did you mean 'batch_size'\?\); this rule would never fire"),
    ({"overrides": [{"when": {"tags.x.y": 1}, "set": {"optim.lr": 1}}]}, r"unknown key 'tags.x.y'"),
])
def test_bad_sweeps_give_one_line_naming_file_and_key(trial_dict, tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_sweep(write_sweep(tmp_path, trial_dict, **spec))
    assert "\n" not in str(err.value)


def test_an_override_matching_no_point_is_a_warning(trial_dict, tmp_path, caplog):
    spec = {"grid": {"optim.lr": [0.1, 0.2]}, "overrides": [{"when": {"optim.lr": 0.3}, "set": {"seed": 1}},
                                                         {"when": {"tags.kind": "x"}, "set": {"seed": 2}}]}
    with caplog.at_level("WARNING"):
        assert len(load_sweep(write_sweep(tmp_path, trial_dict, **spec)).points) == 2
    assert "overrides.0 (when {'optim.lr': 0.3}) matches no grid point" in caplog.text


def test_an_override_when_matches_the_schema_default_of_a_key_the_base_leaves_out(trial_dict, tmp_path, caplog):
    """The base has no warmup section: `warmup.length: 0` (its default) matches a point whose warmup mapping leaves
    length out, not one that sets it; a key in an absent optional section (distill) matches nothing."""
    assert "warmup" not in trial_dict and "distill" not in trial_dict
    spec = {"grid": {"warmup": [{"unit": "epoch"}, {"length": 4}]},
            "overrides": [{"when": {"warmup.length": 0, "warmup.eta_init": 0.0}, "set": {"optim.lr": 0.5}},
                          {"when": {"distill.temperature": 4.0}, "set": {"optim.lr": 0.7}}]}
    with caplog.at_level("WARNING"):
        points = load_sweep(write_sweep(tmp_path, trial_dict, **spec)).points
    assert [(p.cfg.warmup.length, p.cfg.optim.lr) for p in points] == [(0, 0.5), (4, 0.02)]
    assert "overrides.1 (when {'distill.temperature': 4.0}) matches no grid point" in caplog.text
    assert "overrides.0" not in caplog.text


def test_plan_lists_the_first_rows_and_all_of_them_on_request(trial_dict, tmp_path, capsys):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02, 0.03], "data.batch_size": [50, 100]},
                       seeds=[0, 1])
    ids = [p.trial_id for p in load_sweep(path).points]
    assert main(["sweep", "plan", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in lines[2:12]] == ids[:10]
    assert lines[12] == "... 2 more trials (--all lists every one)"
    assert "data.batch_size = 50, 100 (2)" in lines[13] and len(lines) == 14
    assert main(["sweep", "plan", str(path), "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines[2:14]] == [[str(i), t] for i, t in enumerate(ids)]
    assert lines[14].startswith("distinct: ") and len(lines) == 15


def test_base_and_base_file_are_exclusive(trial_dict, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of base"):
        load_sweep(write_sweep(tmp_path, trial_dict, base_file="x.yaml"))


def test_plan_prints_ids_and_swept_values_without_running(trial_dict, tmp_path, capsys):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02]}, seeds=[3, 4],
                       resources={"gpus_per_trial": 0.25})
    assert main(["sweep", "plan", str(path), "--out", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4 trials" in lines[0] and "0.25 GPU" in lines[0]
    assert lines[1].split() == ["#", "trial_id", "optim.lr", "seed"]
    ids = [p.trial_id for p in load_sweep(path).points]
    swept = [("0.01", "3"), ("0.01", "4"), ("0.02", "3"), ("0.02", "4")]
    assert [ln.split() for ln in lines[2:6]] == [[str(i), ids[i], lr, s] for i, (lr, s) in enumerate(swept)]
    assert lines[6].startswith("distinct: model.name = student_cnn (1); model.width = 0.25 (1); data.name = parquet (1); "
                               "data.batch_size = 50 (1); budget.iterations = 16 (1); perf.device = auto (1)")
    assert len(lines) == 7
    assert not (tmp_path / "runs").exists()
    assert main(["sweep", "plan", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err


def sweep_cmd(path, out, address):
    return [sys.executable, "-m", "heurbench.cli", "sweep", str(path), "--out", str(out), "--address", address]


@pytest.mark.slow
def test_sweep_records_divergence_and_writes_one_parquet_dataset(trial_dict, tmp_path, ray_address):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 50.0]}, seeds=[0])
    r = subprocess.run(sweep_cmd(path, tmp_path / "runs", ray_address), capture_output=True, text=True, timeout=300)
    out = tmp_path / "runs" / "s"
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2/2 finished" in r.stderr and "ETA" in r.stderr
    st = statuses(out)
    sweep = load_sweep(path)
    assert [st[p.trial_id]["state"] for p in sweep.points] == ["done", "diverged"]
    df = pd.read_parquet(out / "metrics")
    assert set(df.trial_id) == {p.trial_id for p in sweep.points}
    assert not df.duplicated(ROW_KEY).any()
    assert set(df["optim.lr"]) == {0.01, 50.0} and (df.seed == 0).all() and (df.sweep == "s").all()
    assert yaml.safe_load((out / "sweep.yaml").read_text())["points"][1]["trial_id"] == sweep.points[1].trial_id


@pytest.mark.slow
def test_killed_driver_rerun_skips_finished_and_resumes_unfinished(trial_dict, tmp_path, ray_address):
    """A short and a long trial side by side: the driver is killed once the short one is done."""
    n_long = 240  # iterations: the long trial is still running when the short one (16) ends, even on a busy machine
    path = write_sweep(tmp_path, trial_dict, zip=[{"optim.lr": [0.01, 0.02], "budget.iterations": [16, n_long]}])
    short, long = (p.trial_id for p in load_sweep(path).points)
    out = tmp_path / "runs" / "s"
    driver = subprocess.Popen(sweep_cmd(path, tmp_path / "runs", ray_address), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)

    def ready(st):  # the short trial done, the long one past its first checkpoint (on 2 CPUs it may start later)
        return st.get(short, {}).get("state") == "done" and st.get(long, {}).get("iteration", 0) >= 8

    deadline = time.time() + 240
    while time.time() < deadline and not ready(statuses(out)):
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = statuses(out)
    assert before[short]["state"] == "done"
    assert before[long]["state"] == "running" and 8 <= before[long]["iteration"] < n_long, before
    first_part = out / "metrics" / long / "part-00000.parquet"
    written = pd.read_parquet(first_part)
    time.sleep(3)  # Ray ends the dead driver's trial actors

    r = subprocess.run(sweep_cmd(path, tmp_path / "runs", ray_address), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 already finished, 1 to run" in r.stderr
    assert f"{long} resuming at iteration" in r.stdout + r.stderr
    kept = pd.read_parquet(first_part)  # the trial's parts, compacted into one when it ended
    pd.testing.assert_frame_equal(kept.iloc[:len(written)], written)  # rows before the checkpoint kept, not redone
    after = statuses(out)
    assert after[short] == before[short] and after[long]["state"] == "done"
    df = pd.read_parquet(out / "metrics")
    assert not df.duplicated(ROW_KEY).any()
    for tid, n in ((short, 16), (long, n_long)):  # nothing lost either
        assert sorted(df[(df.trial_id == tid) & (df.kind == "step")].iteration) == list(range(0, n, 2))
        test_rows = df[(df.trial_id == tid) & (df.kind == "eval") & (df.split == "test")]
        assert sorted(test_rows.iteration) == list(range(8, n + 1, 8))


def test_seed_lists_parse_ranges_and_refuse_nonsense():
    assert seed_list("0-3") == [0, 1, 2, 3] and seed_list("5,0-2,1") == [5, 0, 1, 2] and seed_list("7") == [7]
    for bad in ("", "3-1", "-1", "a", "0-", "1,,2"):
        with pytest.raises(ConfigError, match="--seeds"):
            seed_list(bad)


@pytest.mark.slow
def test_more_seeds_train_only_the_new_ones_and_leave_finished_trials_untouched(trial_dict, tmp_path, ray_address):
    """`--seeds 0-3` over a finished seeds [0, 1] sweep: two new trials, the two finished ones' files unchanged."""
    path = write_sweep(tmp_path, trial_dict, seeds=[0, 1])
    out = tmp_path / "runs" / "s"
    assert subprocess.run(sweep_cmd(path, tmp_path / "runs", ray_address), capture_output=True,
                          timeout=300).returncode == 0
    old = {f: f.read_bytes() for f in out.rglob("*") if f.is_file() and ("trials" in f.parts or "metrics" in f.parts)}
    r = subprocess.run(sweep_cmd(path, tmp_path / "runs", ray_address) + ["--seeds", "0-3"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 trials, 2 already finished, 2 to run" in r.stderr
    assert all(f.read_bytes() == data for f, data in old.items())
    st = statuses(out)
    assert len(st) == 4 and {s["state"] for s in st.values()} == {"done"}
    assert sorted(set(pd.read_parquet(out / "metrics").seed)) == [0, 1, 2, 3]
    assert yaml.safe_load((out / "sweep.yaml").read_text())["seeds"] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_new_local_cluster_is_announced_by_heurbench_not_by_rays_notices(trial_dict, tmp_path):
    path = write_sweep(tmp_path, trial_dict)
    r = subprocess.run([sys.executable, "-m", "heurbench.cli", "sweep", str(path), "--out", str(tmp_path / "runs"),
                        "--num-cpus", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"ray: a new local Ray cluster on 127.0.0.1 \(1 CPUs, 0 GPUs; RAY_AUTH_MODE=\w+\)", r.stderr)
    assert not re.search("Token authentication is enabled|tensorboard|Configuration for experiment", r.stderr)


@pytest.mark.slow
def test_ddp_trials_in_a_sweep_run_two_ranks_each(trial_dict, tmp_path, ray_address):
    path = write_sweep(tmp_path, trial_dict, seeds=[0], resources={"workers_per_trial": 2, "cpus_per_trial": 2})
    r = subprocess.run(sweep_cmd(path, tmp_path / "runs", ray_address), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "runs" / "s" / "metrics")
    assert (df.world_size == 2).all() and not df.duplicated(ROW_KEY).any()


def test_a_crashing_trial_is_marked_failed(trial_dict, tmp_path):
    trial_dict["data"]["root"] = str(tmp_path / "nowhere")
    sweep = load_sweep(write_sweep(tmp_path, trial_dict))
    with pytest.raises(Exception, match="no such file"):
        run_point(sweep.points[0].cfg, tmp_path / "runs" / "s")
    (status,) = statuses(tmp_path / "runs" / "s").values()
    assert status["state"] == "failed" and "no such file" in status["reason"]


@pytest.mark.slow
def test_a_trial_that_raises_in_a_sweep_is_not_retried(trial_dict, tmp_path, ray_address):
    trial_dict["data"]["root"] = str(tmp_path / "nowhere")
    path = write_sweep(tmp_path, trial_dict, seeds=[0])
    r = subprocess.run(sweep_cmd(path, tmp_path / "runs", ray_address), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.count("raised (not retried") == 1 and "retry 1/" not in r.stderr, r.stderr[-3000:]
    assert "1/1 finished (1 failed)" in r.stderr
    (status,) = statuses(tmp_path / "runs" / "s").values()
    assert status["state"] == "failed" and "no such file" in status["reason"]


def test_tag_columns_give_each_column_one_type_across_points():
    cols = tag_columns([{"lr": 1, "warmup": None, "bn": True, "mix": "a"},
                        {"lr": 0.5, "warmup": {"length": 20}, "bn": False, "mix": 3},
                        {"lr": None, "bn": True, "mix": None}])
    assert [c["lr"] for c in cols][:2] == [1.0, 0.5] and cols[2]["lr"] != cols[2]["lr"]  # NaN
    assert [c["warmup"] for c in cols] == ["none", '{"length": 20}', "none"]
    assert [c["bn"] for c in cols] == [True, False, True]
    assert [c["mix"] for c in cols] == ["a", "3", "none"]


def test_sweep_parts_share_one_schema_when_overrides_set_sections(trial_dict, tmp_path):
    spec = {"name": "schema", "base": trial_dict, "grid": {"tags.run": ["a", "b"]},
            "overrides": [{"when": {"tags.run": "b"}, "set": {"warmup": {"length": 4}}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    for p in sweep.points:
        p.cfg.budget.iterations = 2
        p.cfg.eval.every = 2
        run_point(p.cfg, tmp_path / "runs" / "schema")
    df = pd.read_parquet(tmp_path / "runs" / "schema" / "metrics")
    assert sorted(df["warmup"].unique()) == ["none", '{"length": 4}']


@pytest.mark.slow
@pytest.mark.parametrize("pack", [2, "auto"])
def test_packed_sweep_trains_points_together_and_records_each(trial_dict, tmp_path, ray_address, pack):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02]}, seeds=[0, 1],
                       resources={"pack": pack, "cpus_per_trial": 1})
    r = subprocess.run(sweep_cmd(path, tmp_path / "runs", ray_address), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4/4 finished" in r.stderr
    if pack == 2:
        assert r.stderr.count("pack[2]") >= 2  # both packs logged progress
    else:
        assert "pack probe 1:" in r.stderr
    out = tmp_path / "runs" / "s"
    assert {s["state"] for s in statuses(out).values()} == {"done"} and len(statuses(out)) == 4
    df = pd.read_parquet(out / "metrics")
    assert not df.duplicated(ROW_KEY).any() and df.trial_id.nunique() == 4
