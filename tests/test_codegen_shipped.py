"""The shipped code model of chapter 10 (tools/train_codegen.py): frozen, intact, and still as good as its record."""

import pytest
import torch

from tools.train_codegen import CHECK_N, CHECK_SEED, stored_checks
from vlmlib import codegen as C


def test_the_shipped_code_model_still_writes_what_it_recorded():
    torch.set_num_threads(1)
    model, tok, record = C.load_shipped()
    assert not any(p.requires_grad for p in model.parameters())
    assert record["config"] == C.CodeGenConfig().to_dict() and record["recipe"] == C.CodeGenRecipe().to_dict()
    assert tok.to_dict() == C.code_tokenizer().to_dict()
    # the stored checks: the same descriptions give the same programs, and those programs run
    assert [list(c) for c in stored_checks(model, tok)] == record["checks"]
    # a held-out sample scored again by execution, and the chapter's bar
    now = C.evaluate(model, tok, n=CHECK_N, splits=("holdout",), seed=CHECK_SEED)["holdout"]
    assert now["all"] == pytest.approx(record["metrics"]["check"]["all"], abs=0.05)
    assert now["all"] >= 0.70
    m = record["metrics"]["pass1"]
    assert m["test"]["all"] >= 0.90 and m["holdout"]["all"] >= 0.70          # the bars, as measured at n = 300


def test_a_damaged_checkpoint_is_refused(tmp_path):
    folder = C.weights_folder()
    for p in folder.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        C.load_shipped(tmp_path)
    with pytest.raises(FileNotFoundError, match="tools.train_codegen"):
        C.load_shipped(tmp_path / "missing")
