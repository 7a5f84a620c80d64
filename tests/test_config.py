import subprocess
import sys

import pytest
import yaml

from harness.config import load_trial, parse_trial
from harness.errors import ConfigError


def write(tmp_path, d, name="trial.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def test_valid_trial_loads_with_defaults(trial_dict, tmp_path):
    cfg = load_trial(write(tmp_path, trial_dict))
    assert cfg.model.name == "student_cnn"
    assert cfg.schedule.name == "constant" and cfg.warmup.length == 0
    assert cfg.checkpoints.iterations == [0]


def test_trial_id_is_stable_and_ignores_name(trial_dict):
    a = parse_trial(trial_dict)
    trial_dict["name"] = "other"
    assert parse_trial(trial_dict).trial_id() == a.trial_id()
    trial_dict["optim"]["lr"] = 0.03
    assert parse_trial(trial_dict).trial_id() != a.trial_id()


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d["optim"].update(lrr=0.1), "unknown key 'optim.lrr'"),
    (lambda d: d["optim"].update(lr=-0.1), "optim.lr = -0.1: Input should be greater than 0"),
    (lambda d: d["model"].update(name="vgg19"), "model.name = 'vgg19': unknown model 'vgg19' (did you mean 'vgg16'?); expected one of"),
    (lambda d: d["data"].update(batch_size="big"), "data.batch_size = 'big'"),
    (lambda d: d["budget"].update(epochs=3), "budget needs exactly one of epochs or iterations"),
    (lambda d: d.pop("optim"), "missing required key 'optim'"),
    (lambda d: d.update(schedule={"name": "step", "milestones": [60, 30]}), "schedule.milestones = [60, 30]"),
    (lambda d: d.update(schedule={"name": "exponential"}),
     "schedule.name = 'exponential': unknown schedule 'exponential'; expected one of ['constant', 'cosine',"),
    (lambda d: d["data"].update(name="imagenet"), "data.name = 'imagenet': unknown data set 'imagenet'; expected one of"),
    (lambda d: d["optim"].update(name="lion"), "optim.name = 'lion': unknown optimizer 'lion'; expected one of ['adam',"),
    (lambda d: d["optim"].update(name="sphere_sgd", weight_decay=1e-4), "weight_decay must be 0 for sphere_sgd"),
    (lambda d: d["data"].update(root=None), "data.root is required"),
])
def test_bad_config_names_key_value_and_expectation(trial_dict, mutate, expect, tmp_path):
    mutate(trial_dict)
    with pytest.raises(ConfigError) as e:
        load_trial(write(tmp_path, trial_dict))
    msg = str(e.value)
    assert expect in msg and str(tmp_path / "trial.yaml") in msg
    assert "\n" not in msg


def test_bad_yaml_syntax_names_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("model: {name: vgg11\noptim: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ not valid YAML"):
        load_trial(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_trial(tmp_path / "nope.yaml")


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d["optim"].update(momentm=0.9), "unknown key 'optim.momentm'"),
    (lambda d: d["optim"].update(lr=-1), "optim.lr = -1"),
    (lambda d: d["model"].update(name="alexnet"), "unknown model 'alexnet'"),
])
def test_cli_exits_nonzero_with_one_line_and_writes_nothing(trial_dict, tmp_path, mutate, expect):
    mutate(trial_dict)
    p = write(tmp_path, trial_dict)
    r = subprocess.run([sys.executable, "-m", "heurbench.cli", "train", str(p), "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d.update(modell=d.pop("model")), "unknown key 'modell' (did you mean 'model'?)"),
    (lambda d: d.update(warmup={"lenght": 3}), "unknown key 'warmup.lenght' (did you mean 'length'?)"),
    (lambda d: d["data"].update(batchsize=3), "unknown key 'data.batchsize' (did you mean 'batch_size'?)"),
    (lambda d: d.update(zzz=1), "unknown key 'zzz'"),
    (lambda d: d["optim"].update(lr=float("inf")), "optim.lr = inf: Input should be a finite number"),
    (lambda d: d["optim"].update(lr=float("nan")), "optim.lr = nan: Input should be a finite number"),
    (lambda d: d.update(name="../../x"), "name = '../../x': must be a plain name"),
    (lambda d: d.update(name="/abs/path"), "must be a plain name"),
    (lambda d: d.update(name=".."), "must be a plain name"),
    (lambda d: d.update(checkpoints={"iterations": [0, 17]}), "[17] beyond the budget of 16 iterations"),
    (lambda d: d.update(budget={"epochs": 3}, checkpoints={"epochs": [1, 4]}), "[4] beyond the budget of 3 epochs"),
    (lambda d: d.update(schedule={"name": "step", "unit": "iteration", "milestones": [4, 16]}),
     "[16] at or beyond the budget of 16 iterations"),
])
def test_never_intended_configs_are_one_line_errors(trial_dict, mutate, expect, tmp_path):
    mutate(trial_dict)
    with pytest.raises(ConfigError) as e:
        load_trial(write(tmp_path, trial_dict))
    assert expect in str(e.value) and "\n" not in str(e.value)
    if expect == "unknown key 'zzz'":
        assert "did you mean" not in str(e.value)


def test_duplicate_keys_empty_files_and_folders_are_refused(trial_dict, tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(trial_dict) + "optim: {name: sgd, lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"t.yaml: line \d+ not valid YAML \(duplicate key 'optim'\)"):
        load_trial(p)
    p.write_text("")
    with pytest.raises(ConfigError, match="t.yaml: empty file"):
        load_trial(p)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="t.yaml: not a text file"):
        load_trial(p)
    with pytest.raises(ConfigError, match="is a folder, expected a YAML file"):
        load_trial(tmp_path)


def test_budget_checks_once_steps_per_epoch_are_known(trial_dict, caplog):
    from harness.trial import steps

    assert steps(parse_trial(trial_dict), 400) == (8, 16)
    trial_dict["checkpoints"] = {"epochs": [2, 3]}  # epoch 3 starts at iteration 24 > 16
    with pytest.raises(ConfigError, match=r"checkpoints.epochs = \[2, 3\]: \[3\] beyond the budget of 16 iterations "
                                          r"\(8 per epoch\)"):
        steps(parse_trial(trial_dict), 400)
    trial_dict.update(checkpoints={"iterations": [0, 40]}, budget={"epochs": 4})
    with pytest.raises(ConfigError, match=r"\[40\] beyond the budget of 32 iterations"):
        steps(parse_trial(trial_dict), 400)
    trial_dict.update(checkpoints={}, schedule={"name": "step", "milestones": [2]})  # epoch 2 = iteration 16: fires
    assert steps(parse_trial(trial_dict), 400) == (8, 32)
    trial_dict.update(warmup={"length": 5, "unit": "epoch"})
    with caplog.at_level("WARNING"):
        steps(parse_trial(trial_dict), 400)  # a warning, not an error: a smoke run of a long config means it
    assert "warmup.length = 5 epochs is longer than the budget of 32 iterations" in caplog.text


def test_the_builtin_index_is_what_the_modules_register():
    """Configs are checked against harness/registry.py's BUILTIN index (no torch); each built-in module registers
    exactly the names the index promises for it, and one that drifts is refused when it loads."""
    from harness.registry import BUILTIN, register

    register.load_all()
    for kind, names in BUILTIN.items():
        for name, module in names.items():
            assert register.get(kind, name).module == module, (kind, name)
    BUILTIN["model"]["alexnet"] = "harness.models"
    register.loaded.discard("harness.models")
    try:
        with pytest.raises(RuntimeError, match=r"harness.models: registers models \[.*\] but harness.registry.BUILTIN "
                                               r"promises \[.*'alexnet'"):
            register.load_builtin("harness.models")
    finally:
        del BUILTIN["model"]["alexnet"]
        register.loaded.add("harness.models")
