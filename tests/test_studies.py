"""Every study YAML (sweeps/ at paper scale, sweeps/reduced/) validates, plans with its dependencies,
and names a study that `heurbench report` knows."""
from pathlib import Path

import pytest

from analysis.studies import STUDIES
from harness.grid import in_order

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


@pytest.fixture
def s7_folder(trial_dict, tmp_path):
    """A one-trial S7-style sweep folder, trained here without Ray (write_resolved is what run_sweep writes)."""
    import yaml

    from harness.grid import load_sweep, write_resolved
    from harness.train import run_trial

    trial_dict.update(schedule={"name": "cosine", "unit": "iteration", "t0": 4}, checkpoints={"iterations": [0, 8]})
    path = tmp_path / "s7_tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "s7_tiny", "base": trial_dict,
                                    "grid": {"schedule.name": ["cosine", "sgdr"]}}))
    sweep = load_sweep(path)
    out = tmp_path / "runs" / "s7_tiny"
    for p in sweep.points:
        assert run_trial(p.cfg, out) == "done"
    write_resolved(sweep, out)
    return out


def test_report_option_a_study_does_not_take_is_one_line_error(s7_folder, capsys):
    from heurbench.cli import main

    assert main(["report", str(s7_folder), "--grid", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "heurbench: error: --grid: not used by the s7 report (it takes: --images)"
    assert not (s7_folder / "report.md").exists()


def test_report_options_reach_the_study(s7_folder):
    """--images 37 reaches the S7 report's SWA: its accuracy is the averaged model's on the first 37 test images,
    and the rows it recorded under analysis/swa are those of the library function called directly."""
    import pandas as pd

    from analysis import loading, results
    from analysis.evaluation import Batches, evaluate
    from analysis.report import report
    from analysis.swa import swa_rows
    from harness.layout import RunDir

    report(s7_folder, images=37)
    swa = pd.read_parquet(s7_folder / "analysis" / "report" / "sgdr_swa.parquet")
    [derived] = (s7_folder / "derived" / "swa").glob("*.pt")
    ck = loading.load(derived)
    ds = loading.load_data(ck["data_spec"])
    first = Batches(ds.test.images[:37], ds.test.labels[:37], 500, ds.normalize)
    assert swa.averaged.tolist() == ["iter=000008, iter=000016"]
    assert swa.swa_accuracy.tolist() == [evaluate(loading.build_model(ck), first)["accuracy"]]
    cs = loading.Checkpoints.open(RunDir(s7_folder).trial(swa.trial_id.item()).iter_ckpts()[1:])
    splits = cs.splits(37, 37)
    rows, _ = swa_rows(cs.model(0), list(cs.states().values()), splits, splits["train"])
    recorded = results.read(s7_folder, "swa")
    assert recorded[rows.columns].to_dict("records") == rows.to_dict("records")
