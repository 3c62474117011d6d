"""RT-2's actions as tokens with chapter 8's LLaVA (vlmlib.rt2): the action words, the widened vision
tower, constrained decoding, which parameters fine-tuning moves, and argument checks."""

import pytest
import torch

from vlmlib import gridworld as G
from vlmlib import rt2
from vlmlib.llava import llava_tokenizer
from vlmlib.llava_training import load_llava


@pytest.fixture(scope="module")
def model():
    return rt2.build_model(pretrained=True, seed=0)


def _images_and_texts(n=6, seed=3):
    todo = G.tasks(n, "train", seed)
    return G.render_many([t.start for t in todo], [t.seed for t in todo]), [t.instruction for t in todo]


def test_the_action_words_round_trip_and_old_ids_are_unchanged():
    tok, old = rt2.rt2_tokenizer(), llava_tokenizer()
    ids = rt2.action_token_ids()
    assert len(set(ids.tolist())) == len(G.ACTIONS)
    assert rt2.tokens_to_actions(ids) == list(G.ACTIONS)
    assert [tok.decode([i]) for i in ids] == list(G.ACTIONS)
    for word, i in old.get_vocab().items():                       # every old id is kept
        assert tok.convert_tokens_to_ids(word) == i
    new = tok.convert_tokens_to_ids(list(rt2.NEW_WORDS))
    assert sorted(new) == list(range(len(old), len(tok)))         # the new words follow the old ids
    assert {"go", "push", "up", "down", "stop"} <= set(rt2.NEW_WORDS) and "left" not in rt2.NEW_WORDS
    for split in G.SPLITS:                                        # every instruction is written without [UNK]
        for t in G.tasks(20, split, 1):
            assert tok.unk_token_id not in tok(t.instruction)["input_ids"]
    with pytest.raises(ValueError, match="action tokens"):
        rt2.tokens_to_actions([tok.convert_tokens_to_ids("red")])
    with pytest.raises(TypeError, match="ids"):
        rt2.tokens_to_actions(3)


def test_the_widened_tower_keeps_the_weights_and_interpolates_the_positions():
    base, _ = load_llava()
    vit = base.vision_tower
    same = rt2.widen_tower(vit, grid=4)                 # 4×4 → 4×4: nothing to interpolate
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(same(x), vit(x), atol=1e-5)
    wide = rt2.widen_tower(vit, grid=5)
    assert wide.config.image_size == 40 and wide.config.num_patches == 25
    assert torch.equal(wide.pos_embed[:, 0], vit.pos_embed[:, 0])          # the class token's position
    assert torch.equal(wide.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    assert not any(p.requires_grad for p in wide.parameters())
    images = rt2.prepare_images(torch.rand(2, 3, 50, 50))
    assert images.shape == (2, 3, 40, 40) and wide(images).shape == (2, 26, vit.config.dim)
    with pytest.raises(TypeError, match="vit"):
        rt2.widen_tower("clip")


def test_constrained_decoding_returns_only_actions_and_does_not_depend_on_padding(model):
    images, texts = _images_and_texts()
    full = rt2.action_logits(model, images, texts, full=True)
    assert full.shape == (6, len(rt2.rt2_tokenizer()))
    five = rt2.action_logits(model, images, texts)
    assert torch.equal(five, full[:, rt2.action_token_ids()])
    actions = rt2.act(model, images, texts)
    assert actions.shape == (6,) and set(actions.tolist()) <= set(range(len(G.ACTIONS)))
    alone = rt2.action_logits(model, images[:1], texts[:1])      # no padding, against left padding in a batch
    assert torch.allclose(alone[0], five[0], atol=1e-4)
    policy = rt2.policy_fn(model, batch_size=4)
    names = policy(images, texts)
    assert names == [G.ACTIONS[int(a)] for a in actions] and policy(images[0], texts[0]) == names[0]
    episode = G.run_episode(policy, G.tasks(1, "test", 0)[0], max_steps=3)
    assert episode.steps <= 3 and all(a in G.ACTIONS for a in episode.actions)


def test_a_training_step_moves_the_projector_and_the_lm_never_the_vision_tower(model):
    import copy

    m = copy.deepcopy(model)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    images, texts = _images_and_texts(8)
    data = rt2._data(images, texts, ["up", "down", "left", "right", "stop", "up", "up", "stop"], m.n_patches)
    recipe = rt2.RT2Recipe(steps=2, batch_size=8)
    history = {}
    rt2._fit(m, data, 2, recipe, torch.Generator().manual_seed(0), "test", history)
    assert len(history["loss"]) == 2 and len(history["accuracy"]) == 2
    after = m.state_dict()
    tower = [k for k in after if k.startswith("vision_tower.")]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    assert all(not p.requires_grad for p in m.vision_tower.parameters())
    assert not torch.equal(before["projector.linear_1.weight"], after["projector.linear_1.weight"])
    table = "language_model.model.embed_tokens.weight"
    up = rt2.rt2_tokenizer().convert_tokens_to_ids("up")
    assert not torch.equal(before[table][up], after[table][up])         # the new action word's row learns
    assert after[table].shape[0] == len(rt2.rt2_tokenizer())


def test_the_fresh_model_has_the_same_shapes_but_no_pretrained_weights(model):
    fresh = rt2.build_model(pretrained=False, seed=0)
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("vision_tower."))
    assert not torch.equal(a["projector.linear_1.weight"], b["projector.linear_1.weight"])
    assert not torch.equal(a["language_model.model.layers.0.mlp.up_proj.weight"],
                           b["language_model.model.layers.0.mlp.up_proj.weight"])


def test_bad_arguments_are_refused_with_clear_errors(model):
    images, texts = _images_and_texts(2)
    with pytest.raises(ValueError, match="RT2Recipe.steps"):
        rt2.RT2Recipe(steps=0)
    with pytest.raises(TypeError, match="RT2Recipe.pretrained"):
        rt2.RT2Recipe(pretrained="yes")
    with pytest.raises(ValueError, match="RT2Recipe.lr"):
        rt2.RT2Recipe(lr=-1.0)
    with pytest.raises(TypeError, match="pretrained"):
        rt2.build_model(pretrained=1)
    with pytest.raises(ValueError, match="images"):
        rt2.prepare_images(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="same length"):
        rt2.action_logits(model, images, texts[:1])
    with pytest.raises(TypeError, match="LlavaModel with the action words"):
        rt2.act(load_llava()[0], images, texts)
    with pytest.raises(ValueError, match="splits"):
        rt2.evaluate(model, 1, splits=["nowhere"])
    with pytest.raises(TypeError, match="RT2Recipe"):
        rt2.build_rt2({"steps": 3})
