"""analysis.swa: the average of checkpoints, BN statistics recomputed for the averaged weights."""
import pytest
import torch
from torch import nn

from analysis.evaluation import Batches, evaluate
from analysis.swa import average_states, swa, swa_rows


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_average_of_states_and_bn_update():
    states = [net(s).state_dict() for s in range(3)]
    avg = average_states(states)
    torch.testing.assert_close(avg["0.weight"], sum(s["0.weight"] for s in states) / 3)
    assert avg["1.num_batches_tracked"].dtype == torch.long
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(5))
    model = swa(net(9), states, Batches(x, torch.zeros(100, dtype=torch.long), 30))
    torch.testing.assert_close(model[0].weight, avg["0.weight"])
    with torch.no_grad():
        torch.testing.assert_close(model[1].running_mean, model[0](x).mean(0), rtol=1e-5, atol=1e-6)


def test_mismatched_or_empty_states_raise():
    with pytest.raises(ValueError, match="at least one"):
        average_states([])
    with pytest.raises(ValueError, match="different tensors"):
        average_states([net(0).state_dict(), nn.Linear(3, 4).state_dict()])


def test_swa_rows_evaluate_the_average_per_split():
    states = [net(s).state_dict() for s in range(2)]
    g = torch.Generator().manual_seed(5)
    train = Batches(torch.randn(60, 3, generator=g), torch.randint(0, 2, (60,), generator=g), 30)
    test = Batches(torch.randn(40, 3, generator=g), torch.randint(0, 2, (40,), generator=g), 30)
    rows, model = swa_rows(net(9), states, {"train": train, "test": test}, train)
    direct = swa(net(7), states, train)
    assert rows.split.tolist() == ["train", "test"]
    assert rows.to_dict("records")[1] == {"split": "test", **evaluate(direct, test)}
    torch.testing.assert_close(model[0].weight, direct[0].weight)
