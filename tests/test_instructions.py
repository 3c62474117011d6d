"""Chapter 8's instruction data: every answer right by the ground truth, balanced yes/no, every word
known to the chat tokenizer; CHAIR on faithful and corrupted descriptions."""

import math

import numpy as np
import pytest

from vlmlib import instructions as I
from vlmlib.llava import QUESTION_WORDS, llava_tokenizer
from vlmlib.shapesworld import RELATIONS, ShapesWorld, relations


@pytest.fixture(scope="module")
def scenes():
    return ShapesWorld(max_shapes=3).sample(1500, split="train", seed=5, captions=None).shapes


@pytest.fixture(scope="module")
def items(scenes):
    rng = np.random.default_rng(0)
    return [(shapes, I.instructions(shapes, rng)) for shapes in scenes]


def test_every_type_occurs_and_every_word_is_in_the_chat_vocabulary(items):
    flat = [i for _, its in items for i in its]
    counts = I.instruction_types(flat)
    assert all(counts[t] > 50 for t in I.QUESTION_TYPES), counts
    assert set(I.EXTRA_WORDS) == set(QUESTION_WORDS)
    tok = llava_tokenizer()
    for i in flat[:3000]:
        ids = tok(f"{i.question} {i.answer}")["input_ids"]
        assert tok.unk_token_id not in ids, i


def test_yes_and_no_are_balanced(items):
    for kind in ("existence", "relation"):
        answers = [i.answer for _, its in items for i in its if i.type == kind]
        assert 0.4 < np.mean([a == "yes" for a in answers]) < 0.6


def _by_name(shapes, name):
    colour, kind = name.split()
    (s,) = [s for s in shapes if s.colour == colour and s.kind == kind]
    return s


def test_every_answer_follows_from_the_ground_truth(items):
    for shapes, its in items:
        for i in its:
            w = i.question.rstrip("?").split()
            if i.type == "colour":
                assert [s.colour for s in shapes if s.kind == w[-1]] == [i.answer]
            elif i.type == "kind":
                assert [s.kind for s in shapes if s.colour == w[-2]] == [i.answer]
            elif i.type in ("position", "size"):
                s = _by_name(shapes, " ".join(w[-2:]))
                assert i.answer == (s.position if i.type == "position" else s.size)
            elif i.type == "count":
                n = len(shapes) if w[2] == "shapes" else sum(s.colour == w[2] for s in shapes)
                assert I.NUMBER_WORDS.index(i.answer) == n
            elif i.type == "existence":
                assert (i.answer == "yes") == any(f"{s.colour} {s.kind}" == " ".join(w[-2:]) for s in shapes)
            elif i.type == "relation":
                rel = next(r for r in RELATIONS if f" {r} the " in i.question)
                a_name, b_name = i.question[len("is the "):].rstrip("?").split(f" {rel} the ")
                a, b = _by_name(shapes, a_name), _by_name(shapes, b_name)
                assert (i.answer == "yes") == (rel in relations(a, b))
            elif i.type == "closer":
                r = _by_name(shapes, " ".join(w[-2:]))
                near = _by_name(shapes, i.answer[len("the "):])
                (far,) = [s for s in shapes if s is not r and s is not near]
                assert math.hypot(near.x - r.x, near.y - r.y) < math.hypot(far.x - r.x, far.y - r.y)
            else:
                assert i.question == I.DESCRIBE
                assert sorted(I.mentioned_shapes(i.answer)) == sorted((s.colour, s.kind) for s in shapes)


def test_chair_is_zero_for_faithful_descriptions_and_catches_every_corruption(scenes):
    rng = np.random.default_rng(1)
    faithful = [I.instructions(s, rng)[-1].answer for s in scenes[:300]]
    assert I.hallucination(faithful, scenes[:300]) == {"chair_i": 0.0, "chair_s": 0.0,
                                                       "named": pytest.approx(np.mean([len(s) for s in scenes[:300]])),
                                                       "recall": 1.0}
    corrupted = [I.corrupt_description(s, rng) for s in scenes[:300]]
    h = I.hallucination(corrupted, scenes[:300])
    assert h["chair_s"] == 1.0 and 0 < h["chair_i"] <= 0.5
    assert I.mentioned_shapes("a small shape and a red circle. a blue") == [("red", "circle")]


def test_bad_input_gets_a_clear_error(scenes):
    with pytest.raises(TypeError, match="Shape"):
        I.instructions("a red circle", np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy Generator"):
        I.instructions(scenes[0], 0)
    with pytest.raises(ValueError, match="one scene per description"):
        I.hallucination(["a red circle"], [])
    with pytest.raises(TypeError, match="list of strings"):
        I.hallucination("a red circle", [scenes[0]])
