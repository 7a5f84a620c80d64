"""The README's main job, `heurbench quickstart`, end to end as a user runs it: offline digits data, a real
local Ray cluster (the session's, joined with --address), the S3 report over 8 seeds ending with its claims table,
printed and written to Parquet; its printed pandas one-liner must run."""
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.studies.s3_warmup import CLAIMS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_sweep_and_report_and_its_one_liner_works(tmp_path, ray_address):
    r = subprocess.run([sys.executable, "-m", "heurbench.cli", "quickstart", "--out", str(tmp_path),
                        "--address", ray_address], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "quickstart"
    assert "quickstart finished" in r.stdout and str(run / "report.md") in r.stdout
    assert {p.name for p in (run / "figures").glob("*.png")} >= {"test_accuracy.png", "cca_diagonal.png"}
    acc = pd.read_parquet(run / "analysis" / "report" / "test_accuracy.parquet")
    assert set(acc["tags.run"]) == {"sb", "lb", "lb_warmup", "lb_freeze"}
    assert acc.groupby("tags.run").seed.nunique().min() >= 8  # every run over 8 seeds
    claims = pd.read_parquet(run / "analysis" / "report" / "claims.parquet")
    assert list(claims.claim) == [c.id for c in CLAIMS] and claims.seeds.max() == 8
    assert set(claims.verdict) <= {"held", "not held", "inconclusive"}
    printed = r.stdout[r.stdout.index("S3 claims"):]
    for c in claims.itertuples():  # the table printed at the end: each claim with its verdict next to it
        assert re.search(rf"\| {c.claim} +\| {c.verdict} +\|", printed), c.claim
    assert "## Claims" in (run / "report.md").read_text()
    log = (r.stdout + r.stderr).splitlines()  # a log a person reads: progress with ETA, one CCA summary line
    assert len(log) <= 60, "\n".join(log)
    assert "ETA" in r.stderr and r.stderr.count("layer pairs underdetermined") == 1
    assert not re.search(r"vs \S+: underdetermined|Token authentication|tensorboard|wrote \d+ cca rows", r.stderr)
    assert {f"claim_{c.id}.png" for c in CLAIMS} <= {p.name for p in (run / "figures").glob("*.png")}
    one_liner = re.search(r'python3 -c "(.*)"', r.stdout).group(1)
    out = subprocess.run([sys.executable, "-c", one_liner], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "lb_freeze" in out.stdout, out.stderr
