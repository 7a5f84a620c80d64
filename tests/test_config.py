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
    (lambda d: d["model"].update(name="vgg19"), "model.name = 'vgg19': unknown model 'vgg19'; expected one of"),
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
