"""The course's small language model, trained on ShapesWorld text only."""

import pytest
import torch

from vlmlib import lm
from vlmlib.shapesworld import HELD_OUT


def test_the_corpus_never_describes_a_held_out_pair():
    texts = lm.corpus(3000, seed=3)
    described = " | ".join(t.split(" . ")[0] for t in texts)        # the scenes, without the questions
    asked = " | ".join(t.split(" . ")[1] for t in texts if " . " in t)
    for colour, kind in HELD_OUT:
        assert f"{colour} {kind}" not in described
        for q in asked.split(" | "):                  # only ever named in "is there a ...? no"
            if f"{colour} {kind}" in q:
                assert q.startswith(f"is there a {colour} {kind}") and q.endswith("no")
    assert any(" to the left of " in t or " above " in t for t in texts)       # relation sentences
    assert any(" ? " in t or t.count("?") for t in texts)                       # question–answer texts


def test_config_is_checked():
    with pytest.raises(ValueError, match="heads"):
        lm.LMConfig(hidden_size=30, heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        lm.LMConfig(vocab_size=10)


def test_a_tiny_lm_trains_and_its_states_have_the_right_shape():
    config = lm.LMConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, steps=3, n_texts=64, batch_size=8)
    model, history, _ = lm.train_lm(config)
    assert len(history["loss"]) == 3
    ids = torch.tensor([[2, 6, 34, 40, 3, 0]])
    states = lm.token_states(model, ids, (ids != 0).long())
    assert states.shape == (1, 6, 32)


def test_the_shipped_lm_is_frozen_and_still_scores_what_it_recorded():
    torch.set_num_threads(1)
    model, tok, record = lm.load_lm()
    assert not any(p.requires_grad for p in model.parameters())
    now = lm.evaluate(model)
    assert abs(now["perplexity"] - record["metrics"]["perplexity"]) < 1e-3
    assert now["answer_accuracy"] == pytest.approx(record["metrics"]["answer_accuracy"])
    assert record["metrics"]["answer_accuracy"] >= 0.5         # text alone; chapter 8 tunes it further
    answers = lm.generate_text(model, ["a large red circle at the top left . how many shapes are there ?"], 1)
    assert answers[0] in ("one", "two", "three", "four", "zero")   # it answers in the language it read
