"""`heurbench sweep plan` streams: a large grid plans in memory that does not grow with its size (harness/grid.py)."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import BASE_TRIAL

CHILD = """
import json, resource, sys
import harness.models, harness.data, harness.optim, harness.schedules  # what validating any config imports (torch)
from heurbench.cli import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(["-q", "sweep", "plan", sys.argv[1]])
print(json.dumps([code, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]), file=sys.stderr)
"""


@pytest.mark.slow
def test_a_large_grid_plans_without_holding_its_points(tmp_path):
    """20,000 points (the old all-at-once expansion held ~10 KB each: 200 MB more) add under 60 MB to the peak RSS
    of a process that has imported what validation needs; the summary names the size and the distinct settings."""
    n_lr, n_mom, n_seeds = 20, 10, 100
    spec = {"name": "big", "base": BASE_TRIAL, "seeds": list(range(n_seeds)),
            "grid": {"optim.lr": [0.001 * (i + 1) for i in range(n_lr)], "data.batch_size": [10, 20],
                     "optim.momentum": [i / 20 for i in range(n_mom // 2)]}}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=300)
    code, before, after = json.loads(r.stderr.strip().splitlines()[-1])
    assert code == 0, r.stderr
    lines = r.stdout.splitlines()
    n = n_lr * 2 * (n_mom // 2) * n_seeds
    assert f"{n} trials" in lines[0]
    assert lines[12] == f"... {n - 10} more trials (--all lists every one)"
    assert lines[13].startswith("distinct: model.name = student_cnn (1);") and "data.batch_size = 10, 20 (2)" in lines[13]
    assert (after - before) / 1024 < 60, f"peak RSS grew by {(after - before) / 1024:.0f} MB planning {n} points"
