"""Checkpoints that chapters load for rows too costly to train in their time budget.

Chapter 2's "CLIP, plain data" row (no grey copies, random batches) comes from
``vlmlib/weights/clip-shapes-plain.*``, written by ``python -m tools.train_clip_plain``. These tests
hold it to what the tool makes, keep it small, and re-measure the scores recorded beside it.
"""

import shutil

import pytest

from tools import train_clip_plain as tool
from vlmlib import clip as C


def test_the_plain_clip_is_chapter_2s_recipe_without_grey_copies_and_hard_negatives():
    config, recipe = tool.plain_settings("cpu")
    chapter_config, chapter_recipe = C.default_settings("cpu")
    assert config == chapter_config
    assert (recipe.p_grey, recipe.hard_negatives) == (0.0, 1)
    assert chapter_recipe.p_grey > 0 and chapter_recipe.hard_negatives > 1
    others = lambda r: {k: v for k, v in r.to_dict().items() if k not in ("p_grey", "hard_negatives")}  # noqa: E731
    assert others(recipe) == others(chapter_recipe)


def test_the_shipped_plain_clip_is_what_the_tool_makes_and_its_scores_reproduce():
    model, record = tool.load()
    weights = tool.CHECKPOINT_DIR / f"{tool.NAME}.safetensors"
    assert weights.stat().st_size < 2e6, "the checkpoint must stay small (under 2 MB)"
    config, recipe = tool.plain_settings("cpu")
    assert record["config"] == config.to_dict(), "the checkpoint is not what `python -m tools.train_clip_plain` makes"
    assert record["recipe"] == recipe.to_dict(), "the checkpoint is not what `python -m tools.train_clip_plain` makes"
    again = tool.score(model, recipe)
    assert set(again) <= set(record["metrics"])
    for key, value in again.items():
        # the same weights on the same images: equal up to float rounding across machines and versions
        assert value == pytest.approx(record["metrics"][key], abs=0.005), key
    # what the row is for: colour is read, and kind on held-out pairs falls far below kind on seen pairs
    m = record["metrics"]
    assert m["test_colour"] >= 0.9 and m["holdout_colour"] >= 0.9
    assert m["holdout_kind"] < m["test_kind"] - 0.2


def test_a_damaged_plain_clip_is_refused(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(tool.CHECKPOINT_DIR / f"{tool.NAME}{suffix}", tmp_path)
    weights = tmp_path / f"{tool.NAME}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        tool.load(tmp_path)


def test_a_shipped_clip_made_with_another_recipe_is_not_passed_off_as_this_one():
    config, recipe = tool.plain_settings("gpu")
    if recipe.to_dict() == tool.plain_settings("cpu")[1].to_dict():
        pytest.skip("the GPU budget uses the CPU recipe")
    with pytest.raises(LookupError, match="recipe"):
        C.load_shipped(tool.NAME, recipe=recipe)
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint"):
        C.load_shipped("no-such-model")
