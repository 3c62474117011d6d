import numpy as np
import pytest
import torch

from vlmlib import settings as S


def test_seed_everything_makes_runs_repeatable():
    S.seed_everything(3)
    a = (torch.rand(3), np.random.rand(3))
    S.seed_everything(3)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("0", TypeError), (None, TypeError),
                                        (True, TypeError)])
def test_seed_must_be_a_non_negative_integer(bad, error):
    with pytest.raises(error, match="seed must be a non-negative integer"):
        S.seed_everything(bad)
    S.seed_everything(np.int64(3))                  # NumPy integers are integers


def test_budget_follows_the_device_unless_forced(monkeypatch):
    monkeypatch.delenv(S.BUDGET_ENV, raising=False)
    assert S.budget_for(torch.device("cpu")) == "cpu"
    assert S.budget_for(torch.device("cuda")) == "gpu"
    monkeypatch.setenv(S.BUDGET_ENV, "GPU")
    assert S.budget_for(torch.device("cpu")) == "gpu"
    monkeypatch.setenv(S.BUDGET_ENV, "huge")
    with pytest.raises(ValueError, match="VLMLIB_BUDGET must be one of"):
        S.budget_for(torch.device("cpu"))


def test_setup_prints_once_and_picks_by_budget(monkeypatch, capsys):
    monkeypatch.delenv(S.BUDGET_ENV, raising=False)
    monkeypatch.setattr(S, "_current", None)
    first = S.setup(seed=5, device="cpu")
    out = capsys.readouterr().out
    assert "device: cpu" in out and "budget: cpu" in out and "seed: 5" in out and "torch" in out
    S.setup(seed=5, device="cpu")
    assert capsys.readouterr().out == ""            # the same settings are not printed twice
    assert first.pick(cpu=1, gpu=2) == 1
    assert S.RunSettings(0, torch.device("cpu"), "gpu").pick(cpu=1, gpu=2) == 2
    assert S.current() == first


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        S.setup(device="cuda", verbose=False)
