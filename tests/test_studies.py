"""Every study YAML (sweeps/ at paper scale, sweeps/reduced/) validates, plans with its dependencies,
and names a study that `heurbench report` knows."""
from pathlib import Path

import pytest

from analysis.report import STUDIES
from harness.sweep import in_order

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
YAMLS = sorted(SWEEPS.glob("*.yaml")) + sorted((SWEEPS / "reduced").glob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(SWEEPS)))
def test_sweep_validates_and_plans(path):
    sweeps = in_order(path)
    assert sweeps[-1].source == path.resolve()
    assert all(s.points for s in sweeps)
    assert len({p.trial_id for s in sweeps for p in s.points}) == sum(len(s.points) for s in sweeps)


@pytest.mark.parametrize("path", sorted((SWEEPS / "reduced").glob("*.yaml")), ids=lambda p: p.name)
def test_reduced_sweep_is_named_for_its_study(path):
    name = in_order(path)[-1].name
    assert name.endswith("_reduced")
    assert name.split("_")[0] in STUDIES, f"{name}: its prefix is no study in {sorted(STUDIES)}"


def test_every_study_has_a_reduced_sweep():
    prefixes = {p.name.split("_")[0] for p in (SWEEPS / "reduced").glob("*.yaml")}
    assert prefixes == {f"s{i}" for i in range(1, 8)}
