"""Chapter 8's in-context few-shot captioning: styles, interleaved data, training and scoring (tiny models)."""

import pytest
import torch

from test_llava import IMAGE_ID, _same, _snapshot, _tiny_clip, _tiny_lm
from vlmlib import fewshot as F
from vlmlib.llava import IGNORE_INDEX, LlavaModel, apply_template, llava_tokenizer
from vlmlib.shapesworld import Shape

RED_CIRCLE = Shape("red", "circle", "small", "top left", 5.0, 5.0, 3.0)
BLUE_SQUARE = Shape("blue", "square", "large", "bottom", 16.0, 27.0, 5.0)


@pytest.fixture()
def model():
    torch.manual_seed(1)
    return LlavaModel(_tiny_clip(), _tiny_lm(), IMAGE_ID, projector="mlp")


def test_a_style_names_the_attributes_in_its_order_and_the_signature_reads_them_back():
    assert F.style_caption([RED_CIRCLE, BLUE_SQUARE], "kind colour") == "circle red and square blue"
    assert F.style_caption([RED_CIRCLE], "position colour") == "at the top left red"
    assert F.style_caption([BLUE_SQUARE], "kind size") == "square large"
    for style, fields in F.STYLES.items():
        text = F.style_caption([RED_CIRCLE, BLUE_SQUARE], style)
        assert F.signature(text) == fields + ("and",) + fields
    # the form, not the content: a wrong colour still follows the style, another order does not
    assert F.signature("square green") == F.signature("circle red") != F.signature("red circle")
    assert F.follows("circle red", "kind colour") and F.follows("square green and cross red", "kind colour")
    assert not F.follows("red circle", "kind colour") and not F.follows("", "kind colour")
    assert not F.follows("circle red and blue square", "kind colour")
    assert not set(F.HELD_OUT_STYLES) & set(F.TRAIN_STYLES) and set(F.HELD_OUT_STYLES) | set(F.TRAIN_STYLES) == set(F.STYLES)
    # held-out styles are new forms, not a trained form under another name
    assert {F.STYLES[s] for s in F.HELD_OUT_STYLES}.isdisjoint({F.STYLES[s] for s in F.TRAIN_STYLES})


def test_every_style_uses_only_words_the_tokenizer_knows():
    tok = llava_tokenizer()
    for style in F.STYLES:
        ids = tok(F.style_caption([RED_CIRCLE, BLUE_SQUARE], style), add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, style


def test_interleaved_sequences_share_one_style_and_learn_every_caption():
    images, convs, styles, scenes = F.interleaved_data(40, seed=3)
    assert len(images) == len(convs) == len(styles) == len(scenes) == 40
    assert set(styles) <= set(F.TRAIN_STYLES)
    assert {len(group) for group in images} == set(range(1, F.MAX_SHOTS + 2))          # 0 to 4 examples, then one
    for group, conv, style, scene in zip(images, convs, styles, scenes):
        assert group.shape[1:] == (3, 32, 32) and len(group) == len(scene)
        captions = [m["content"][0]["text"] for m in conv if m["role"] == "assistant"]
        assert captions == [F.style_caption(s, style) for s in scene]
    batch = apply_template(convs[:4], 16, plain=True)
    tok = llava_tokenizer()
    for ids, labels, conv in zip(batch["input_ids"], batch["labels"], convs[:4]):
        learnt = tok.decode(ids[labels != IGNORE_INDEX])
        n_images = sum(m["role"] == "user" for m in conv)
        assert int((ids == IMAGE_ID).sum()) == 16 * n_images
        assert learnt.count("[EOS]") == n_images                       # every caption is learnt
    held = F.interleaved_data(10, styles=["kind size"], shots=[2], seed=1)
    assert set(held[2]) == {"kind size"} and {len(g) for g in held[0]} == {3}
    with pytest.raises(ValueError, match="style"):
        F.interleaved_data(3, styles=["kind kind"])
    with pytest.raises(ValueError, match="shots"):
        F.interleaved_data(3, shots=[5])


def test_interleaved_training_moves_the_projector_and_lm_never_the_tower(model):
    images, convs, _, _ = F.interleaved_data(12, seed=2)
    tower, lm = _snapshot(model.vision_tower), _snapshot(model.language_model)
    history, _ = F.train_interleaved(model, images, convs, steps=2, batch_size=3)
    assert len(history["loss"]) == 2
    assert _same(tower, model.vision_tower) and not _same(lm, model.language_model)


def test_fewshot_scores_are_shares_for_every_style_and_shot(model, monkeypatch):
    out = F.fewshot_scores(model, ["kind size", "colour"], [0, 2], n=3)
    assert set(out) == {"kind size", "colour"} and all(set(v) == {0, 2} for v in out.values())
    assert all(0 <= r[m] <= 1 for v in out.values() for r in v.values() for m in ("follows", "exact"))
    # a model that copies the style perfectly scores 1; one that answers in another form scores 0
    seen = {}

    def perfect(m, groups, examples, **kw):
        seen["k"] = {len(e) for e in examples}
        return ["circle small"] * len(groups)

    monkeypatch.setattr(F, "fewshot_captions", perfect)
    assert F.fewshot_scores(model, ["kind size"], [2], n=4)["kind size"][2]["follows"] == 1.0
    assert seen["k"] == {2}
    monkeypatch.setattr(F, "fewshot_captions", lambda m, g, e, **kw: ["small circle"] * len(g))
    assert F.fewshot_scores(model, ["kind size"], [2], n=4)["kind size"][2]["follows"] == 0.0


def test_fewshot_captions_check_their_groups(model):
    with pytest.raises(ValueError, match="example"):
        F.fewshot_captions(model, [torch.rand(2, 3, 32, 32)], [["a", "b"]])
    with pytest.raises(TypeError, match="LlavaModel"):
        F.fewshot_captions("model", [torch.rand(1, 3, 32, 32)], [[]])
    said = F.fewshot_captions(model, [torch.rand(1, 3, 32, 32), torch.rand(3, 3, 32, 32)], [[], ["red", "blue"]],
                              max_new_tokens=3)
    assert len(said) == 2 and all(isinstance(s, str) for s in said)
