"""The shipped policies of chapter 11 (tools/train_vla.py): frozen, intact, and still as good as their record."""

import pytest
import torch

from vlmlib import vla


def test_the_shipped_policy_and_baseline_still_score_what_they_recorded():
    torch.set_num_threads(1)
    model, record = vla.load_shipped("policy")
    blind, blind_record = vla.load_shipped("text_blind")
    assert not any(p.requires_grad for p in model.parameters())
    assert record["config"] == vla.SHIPPED_CONFIG.to_dict() and record["recipe"] == vla.SHIPPED_RECIPE.to_dict()
    assert blind_record["config"] == vla.VLAConfig(text_blind=True).to_dict()
    assert blind_record["recipe"] == vla.TEXT_BLIND_RECIPE.to_dict()
    splits = ("test", "holdout_pairs")
    now = vla.evaluate(model, vla.EVAL_N, splits, seed=vla.EVAL_SEED)
    for split in splits:        # the same episodes as when it was trained: the same outcome, up to a rounding flip
        assert now[split]["all"] == pytest.approx(record["metrics"][f"{split}_all"], abs=0.011)
    blind_now = vla.evaluate(blind, vla.EVAL_N, ["test"], seed=vla.EVAL_SEED)["test"]["all"]
    assert blind_now == pytest.approx(blind_record["metrics"]["test_all"], abs=0.011)
    # The words matter, and issue 15's bar on held-out colour-kind pairs (75%) is met. Its bar on "test"
    # (90%) is NOT met by this checkpoint (see record["metrics"]): pushes are the weak family.
    assert now["test"]["all"] >= blind_now + 0.2 and now["holdout_pairs"]["all"] >= blind_now + 0.2
    assert record["metrics"]["holdout_pairs_all"] >= 0.75 and now["holdout_pairs"]["all"] >= 0.75


def test_a_damaged_checkpoint_is_refused(tmp_path):
    folder = vla.weights_folder()
    for name in ("record.json", "policy.safetensors", "text_blind.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    data = bytearray((tmp_path / "policy.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "policy.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        vla.load_shipped("policy", tmp_path)
    vla.load_shipped("text_blind", tmp_path)                 # the other file is intact
    with pytest.raises(FileNotFoundError, match="tools.train_vla"):
        vla.load_shipped("policy", tmp_path / "missing")
    with pytest.raises(ValueError, match="name"):
        vla.load_shipped("blind", tmp_path)
