"""`heurbench sweep plan` streams: a large grid plans in bounded memory, without torch (harness/grid.py; config
validation checks names against harness/registry.py)."""
import json
import subprocess
import sys

import yaml

from conftest import BASE_TRIAL

# `heurbench ...` as the console script runs it, in a process forked first: ru_maxrss survives exec, so a child of
# pytest (which holds torch) starts at pytest's peak, while a fork starts afresh. Prints the exit code, whether torch
# (or pandas) was ever imported, and the peak RSS (KB on Linux) of the process that planned.
CHILD = """
import json, os, resource, sys
if os.fork():
    sys.exit(os.waitstatus_to_exitcode(os.wait()[1]))
from heurbench.cli import main
code = main(sys.argv[1:])
heavy = [m for m in ("torch", "pandas") if m in sys.modules]
print(json.dumps([code, heavy, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]), file=sys.stderr)
"""


def heurbench(*args) -> tuple[list[str], float]:
    """stdout lines and peak RSS (MB) of `heurbench *args` in a fresh Python; asserts it exited 0 and never
    imported torch or pandas."""
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    code, heavy, peak_kb = json.loads(r.stderr.strip().splitlines()[-1])
    assert code == 0 and heavy == [], r.stderr[-3000:]
    return r.stdout.splitlines(), peak_kb / 1024


def sweep_yaml(tmp_path, n_lr: int, n_seeds: int):
    spec = {"name": "big", "base": BASE_TRIAL, "seeds": list(range(n_seeds)),
            "grid": {"optim.lr": [0.001 * (i + 1) for i in range(n_lr)], "data.batch_size": [10, 20],
                     "optim.momentum": [0.0, 0.5, 0.9]}}
    path = tmp_path / f"big-{n_lr}x{n_seeds}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, n_lr * 2 * 3 * n_seeds


def test_a_large_grid_plans_in_bounded_memory_without_torch(tmp_path):
    """3,000 points plan in a process whose peak RSS (~35 MB) stays far below torch's own ~500 MB (no torch, no
    pandas: names are checked against harness/registry.py) and grows by under 10 MB over a 6-point grid's (holding
    the points, ~10 KB each, would add 30 MB); the summary names the size and the distinct settings. A 10^6-point
    grid peaks at 112 MB (its set of trial fingerprints; measured by hand, 170 s of CPU)."""
    small, _ = sweep_yaml(tmp_path, 1, 1)
    _, base_mb = heurbench("-q", "sweep", "plan", str(small))
    path, n = sweep_yaml(tmp_path, 20, 25)
    lines, peak_mb = heurbench("-q", "sweep", "plan", str(path))
    assert f"{n} trials" in lines[0]
    assert lines[12] == f"... {n - 10} more trials (--all lists every one)"
    assert lines[13].startswith("distinct: model.name = student_cnn (1);") and "data.batch_size = 10, 20 (2)" in lines[13]
    assert peak_mb < 100, f"peak RSS {peak_mb:.0f} MB planning {n} points"
    assert peak_mb - base_mb < 10, f"peak RSS grew by {peak_mb - base_mb:.0f} MB from 6 to {n} points"


def test_plan_all_lists_every_trial_without_torch(tmp_path):
    path, n = sweep_yaml(tmp_path, 5, 4)
    lines, _ = heurbench("-q", "sweep", "plan", str(path), "--all")
    assert f"{n} trials" in lines[0] and len(lines) == 1 + 1 + n + 1  # header line, table header, rows, distinct
    assert lines[-2].split()[0] == str(n - 1) and lines[-1].startswith("distinct: ")
