import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from vlmlib.shapesworld import ShapesWorld, questions, vocabulary
from vlmlib.tokenizer import BOS, EOS, IMAGE, PAD, SPECIAL_TOKENS, UNK, shapes_tokenizer


@pytest.fixture(scope="module")
def tok():
    return shapes_tokenizer()


def test_is_a_transformers_tokenizer_with_fixed_ids(tok):
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == len(SPECIAL_TOKENS) + len(vocabulary())
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert tok.pad_token == PAD and tok.pad_token_id == 0 and tok.unk_token == UNK
    assert tok.convert_tokens_to_ids(IMAGE) == SPECIAL_TOKENS.index(IMAGE)


def test_every_shapesworld_sentence_round_trips_without_unknown_words(tok):
    d = ShapesWorld(max_shapes=3, seed=0).sample(100, "all", captions="varied")
    rng = np.random.default_rng(0)
    texts = d.captions + [q for shapes in d.shapes for q, _ in questions(shapes, rng)]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids
        assert len(ids) == len(text.replace("?", " ?").split()) + 2
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_punctuation_and_case_are_normalised(tok):
    ids = tok("What colour is the Circle?")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [BOS, "what", "colour", "is", "the", "circle", "?", EOS]
    assert tok.unk_token_id in tok("a dodecahedron")["input_ids"]


def test_padding_batches_and_masks(tok):
    batch = tok(["a red circle", "a large blue square on the left"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 9)
    assert batch["attention_mask"].sum(1).tolist() == [5, 9]
    assert (batch["input_ids"][0, 5:] == tok.pad_token_id).all()
    fixed = tok(["a red circle"], padding="max_length", max_length=12, return_tensors="pt")
    assert fixed["input_ids"].shape == (1, 12)


def test_saves_and_loads_like_any_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "is there a purple triangle?"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.pad_token_id == tok.pad_token_id


def test_extra_words_extend_the_vocabulary():
    tok = shapes_tokenizer(("hello",))
    assert tok.unk_token_id not in tok("hello red circle")["input_ids"]
    assert shapes_tokenizer(["hello"]) is tok                         # a list means the same words
    with pytest.raises(TypeError, match="extra_words must be a tuple"):
        shapes_tokenizer("hello")                                    # not five one-letter words
    for bad in (("two words",), ("Hello",), ("circle?",), ("",)):   # words the tokenizer could never produce
        with pytest.raises(ValueError, match="extra_words must be a tuple of non-empty lower-case words"):
            shapes_tokenizer(bad)
