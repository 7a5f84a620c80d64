"""harness.pack: several trials trained as one stack of models. References: torch.optim.SGD per member,
and the same trials run one at a time by run_trial (same files, same numbers up to float summation order)."""
import json

import pandas as pd
import pytest
import torch
import yaml

from harness import data as data_mod
from harness.config import parse_trial
from harness.errors import ConfigError
from harness.metrics import FIELDS
from harness.pack import check_packable, jobs, packs, probe
from harness.stacked_engine import StackedSGD
from harness.grid import set_dotted
from harness.train import run_pack, run_trial

KEY = ["trial_id", "kind", "split", "iteration"]
COLS = ["loss", "accuracy", "grad_norm", "weight_norm", "lr"]


def members(trial_dict, *variants):
    out = []
    for v in variants:
        d = json.loads(json.dumps(trial_dict))
        for k, val in v.items():
            set_dotted(d, k, val, "test")
        out.append(parse_trial(d))
    return out


def rows(path):
    return pd.read_parquet(path / "metrics").sort_values(KEY).reset_index(drop=True)


def test_stacked_sgd_matches_torch_sgd_per_member_and_round_trips_its_state():
    g = torch.Generator().manual_seed(0)
    hp = [dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False), dict(lr=0.03, momentum=0.0, weight_decay=0.0,
          nesterov=False), dict(lr=0.5, momentum=0.5, weight_decay=1e-2, nesterov=True)]
    cfgs = [parse_trial({"name": "t", "model": {"name": "student_cnn"}, "data": {"name": "digits"},
                         "optim": {"name": "sgd", **h}, "budget": {"iterations": 1}}) for h in hp]
    w0 = {"a": torch.randn(3, 4, 5, generator=g), "b": torch.randn(3, 7, generator=g)}
    stacked = {k: v.clone().requires_grad_() for k, v in w0.items()}
    opt = StackedSGD(stacked, cfgs)
    refs = [{k: v[i].clone().requires_grad_() for k, v in w0.items()} for i in range(3)]
    ref_opts = [torch.optim.SGD(list(r.values()), **h) for r, h in zip(refs, hp)]
    for _ in range(4):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in w0.items()}
        for k, p in stacked.items():
            p.grad = grads[k].clone()
        opt.step(torch.tensor([h["lr"] for h in hp]))
        for i, (r, o) in enumerate(zip(refs, ref_opts)):
            for k, p in r.items():
                p.grad = grads[k][i].clone()
            o.step()
    for i, r in enumerate(refs):
        for k in w0:
            torch.testing.assert_close(stacked[k][i], r[k], rtol=1e-6, atol=1e-7)
    state = opt.state_dict(0)
    ref_state = ref_opts[0].state_dict()
    for j in ref_state["state"]:
        torch.testing.assert_close(state["state"][j]["momentum_buffer"], ref_state["state"][j]["momentum_buffer"])
    fresh = StackedSGD({k: v.detach().clone().requires_grad_() for k, v in stacked.items()}, cfgs)
    fresh.load_state_dict(0, state)
    torch.testing.assert_close(fresh.buf["a"][0], opt.buf["a"][0])


def test_packs_group_trials_that_differ_only_in_free_keys(trial_dict):
    cfgs = members(trial_dict, {"optim.lr": 0.01}, {"optim.lr": 0.02, "seed": 1}, {"model.name": "vgg11"},
                   {"optim.lr": 0.03, "warmup.length": 4})
    assert packs(cfgs, 2) == [[0, 1], [3], [2]]
    assert packs(cfgs, 8) == [[0, 1, 3], [2]]


def test_jobs_are_single_points_at_size_one_else_packs(trial_dict):
    from harness.grid import Point

    cfgs = members(trial_dict, {"optim.lr": 0.01}, {"model.name": "vgg11"}, {"optim.lr": 0.02, "seed": 1})
    points = [Point(i, {}, c, {}) for i, c in enumerate(cfgs)]
    assert [[p.index for p in job] for job in jobs(points, 1)] == [[0], [1], [2]]  # in sweep order
    assert [[p.index for p in job] for job in jobs(points, 2)] == [[0, 2], [1]]  # packs(): by shared settings


@pytest.mark.parametrize("variant, message", [
    ({"model.width": 0.5}, r"^model.width: 0.25 vs 0.5: trials in one pack must share it"),
    ({"optim.name": "adam"}, r"^optim.name = 'adam': packed trials train with sgd only"),
    ({"warmup.eta_init": "catapult", "warmup.length": 4}, "numeric eta_init"),
])
def test_unpackable_trials_give_one_line_naming_the_key(trial_dict, variant, message):
    with pytest.raises(ConfigError, match=message):
        check_packable(members(trial_dict, {}, variant))


def test_sweep_with_pack_rejects_unpackable_points_at_load(trial_dict, tmp_path):
    from harness.grid import load_sweep

    trial_dict["optim"] = {"name": "adam", "lr": 1e-3}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": trial_dict, "grid": {"optim.lr": [1e-3, 1e-2]},
                                    "resources": {"pack": 2}}))
    with pytest.raises(ConfigError, match=r"s.yaml: resources.pack = 2: optim.name = 'adam'"):
        load_sweep(path)


@pytest.mark.parametrize("augment", [True, False])
def test_member_batches_are_each_members_own_batch(trial_dict, augment):
    from harness.stacked_engine import member_batches

    ds = data_mod.load(trial_dict["data"])
    plans = [data_mod.plan_epoch(ds, seed, 1, 8, 50, augment) for seed in (0, 1, 5)]
    x, y = member_batches(ds, plans, 3)
    assert x.shape == (3, 50, 3, 32, 32) and y.shape == (3, 50)
    for i, p in enumerate(plans):
        xi, yi = data_mod.train_batch(ds, p, 3)
        assert torch.equal(x[i], xi) and torch.equal(y[i], yi)


@pytest.fixture
def trial_dict(trial_dict):
    """conftest's tiny trial at batch 10: members are stacked the same way at any batch, at a fifth of the cost."""
    trial_dict["data"]["batch_size"] = 10
    return trial_dict


@pytest.fixture
def two(trial_dict):
    """Two members with their own lr, seed and weight decay, the FC stack frozen (both) for 4 of 16 iterations."""
    trial_dict["data"]["augment"] = True
    trial_dict["checkpoints"] = {"iterations": [0, 4]}
    trial_dict["freeze"] = {"groups": ["fc_stack"], "length": 4, "unit": "iteration"}
    return members(trial_dict, {"optim.lr": 0.01}, {"optim.lr": 0.03, "seed": 1, "optim.weight_decay": 5e-4})


def test_packed_trials_write_what_single_trials_write(two, tmp_path, one_thread):
    assert run_pack(two, tmp_path / "packed") == ["done", "done"]
    assert [run_trial(c, tmp_path / "single") for c in two] == ["done", "done"]
    a, b = rows(tmp_path / "packed"), rows(tmp_path / "single")
    assert a[KEY].equals(b[KEY])
    assert list(a.columns) == list(b.columns) and a.dtypes.equals(b.dtypes)  # both engines: one schema
    assert tuple(a.columns[-len(FIELDS):]) == FIELDS
    early = (a.kind == "step") & (a.iteration <= 4)
    pd.testing.assert_frame_equal(a.loc[early, COLS], b.loc[early, COLS], rtol=1e-5)  # same init, data, steps
    pd.testing.assert_frame_equal(a[COLS], b[COLS], rtol=2e-2)  # later: float summation order compounds
    for c in two:
        ckpts = [sorted(p.name for p in (tmp_path / run / "trials" / c.trial_id() / "ckpt").iterdir())
                 for run in ("packed", "single")]
        assert ckpts[0] == ckpts[1] == ["iter=000000.pt", "iter=000004.pt", "iter=000016.pt", "last.pt"]
        s0, s4 = (torch.load(tmp_path / "packed" / "trials" / c.trial_id() / "ckpt" / f"iter=00000{i}.pt")["model"]
                  for i in (0, 4))
        s1 = torch.load(tmp_path / "single" / "trials" / c.trial_id() / "ckpt" / "iter=000000.pt")["model"]
        assert all(torch.equal(s0[k], s1[k]) for k in s1)  # each member starts from its own seed's init
        assert all(torch.equal(s0[k], s4[k]) == k.startswith("classifier") for k in s0)  # only the FC stack frozen


def test_interrupted_pack_resumes_unpacked_without_duplicates(two, tmp_path, monkeypatch, one_thread):
    real, calls = data_mod.gather, []

    def crash_at_12(*a, **kw):
        calls.append(1)
        if len(calls) > 12:  # iteration 12's batch (one gather for all members)
            raise RuntimeError("node lost")
        return real(*a, **kw)

    monkeypatch.setattr(data_mod, "gather", crash_at_12)
    with pytest.raises(RuntimeError, match="node lost"):
        run_pack(two, tmp_path / "run")
    monkeypatch.setattr(data_mod, "gather", real)
    assert [json.loads((tmp_path / "run" / "trials" / c.trial_id() / "status.json").read_text())["iteration"]
            for c in two] == [8, 8]
    assert [run_trial(c, tmp_path / "run", resume=True) for c in two] == ["done", "done"]
    run_pack(two, tmp_path / "whole")
    a, b = rows(tmp_path / "run"), rows(tmp_path / "whole")
    assert not a.duplicated(KEY).any() and a[KEY].equals(b[KEY])
    pd.testing.assert_frame_equal(a[COLS], b[COLS], rtol=2e-2)


def test_a_diverging_member_stops_alone(trial_dict, tmp_path, one_thread):
    cfgs = members(trial_dict, {"optim.lr": 0.01}, {"optim.lr": 1e4})
    assert run_pack(cfgs, tmp_path / "packed") == ["done", "diverged"]
    run_trial(cfgs[0], tmp_path / "single")
    a = rows(tmp_path / "packed").query(f"trial_id == '{cfgs[0].trial_id()}'").reset_index(drop=True)
    b = rows(tmp_path / "single")
    pd.testing.assert_frame_equal(a[COLS], b[COLS], rtol=2e-2)
    status = json.loads((tmp_path / "packed" / "trials" / cfgs[1].trial_id() / "status.json").read_text())
    assert status["state"] == "diverged" and status["diverged_at"] >= 0


def test_probe_walks_up_while_each_size_gains_ten_percent(trial_dict, one_thread):
    size, measured = probe(parse_trial(trial_dict), sizes=(1, 2, 4), iters=2)
    rates = [r["images_per_s"] for r in measured]
    assert [r["pack"] for r in measured] == [1, 2, 4][:len(measured)] and min(rates) > 0
    gained = [rates[i] >= 1.1 * rates[i - 1] for i in range(1, len(rates))]
    assert gained == [True] * (len(gained) - 1) + gained[-1:]  # every size but the last gained: else it stopped
    assert len(measured) == 3 or not gained[-1]  # stopped early only at a size that did not gain
    assert size == ([1] + [r["pack"] for r, g in zip(measured[1:], gained) if g])[-1]


@pytest.mark.slow
def test_compiled_pack_matches_the_eager_pack(trial_dict, tmp_path, one_thread):
    """perf.compile in a pack: the stacked forward + loss compiled as one graph and the optimizer step fused
    (inductor on CPU here); the same rows and weights as the eager pack, BN statistics included, up to
    float summation order."""
    trial_dict["model"] = {"name": "vgg11", "bn": True, "width": 0.125}
    trial_dict["data"]["augment"] = False  # the crops' zero padding gives max-pool ties, broken either way
    eager = members(trial_dict, {"optim.lr": 0.01}, {"optim.lr": 0.005, "seed": 1, "optim.nesterov": True})
    compiled = members(trial_dict, *[{"optim.lr": c.optim.lr, "seed": c.seed, "optim.nesterov": c.optim.nesterov,
                                      "perf.compile": "default"} for c in eager])
    assert run_pack(compiled, tmp_path / "compiled") == ["done", "done"]
    assert run_pack(eager, tmp_path / "eager") == ["done", "done"]
    a, b = rows(tmp_path / "compiled"), rows(tmp_path / "eager")
    for c, e in zip(compiled, eager):
        ra = a[a.trial_id == c.trial_id()].reset_index(drop=True)
        rb = b[b.trial_id == e.trial_id()].reset_index(drop=True)
        assert ra[KEY[1:]].equals(rb[KEY[1:]]) and len(ra) == 12
        first = (ra.kind == "step") & (ra.iteration == 0)  # same weights, same batch: only float order differs
        pd.testing.assert_frame_equal(ra.loc[first, COLS], rb.loc[first, COLS], rtol=1e-4)
        cont = [c for c in COLS if c != "accuracy"]
        pd.testing.assert_frame_equal(ra[cont], rb[cont], rtol=2e-2)
        pd.testing.assert_series_equal(ra.accuracy, rb.accuracy, rtol=0, atol=0.025)  # 5 of 200 images
        ck = [torch.load(tmp_path / run / "trials" / t.trial_id() / "ckpt" / "last.pt")
              for run, t in (("compiled", c), ("eager", e))]
        assert ck[0]["model"].keys() == ck[1]["model"].keys()
        for k, v in ck[1]["model"].items():  # BN running statistics are updated inside the compiled graph too
            torch.testing.assert_close(ck[0]["model"][k], v, rtol=2e-2, atol=2e-3)
