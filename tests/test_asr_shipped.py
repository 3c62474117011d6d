"""The shipped tiny Whisper of chapter 9 (tools/train_asr.py): frozen, intact, and still as good as its record."""

import pytest
import torch

from vlmlib import asr


def test_the_shipped_recogniser_still_scores_what_it_recorded():
    torch.set_num_threads(1)
    model, record = asr.load_shipped_asr()
    assert not any(p.requires_grad for p in model.parameters())
    assert record["config"] == asr.ASRConfig().to_dict() and record["recipe"] == asr.SHIPPED_RECIPE
    now = asr.evaluate(model, {"held_out_voices": asr.EVAL_SETS["held_out_voices"]})["wer_held_out_voices"]
    stored = record["metrics"]["wer_held_out_voices"]
    # eSpeak NG releases may differ by a sample here and there: a small tolerance, and the chapter's bar
    assert now == pytest.approx(stored, abs=0.01)
    assert now <= 0.10


def test_a_damaged_checkpoint_is_refused(tmp_path):
    folder = asr.weights_folder()
    for name in ("model.safetensors", "record.json", "config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        asr.load_shipped_asr(tmp_path)
    with pytest.raises(FileNotFoundError, match="tools.train_asr"):
        asr.load_shipped_asr(tmp_path / "missing")
