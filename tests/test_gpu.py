"""GPU fast path (bf16 autocast, channels_last, torch.compile) vs the plain fp32 path; skipped without CUDA."""
import pandas as pd
import pytest
import torch

from harness.config import parse_trial
from harness.train import run_trial

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def final_accuracy(trial_dict, out, perf):
    d = {**trial_dict, "perf": {"device": "cuda", **perf}}
    cfg = parse_trial(d)
    run_trial(cfg, out)
    df = pd.read_parquet(out / "metrics")
    return df[(df.kind == "eval") & (df.split == "test")].accuracy.iloc[-1]


@pytest.fixture
def vgg_run(trial_dict):
    """VGG-11-BN (width 1/2), 4 epochs of 10,000 real CIFAR-10 images: long enough for ~50% test accuracy."""
    trial_dict["model"] = {"name": "vgg11", "bn": True, "width": 0.5}
    trial_dict["data"].update(train_subset=10000, test_subset=2000, batch_size=100, eval_batch_size=1000)
    trial_dict["budget"] = {"epochs": 4}
    trial_dict["optim"] = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    trial_dict["eval"] = {"every": 1, "unit": "epoch"}
    return trial_dict


def test_fast_path_reaches_plain_accuracy(vgg_run, tmp_path):
    plain = final_accuracy(vgg_run, tmp_path / "plain", {})
    fast = final_accuracy(vgg_run, tmp_path / "fast", {"bf16": True, "channels_last": True, "compile": "default"})
    assert plain > 0.4
    assert abs(fast - plain) < 0.04, (plain, fast)


def test_packed_bf16_stack_reaches_single_fp32_accuracy(vgg_run, tmp_path):
    """Four seeds stacked in one process (bf16, channels_last) vs the first seed alone in fp32."""
    from harness.train import run_pack

    plain = final_accuracy(vgg_run, tmp_path / "plain", {})
    fast = {**vgg_run, "perf": {"device": "cuda", "bf16": True, "channels_last": True}}
    cfgs = [parse_trial({**fast, "seed": s}) for s in range(4)]
    assert run_pack(cfgs, tmp_path / "packed") == ["done"] * 4
    df = pd.read_parquet(tmp_path / "packed" / "metrics")
    final = df[(df.kind == "eval") & (df.split == "test")].sort_values("iteration").groupby("trial_id").accuracy.last()
    assert plain > 0.4
    assert abs(final.mean() - plain) < 0.04, (plain, final.tolist())


def test_a_training_steps_data_and_pack_update_never_wait_for_the_gpu(trial_dict):
    """Batches come from the epoch's plan on the device and a pack's learning rates from its per-epoch
    table: no host-to-device copy (each one drains the GPU's queue) in the hot path."""
    from harness import data as data_mod
    from harness.config import parse_trial
    from harness.models import build
    from harness.stacked_engine import Stack, member_batches

    cfg = parse_trial({**trial_dict, "perf": {"device": "cuda"}})
    ds = data_mod.load(cfg.data).to("cuda")
    cfgs = [cfg.model_copy(update={"seed": s}) for s in range(2)]
    st = Stack([build({"name": "student_cnn", "num_classes": 10}).cuda() for _ in range(2)], cfgs, ds,
               torch.device("cuda"), spe=4)
    st.plan_epoch(0)
    lr_table, alive = torch.full((4, 2, 1), 0.01, device="cuda"), torch.ones(2, dtype=torch.bool, device="cuda")
    sums = torch.zeros(2, 3, dtype=torch.float64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(4):  # the loop's per-step work (harness/train.py), host-side lr list unused by the stack
            losses, correct, count = st.forward_backward(step, step, alive)
            sums[:, 0] += losses.double() * count
            sums[:, 1] += correct
            st.step([[0.01], [0.01]], lr_table[step])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    x, _ = member_batches(ds, st.plans, 0)
    assert x.is_cuda and x.shape == (2, 50, 3, 32, 32)
