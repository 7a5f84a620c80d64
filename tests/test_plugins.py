"""Plug-ins (harness/registry.py, harness/heuristics.py, analysis/study.py): registration and its one-line errors,
plug-in config sections validated like the built-ins, contracts, `module:attr` references, `plugins:` next to a
YAML, provenance on resume; and the worked example (examples/lars_and_friends): LARS against a closed-form step,
the group warmup's LR table, WideResNet-16-4-LN's parameter count, and, installed as a package, `heurbench
plugins`, `sweep plan`, a real Ray Tune sweep (one 2-rank gloo DDP trial), its study's report and results.load."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness.config import load_trial, parse_trial
from harness.errors import ConfigError
from harness.registry import PluginError, register

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "lars_and_friends"
sys.path.insert(0, str(EXAMPLE))  # the example package, importable here whether or not it is installed
INSTALLED = any(ep.value == "lars_and_friends" for ep in importlib.metadata.entry_points(group="heurbench.plugins"))


def cli(*args, cwd=REPO, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "heurbench.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def write_module(folder: Path, name: str, code: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return path


# -- registration -------------------------------------------------------------------------------------------------
def test_a_second_registration_of_a_name_names_both_modules(tmp_path, monkeypatch):
    register.get("model", "vgg11")
    with pytest.raises(PluginError, match=r"^model 'vgg11' is registered twice: by harness.models and by "
                                          r"(tests\.)?test_plugins$"):
        register.model("vgg11")(lambda s: None)
    for name in ("dup_a", "dup_b"):
        write_module(tmp_path, name, """
            from harness.schedules import to_iters
            from heurbench import register

            @register.schedule("twice")
            def twice(cfg, lr, spe, total):
                return lambda it: lr
            """)
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("dup_a")
    with pytest.raises(PluginError, match=r"^schedule 'twice' is registered twice: by dup_a and by dup_b$"):
        __import__("dup_b")


def test_contracts_are_checked_at_registration_in_one_line():
    import harness.heuristics  # noqa: F401  (sets the heuristic contract, as `from heurbench import Heuristic` does)

    with pytest.raises(PluginError, match=r"heuristic 'bad': a heuristic must be a subclass of "
                                          r"harness.heuristics.Heuristic"):
        register.heuristic("bad")(type("NotAHeuristic", (), {}))
    import analysis.study  # noqa: F401

    from heurbench import Study

    class NoClaims(Study):
        def analyze(self, r):
            return None

    with pytest.raises(PluginError, match=r"study 'no_claims': claims: expected a non-empty list"):
        register.study("no_claims")(NoClaims)
    assert "no_claims" not in register.names("study")
    from analysis.claims import Claim, above

    NoClaims.claims = [Claim("x", "a/b", "", "", ("a",), above())]
    with pytest.raises(PluginError, match=r"study 'odd_id': claims: id 'a/b' is no file name"):
        register.study("odd_id")(NoClaims)


def test_a_plugin_model_that_breaks_the_model_contract_fails_at_build(tmp_path):
    from harness.models import build

    @register.model("no_groups_net")
    def no_groups(s):
        return torch.nn.Linear(3, 2)

    with pytest.raises(PluginError, match=r"model 'no_groups_net' \((tests\.)?test_plugins\): needs `layer_groups`"):
        build({"name": "no_groups_net", "num_classes": 2, "in_channels": 3})


def test_plugins_next_to_the_yaml_are_imported_and_their_sections_validated(trial_dict, tmp_path):
    write_module(tmp_path, "my_scaled_sgd", """
        import torch
        from pydantic import Field
        from heurbench import Options, register

        class ScaledOptions(Options):
            scale: float = Field(1.0, gt=0)

        @register.optimizer("scaled_sgd", options=ScaledOptions)
        def scaled_sgd(c, params):
            return torch.optim.SGD(params, lr=c.lr * c.scale)
        """)
    trial_dict.update(plugins=["my_scaled_sgd"], optim={"name": "scaled_sgd", "lr": 0.1, "scale": 0.5})
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(trial_dict))
    cfg = load_trial(path)
    assert cfg.optim.scale == 0.5 and cfg.trial_id() == parse_trial(cfg.model_dump(mode="json")).trial_id()
    trial_dict["optim"]["scael"] = 2
    path.write_text(yaml.safe_dump(trial_dict))
    with pytest.raises(ConfigError, match=r"unknown key 'optim.scael' \(did you mean 'scale'\?\)"):
        load_trial(path)


def test_a_plugin_that_fails_to_import_is_one_line_exit_2(trial_dict, tmp_path):
    write_module(tmp_path, "broken_plugin", "import torch\nraise RuntimeError('no GPU driver here')\n")
    trial_dict["plugins"] = ["broken_plugin"]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(trial_dict))
    r = cli("train", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "runs"), timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"heurbench: error: plug-in module 'broken_plugin' (plugins: in {tmp_path}) failed to import: "
        f"RuntimeError: no GPU driver here"]


def test_an_unknown_name_suggests_and_a_reference_resolves_to_the_registered_name(trial_dict):
    trial_dict["optim"]["name"] = "sgdd"
    with pytest.raises(ConfigError, match=r"unknown optimizer 'sgdd' \(did you mean 'sgd'\?\)"):
        parse_trial(trial_dict)
    trial_dict["optim"]["name"] = "harness.optim:sgd"
    assert parse_trial(trial_dict).optim.name == "sgd"
    trial_dict["optim"]["name"] = "harness.optim:GIAdam"
    with pytest.raises(ConfigError, match=r"harness.optim:GIAdam: not a registered optimizer"):
        parse_trial(trial_dict)


def test_a_heuristic_the_stacked_engine_cannot_run_is_refused_at_plan_time(trial_dict, tmp_path):
    from harness.grid import load_sweep

    write_module(tmp_path, "label_noise", """
        from heurbench import Heuristic, register

        @register.heuristic("label_noise")
        class LabelNoise(Heuristic):
            def loss(self, logits, x, y, loss):
                return loss * 1.0
        """)
    trial_dict["heuristics"] = {"label_noise": {}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": trial_dict, "plugins": ["label_noise"], "seeds": [0, 1],
                                    "resources": {"pack": 2}}))
    with pytest.raises(ConfigError, match=r"resources.pack = 2: .*heuristic 'label_noise': its loss hook runs on "
                                          r"one model"):
        load_sweep(path)


# -- a plug-in heuristic through the real loop, and provenance --------------------------------------------------
def test_a_plugin_heuristic_acts_through_the_loop_and_resume_warns_of_changed_code(trial_dict, tmp_path, caplog):
    """A heuristic of one file, with zero lines of the loop or engines changed: its loss hook scales the loss by
    0 for the first 8 iterations, so the weights do not move then (SGD without weight decay or momentum)."""
    from harness.train import run_trial

    plugin = write_module(tmp_path, "late_start", """
        from heurbench import Heuristic, Options, register

        class LateOptions(Options):
            after: int

        @register.heuristic("late_start", options=LateOptions)
        class LateStart(Heuristic):
            def __init__(self, options, ctx):
                super().__init__(options, ctx)
                self.calls = 0

            def loss(self, logits, x, y, loss):
                self.calls += 1
                return loss * (0.0 if self.calls <= self.options.after else 1.0)
        """)
    trial_dict.update(plugins=["late_start"], heuristics={"late_start": {"after": 8}},
                      optim={"name": "sgd", "lr": 0.05}, checkpoints={"iterations": [0, 8, 12]})
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(trial_dict))
    cfg = load_trial(path)
    out = tmp_path / "runs"
    assert run_trial(cfg, out) == "done"
    from harness.layout import RunDir

    trial = RunDir(out).trial(cfg.trial_id())
    ck = {i: torch.load(trial.named(i), weights_only=False)["model"] for i in (0, 8, 12)}
    assert all(torch.equal(ck[0][k], ck[8][k]) for k in ck[0])
    assert not all(torch.equal(ck[8][k], ck[12][k]) for k in ck[0])
    status = trial.read_status()
    origin = status["provenance"]["components"]["heuristic:late_start"]
    assert origin["module"] == "late_start" and len(origin["sha256"]) == 16
    assert status["provenance"]["torch"] == torch.__version__
    assert status["provenance"]["components"]["model:student_cnn"]["module"] == "harness.models"
    # the plug-in's code changes while the trial is interrupted (its status still says running), then it
    # resumes from last.pt: one warning naming the component, and the record's provenance is the new code's
    plugin.write_text(plugin.read_text() + "# edited\n")
    status["state"] = "running"
    trial.status.write_text(json.dumps(status))
    caplog.clear()
    with caplog.at_level("WARNING", logger="heurbench.train"):
        assert run_trial(cfg, out, resume=True) == "done"
    warned = [r.getMessage() for r in caplog.records if "resumes with different code" in r.getMessage()]
    assert len(warned) == 1 and "heuristic:late_start changed" in warned[0], warned
    new = trial.read_status()["provenance"]["components"]["heuristic:late_start"]["sha256"]
    assert new != origin["sha256"]


# -- the worked example ------------------------------------------------------------------------------------------
def test_lars_takes_the_closed_form_first_step():
    from lars_and_friends.lars import LARS

    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=4)
    gw, gb = rng.normal(size=(4, 3)), rng.normal(size=4)
    lr, eta, beta, mom = 0.7, 0.01, 5e-4, 0.9
    w = torch.nn.Parameter(torch.tensor(w0))
    b = torch.nn.Parameter(torch.tensor(b0))
    opt = LARS([w, b], lr=lr, momentum=mom, weight_decay=beta, trust_coefficient=eta)
    for step in range(2):
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
    # numpy, twice with the same gradient: local lr from the weight and gradient norms, momentum buffer
    ww, bb, vw, vb = w0.copy(), b0.copy(), 0.0, 0.0
    for step in range(2):
        local = eta * np.linalg.norm(ww) / (np.linalg.norm(gw) + beta * np.linalg.norm(ww) + 1e-8)
        vw = mom * vw + lr * local * (gw + beta * ww)
        vb = mom * vb + lr * (gb + beta * bb)  # 1-D: the plain step
        ww, bb = ww - vw, bb - vb
    np.testing.assert_allclose(w.detach().numpy(), ww, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.detach().numpy(), bb, rtol=1e-12, atol=1e-14)


def test_group_warmup_ramps_only_its_group_and_needs_no_change_to_the_engines(trial_dict):
    import lars_and_friends  # noqa: F401

    from harness.heuristics import Context, Heuristics
    from harness.models import build

    trial_dict.update(model={"name": "vgg11", "width": 0.125}, heuristics={"group_warmup": {"length": 4}})
    cfg = parse_trial(trial_dict)
    model = build({**cfg.model.model_dump(), "num_classes": 10, "in_channels": 3})
    hs = Heuristics(Context(cfg, model, spe=8, total=16, out=Path("."), device="cpu"))
    fc, rest = hs.schedules(lambda it: 0.2)
    assert [fc(i) for i in range(6)] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    assert [rest(i) for i in range(6)] == [0.2] * 6
    fc_names, other = hs.param_groups()
    assert fc_names and all(n.startswith("classifier.") for n in fc_names)
    assert other and not any(n.startswith("classifier.") for n in other)
    engines = "".join((REPO / "harness" / f).read_text() for f in ("train.py", "module_engine.py", "stacked_engine.py"))
    assert not any(word in engines for word in ("warmup", "freeze", "Freezer", "distill", "catapult"))


def test_wide_resnet_16_4_ln_has_the_wide_resnets_parameter_count():
    """WRN-16-4 (Zagoruyko & Komodakis): 2.75M parameters with BN; LayerNorm has BN's two affine vectors per
    channel, so the count is the same. Counted here from the architecture's widths, not from the module."""
    import lars_and_friends  # noqa: F401

    from harness.models import build

    model = build({"name": "wrn_ln", "depth": 16, "widen": 4, "num_classes": 10, "in_channels": 3})
    w = [16, 64, 128, 256]
    conv = 3 * 3 * 3 * w[0]
    norms = 0
    cin = w[0]
    for c in w[1:]:
        for j in range(2):
            conv += 9 * cin * c + 9 * c * c + (cin * c if cin != c else 0)
            norms += 2 * cin + 2 * c
            cin = c
    expected = conv + norms + 2 * cin + cin * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == expected
    assert 2.7e6 < expected < 2.8e6
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_example_sweep_plans_without_installing_the_package():
    """`plugins: [lars_and_friends]` is found next to the sweep YAML."""
    r = cli("sweep", "plan", str(EXAMPLE / "sweep.yaml"), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "32 trials" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not INSTALLED, reason="the example package is not installed (.ci/run installs it)")
def test_the_installed_example_runs_end_to_end(tmp_path, ray_address):
    """`heurbench plugins` lists the package's components; a real Ray Tune sweep of the example (its four arms
    and one WideResNet-LN trial with LARS and the group warmup over 2 gloo DDP ranks), the study's report with
    its claims table, and results.load over it."""
    import pandas as pd

    from heurbench import results

    r = cli("plugins", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    version = importlib.metadata.version("heurbench-lars-and-friends")
    for kind, name, module in (("optimizer", "lars", "lars_and_friends.lars"),
                               ("heuristic", "group_warmup", "lars_and_friends.fc_warmup"),
                               ("model", "wrn_ln", "lars_and_friends.wrn"),
                               ("study", "lars_and_friends", "lars_and_friends.study")):
        line = next(l for l in r.stdout.splitlines() if l.split()[:2] == [kind, name])
        assert f"{module}  (heurbench-lars-and-friends {version}" in line, line
    spec = yaml.safe_load((EXAMPLE / "sweep.yaml").read_text())
    spec.pop("plugins")  # the installed package's entry point brings them
    spec.update(seeds=[0, 1])
    spec["base"]["budget"] = {"epochs": 2}
    spec["base"]["schedule"] = {"name": "constant"}
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(spec))
    ddp = {"name": "example_ddp", "base": {**spec["base"], "model": {"name": "wrn_ln", "width": 0.125, "widen": 2},
                                           "optim": {"name": "lars", "lr": 2.0, "momentum": 0.9},
                                           "heuristics": {"group_warmup": {"length": 3}},
                                           "budget": {"iterations": 6}},
           "resources": {"workers_per_trial": 2, "cpus_per_trial": 2}}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(ddp))
    for sweep in (path, tmp_path / "ddp.yaml"):
        r = cli("sweep", str(sweep), "--out", str(tmp_path / "runs"), "--address", ray_address)
        assert r.returncode == 0, r.stderr[-3000:]
    [status] = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "example_ddp" / "trials").glob("*/status.json")]
    assert status["state"] == "done"
    assert status["provenance"]["components"]["optimizer:lars"]["version"] == version
    rows = results.load(tmp_path / "runs", "example_ddp")
    assert set(rows.world_size) == {2}
    r = cli("report", str(tmp_path / "runs" / "lars_and_friends"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    claims = pd.read_parquet(tmp_path / "runs" / "lars_and_friends" / "analysis" / "report" / "claims.parquet")
    from lars_and_friends.study import LarsAndFriends

    assert list(claims.claim) == [c.id for c in LarsAndFriends.claims]
    assert set(claims.verdict) <= {"held", "not held", "inconclusive"} and claims.seeds.max() == 2
    assert "## Claims" in (tmp_path / "runs" / "lars_and_friends" / "report.md").read_text()
    rows = results.load(tmp_path / "runs", "lars_and_friends")
    assert set(rows["tags.run"]) == {"lb", "lb_warmup", "lb_lars", "lb_fc_warmup"}


HALVE = """
    from heurbench import Heuristic, register

    @register.heuristic("halve_lr")
    class HalveLr(Heuristic):
        def schedule(self, base, group):
            return lambda it: base(it) / 2
    """


def plain_plugin_sweep(tmp_path, base: dict, **spec) -> Path:
    """A sweep YAML whose plug-in is a plain module beside it (on no path any process was started with)."""
    folder = tmp_path / "study"
    folder.mkdir()
    write_module(folder, "halve_lr", HALVE)
    base = {**base, "heuristics": {"halve_lr": {}}}
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": base, "plugins": ["halve_lr"], **spec}))
    return path


def check_halved(out: Path, lr: float) -> None:
    """The sweep's one trial finished, its provenance names the plug-in, and every step ran at half the LR."""
    import pandas as pd

    from harness.layout import RunDir

    [tid] = RunDir(out).trial_ids()
    status = RunDir(out).trial(tid).read_status()
    assert status["state"] == "done", status
    assert status["provenance"]["components"]["heuristic:halve_lr"]["module"] == "halve_lr"
    steps = pd.read_parquet(out / "metrics").query("kind == 'step'")
    assert set(steps.lr) == {lr / 2}


@pytest.mark.slow
def test_a_plain_module_plugin_reaches_ray_workers_and_ddp_ranks(trial_dict, tmp_path, ray_address):
    """The session's Ray cluster was started before the plug-in's folder existed: its workers find the module
    through the driver's runtime_env, and the trial's two torchrun ranks through the worker's PYTHONPATH."""
    path = plain_plugin_sweep(tmp_path, trial_dict, resources={"workers_per_trial": 2, "cpus_per_trial": 2})
    r = cli("sweep", str(path), "--out", str(tmp_path / "runs"), "--address", ray_address, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    check_halved(tmp_path / "runs" / "s", trial_dict["optim"]["lr"])
    import pandas as pd

    assert set(pd.read_parquet(tmp_path / "runs" / "s" / "metrics").world_size) == {2}


@pytest.mark.slow
def test_the_readmes_study_your_own_heuristic_works_as_written(tmp_path, ray_address):
    """The README's two files, written as it shows them into an empty folder, and its command line (joining the
    session's Ray cluster): a sweep, then a report ending with the claims table of the README's study."""
    import re

    import pandas as pd

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Study your own heuristic"):text.index("## Benchmarks")]
    assert len(section.strip().splitlines()) <= 40
    (tmp_path / "my_heuristic.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    (tmp_path / "mine.yaml").write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    command = re.search(r"`(heurbench sweep mine.yaml && heurbench report runs/mine)`", section).group(1)
    for part in command.split(" && "):
        args = part.split()[1:] + (["--address", ray_address] if part.split()[1] == "sweep" else [])
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 0, part + "\n" + r.stderr[-3000:]
    assert "## Claims" in (tmp_path / "runs" / "mine" / "report.md").read_text()
    claims = pd.read_parquet(tmp_path / "runs" / "mine" / "analysis" / "report" / "claims.parquet")
    assert list(claims.claim) == ["half_fc_lr_helps"] and claims.seeds.tolist() == [3]
    r = cli("report", "runs/mine", "--study", "my_heuristic:Mine", cwd=tmp_path)  # a study by module:Class
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("report", "runs/mine", "--study", "my_heuristic:Nope", cwd=tmp_path)
    assert r.returncode == 2 and "module 'my_heuristic' has no attribute 'Nope'" in r.stderr
