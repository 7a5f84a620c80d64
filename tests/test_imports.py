"""The layering rules of DESIGN.md: harness imports neither analysis nor slurm, the grid and config validation
load without torch, and the command-line layer loads Ray, submitit, matplotlib, torch and pandas only when a
command that needs them runs."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "harness"


def imported(path: Path) -> set[str]:
    """Top-level package of every import statement in a module, wherever in the module it sits."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(HARNESS.glob("*.py")), ids=lambda p: p.name)
def test_harness_imports_neither_analysis_nor_slurm_nor_the_cli(path):
    assert not imported(path) & {"analysis", "slurm", "heurbench"}


@pytest.mark.parametrize("module, absent", [
    ("harness.grid", ["torch", "ray"]),
    ("harness.config", ["torch"]),
    ("harness.registry", ["torch", "pydantic"]),
    ("heurbench.cli", ["ray", "submitit", "matplotlib", "torch", "pandas"]),
])
def test_importing_loads_no_heavy_dependency(module, absent):
    code = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:] or r.stdout


VALIDATE = """
import copy, sys, yaml
from harness.config import parse_trial
from harness.errors import ConfigError
from harness.grid import read_sweep
from harness.registry import BUILTIN
NAMES = {'model': BUILTIN['model'], 'data set': BUILTIN['dataset'], 'optimizer': BUILTIN['optimizer'], 'schedule': BUILTIN['schedule']}
SECTIONS = (("model", "model"), ("data", "data set"), ("optim", "optimizer"), ("schedule", "schedule"))
trial = {"model": {"name": "vgg11"}, "data": {"name": "digits"}, "optim": {"name": "sgd", "lr": 0.1},
         "budget": {"iterations": 2}}
def with_name(section, name):
    cfg = copy.deepcopy(trial)
    cfg.setdefault(section, {}).update(name=name, **({"root": "x"} if section == "data" else {}))
    return cfg
for section, kind in SECTIONS:
    for name in NAMES[kind]:  # every built-in name validates
        parse_trial(with_name(section, name))
open(sys.argv[1], "w").write(yaml.safe_dump({"name": "s", "base": trial, "seeds": [0, 1],
                                             "grid": {"model.name": list(NAMES["model"])}}))
assert len([p.cfg for p in read_sweep(sys.argv[1]).stream()]) == 2 * len(NAMES["model"])
print([m for m in ("torch", "pandas") if m in sys.modules])
for section, kind in SECTIONS:  # an unknown name is refused, listing the built-ins (and installed plug-ins')
    try:
        parse_trial(with_name(section, "nope"))
        raise SystemExit(f"{section}.name 'nope' validated")
    except ConfigError as err:
        listed = str(err).split("expected one of ")[1]
        assert f"unknown {kind} 'nope'; expected one of" in str(err) and all(repr(n) in listed for n in NAMES[kind]), err
"""


def test_validating_configs_and_sweeps_loads_no_torch(tmp_path):
    """Config validation checks names against harness/registry.py, not the torch modules' builder tables."""
    r = subprocess.run([sys.executable, "-c", VALIDATE, str(tmp_path / "s.yaml")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:] or r.stdout


CLI = """
import sys
from heurbench.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(code, [m for m in ("torch", "pandas", "ray", "matplotlib") if m in sys.modules])
"""
REPO = HARNESS.parent


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["trian", "x.yaml"], 2),  # a mistyped command
    (["sweep", "plan", str(REPO / "sweeps/reduced/s3_reduced.yaml"), "--all"], 0),
    (["train", "{bad}"], 2),  # a config error
    (["sweep", "plan", "{bad}"], 2),
])
def test_help_plan_and_config_errors_load_no_torch(tmp_path, argv, code):
    """The cheap commands answer without torch, pandas, Ray or matplotlib in sys.modules (not a clock)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel: {name: vgg11}\ndata: {name: digits}\noptim: {name: sgd, lr: fast}\n"
                   "budget: {iterations: 2}\n")
    r = subprocess.run([sys.executable, "-c", CLI, *[a.format(bad=bad) for a in argv]], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.stdout.splitlines()[-1] == f"{code} []", r.stderr[-2000:] or r.stdout
    if code == 2:
        assert r.stderr.count("\n") == 1 or "usage:" in r.stderr, r.stderr
