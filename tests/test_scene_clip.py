"""Chapter 2's CLIP taught scenes (vlmlib.scene_clip): twins, captions, the pool, the probe."""

import numpy as np
import pytest
import torch

from vlmlib import scene_clip as S
from vlmlib.cache import Artifact
from vlmlib.clip import CLIP, CLIPConfig
from vlmlib.shapesworld import COLOUR_NAMES, KINDS, ShapesWorld


def _tiny_clip(seed=0):
    torch.manual_seed(seed)
    return CLIP(CLIPConfig(vision_dim=32, vision_depth=2, vision_heads=4, text_dim=16, text_depth=1, embed_dim=16))


def _scenes(n=40, seed=0):
    return ShapesWorld(max_shapes=3).sample(n, split="train", seed=seed, captions=None).shapes


def test_a_twin_changes_the_kind_of_one_shape_and_nothing_else():
    world, rng = ShapesWorld(max_shapes=3), np.random.default_rng(0)
    for scene in _scenes(200):
        other, j = S.twin(scene, world, rng)
        assert len(other) == len(scene) and 0 <= j < len(scene)
        for i, (a, b) in enumerate(zip(scene, other)):
            if i == j:
                assert a.kind != b.kind
                assert (a.colour, a.size, a.x, a.y, a.radius) == (b.colour, b.size, b.x, b.y, b.radius)
                assert not world.is_held_out(b.colour, b.kind)          # training never sees a held-out pair
            else:
                assert a == b


def test_twin_and_captions_refuse_what_is_not_a_scene():
    world, rng = ShapesWorld(max_shapes=3), np.random.default_rng(0)
    scene = _scenes(1)[0]
    for bad in (None, [], scene[0], ["a red circle"]):
        with pytest.raises(TypeError, match="scene must be"):
            S.twin(bad, world, rng)
    with pytest.raises(TypeError, match="world"):
        S.twin(scene, "world", rng)
    with pytest.raises(TypeError, match="rng"):
        S.scene_caption(scene, 0, 0)
    with pytest.raises(ValueError, match="j"):
        S.scene_caption(scene, len(scene), rng)


def test_captions_of_the_changed_shape_always_name_its_kind_and_grey_ones_no_colour():
    rng = np.random.default_rng(1)
    for scene in _scenes(100):
        for j in range(len(scene)):
            words = S.scene_caption(scene, j, rng, p_changed=1.0, p_one=0.0).split()
            assert scene[j].kind in words
            grey = S.scene_caption(scene, j, rng, colour=False).split()
            assert not set(grey) & set(COLOUR_NAMES) and set(grey) & set(KINDS)
        every = S.scene_caption(scene, 0, rng, p_changed=0.0, p_one=0.0)
        assert sorted(every.split(" and ")) == sorted(f"a {s.colour} {s.kind}" for s in scene)


def test_the_recipe_checks_its_fields():
    with pytest.raises(ValueError, match="even"):
        S.SceneRecipe(batch_size=7)
    with pytest.raises(ValueError, match="p_changed"):
        S.SceneRecipe(p_changed=0.8, p_one=0.5)
    with pytest.raises(ValueError, match="p_grey"):
        S.SceneRecipe(p_grey=1.5)
    with pytest.raises(ValueError, match="lr"):
        S.SceneRecipe(lr=0)
    with pytest.raises(TypeError):
        S.ScenePairs({"steps": 3})


def test_a_batch_holds_each_scene_beside_its_twin_differing_only_near_the_changed_shape():
    recipe = S.SceneRecipe(n_train=30, batch_size=16, p_grey=0.0)
    pool = S.ScenePairs(recipe)
    assert pool.images.shape == (30, 2, 3, 32, 32)
    for i in range(len(pool)):
        s = pool.scenes[i][pool.changed[i]]
        differ = (pool.images[i, 0] - pool.images[i, 1]).abs().amax(0) > 1e-6      # (H, W)
        ys, xs = torch.nonzero(differ, as_tuple=True)
        assert len(ys) > 0                                                        # the kinds differ
        reach = 2 * s.radius + 1                                 # a kind's shape stays near its centre
        assert ((xs.float() + 0.5 - s.x).abs() <= reach).all() and ((ys.float() + 0.5 - s.y).abs() <= reach).all()
    images, ids = pool.batch()
    assert images.shape == (16, 3, 32, 32) and ids.shape == (16, 16)
    grey = S.ScenePairs(S.SceneRecipe(n_train=10, batch_size=4, p_grey=1.0)).batch()[0]
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])


def test_fine_tuning_changes_both_encoders_and_checks_its_arguments():
    model = _tiny_clip()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history, seconds = S.finetune_on_scenes(model, S.SceneRecipe(steps=3, n_train=20, batch_size=8))
    assert len(history["loss"]) == 3 and seconds > 0 and not model.training
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("image_encoder.") for k in changed) and any(k.startswith("text_encoder.") for k in changed)
    with pytest.raises(TypeError, match="vlmlib CLIP"):
        S.finetune_on_scenes(model.image_encoder, S.SceneRecipe())
    with pytest.raises(TypeError, match="SceneRecipe"):
        S.finetune_on_scenes(model, {"steps": 3})


def test_the_probe_reads_what_the_features_hold():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    x = torch.randn(400, 8, generator=g) * 0.3
    x[torch.arange(400), y] += 2.0                      # the class is written in one feature
    predict = S.fit_probe(x, y, 4)
    assert (predict(x) == y).float().mean() > 0.95
    state = torch.random.get_rng_state()
    S.fit_probe(x, y, 4)
    assert torch.equal(state, torch.random.get_rng_state())     # the caller's random stream is untouched
    with pytest.raises(ValueError, match="class indices"):
        S.fit_probe(x, y.float(), 4)
    with pytest.raises(ValueError, match="features"):
        S.fit_probe(x[0], y, 4)


def test_shape_tokens_give_one_feature_per_shape_and_the_probe_and_twin_scores_are_shares():
    model = _tiny_clip()
    feats, shapes, crowd = S.shape_tokens(model, 20, "test", 0)
    assert feats.shape == (len(shapes), 32) and set(crowd) <= {1, 2, 3} and len(crowd) == len(shapes)
    scores = S.shape_token_probe(model, n_train=40, n_test=30)
    assert set(scores) == {f"{a}, {p}" for a in ("colour", "kind") for p in ("seen pairs", "held-out pairs")}
    assert all(0 <= v <= 1 for row in scores.values() for v in row.values())
    assert 0 <= S.twin_accuracy(model, n=10) <= 1


def test_load_scene_clip_trains_once_then_loads_with_the_base_model_in_its_key(monkeypatch, tmp_path):
    base = _tiny_clip()
    art = Artifact("clip-shapes", {"model": "tiny"}, base.state_dict())
    monkeypatch.setattr(S, "load_clip", lambda **kwargs: (base, art))
    monkeypatch.setattr(S, "shape_token_probe", lambda model: {"kind, seen pairs": {"1 shape": 0.5}})
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    recipe = S.SceneRecipe(steps=2, n_train=10, batch_size=4)
    model, first = S.load_scene_clip(device="cpu", recipe=recipe, verbose=False)
    assert not first.from_cache and first.config["base"] == {"model": "tiny"}
    assert {"twin_holdout", "base twin_holdout", "probe kind, seen pairs, 1 shape"} <= set(first.metrics)
    again, second = S.load_scene_clip(device="cpu", recipe=recipe, verbose=False)
    assert second.from_cache and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                      again.state_dict().values()))
    with pytest.raises(TypeError, match="SceneRecipe"):
        S.load_scene_clip(recipe={"steps": 2})
