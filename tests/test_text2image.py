"""Chapter 6's text-to-image model: cross-attention against diffusers, the condition, training,
sampling, the splits of prompts, saving and loading, and the shipped models' scores."""

import json
import shutil

import numpy as np
import pytest
import torch

from vlmlib import diffusion as D
from vlmlib import text2image as T
from vlmlib.shapesworld import HELD_OUT, POSITION_PHRASES, Shape, relations


@pytest.fixture(scope="module")
def clip_encoder():
    """A CLIP text tower with random weights: enough to test the plumbing without training."""
    from vlmlib.clip import CLIPConfig

    torch.manual_seed(0)
    return T.FrozenTextEncoder("clip", T.CLIPTextTower(CLIPConfig()))


@pytest.fixture(scope="module")
def tiny(clip_encoder):
    config = T.T2IConfig(encoder="clip", text_dim=clip_encoder.dim, pooled_dim=clip_encoder.pooled_dim,
                         channels=(8, 16, 16), image_size=16, T=50)
    model, history, _ = T.train_text2image(config, T.T2IRecipe(steps=2, batch_size=4, n_train=40), clip_encoder)
    return model, history


def test_cross_attention_equals_the_unets_own_attention_with_padding_masked(tiny, clip_encoder):
    model, _ = tiny
    unet = model.unet
    attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    cond = clip_encoder.encode(["a red circle", "a red circle to the left of a blue square"])
    context = unet.encoder_hid_proj(cond.states)
    x = torch.randn(2, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = attn(x, encoder_hidden_states=context, attention_mask=((1 - cond.mask.float()) * -10000.0)[:, None])
        ours = T.cross_attention(x, context, attn.to_q.weight, attn.to_k.weight, attn.to_v.weight,
                                 attn.to_out[0].weight, attn.to_out[0].bias, heads=attn.heads, mask=cond.mask)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not cond.mask[0].all() and cond.mask[1].sum() > cond.mask[0].sum()      # padding was there to mask
    with pytest.raises(ValueError, match="heads"):
        T.cross_attention(x, context, attn.to_q.weight, attn.to_k.weight, attn.to_v.weight, attn.to_out[0].weight,
                          heads=3)


def test_the_frozen_encoder_never_trains_and_reads_padding_as_padding(clip_encoder):
    cond = clip_encoder.encode(["", "a red shape"])
    assert cond.states.shape == (2, T.MAX_PROMPT_TOKENS, clip_encoder.dim)
    assert cond.mask[0].sum() == 2 and cond.mask[1].sum() == 5              # [BOS] [EOS], and 3 words more
    assert torch.allclose(cond.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)   # CLIP's unit embedding
    assert not any(p.requires_grad for p in clip_encoder.parameters())
    clip_encoder.train()
    assert not clip_encoder.training
    with pytest.raises(ValueError, match="vocabulary"):
        clip_encoder.encode(["a red elephant"])


def test_training_drops_the_prompt_and_learns(tiny):
    model, history = tiny
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    assert not model.training


def test_the_pooled_vector_is_standardised_by_the_training_captions_statistics(tiny, clip_encoder):
    model, _ = tiny
    recipe = T.T2IRecipe(steps=2, batch_size=4, n_train=40)
    _, _, cond = T.training_set(recipe, clip_encoder, model.config.image_size)
    assert torch.allclose(model.pooled_mean, cond.pooled.mean(0), atol=1e-6)
    z = model.pooled_input(cond.pooled)
    assert torch.allclose(z.mean(0), torch.zeros_like(z[0]), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones_like(z[0]), atol=1e-3)
    raw = T.TextToImage(T.T2IConfig(**{**model.config.to_dict(), "standardize_pooled": False}))
    assert torch.equal(raw.pooled_input(cond.pooled), cond.pooled)
    with pytest.raises(TypeError, match="standardize_pooled"):
        T.T2IConfig(standardize_pooled="yes")
    with pytest.raises(ValueError, match="attention_levels"):
        T.T2IConfig(attention_levels=5)


def test_training_can_continue_from_a_model(tiny, clip_encoder):
    model, _ = tiny
    recipe = T.T2IRecipe(steps=1, batch_size=4, n_train=40, lr=1e-12)
    again, _, _ = T.train_text2image(model.config, recipe, clip_encoder, init=model)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k               # a step of 1e-12 leaves it where it was
    other = T.T2IConfig(**{**model.config.to_dict(), "channels": (8, 16, 8)})
    with pytest.raises(ValueError, match="same config"):
        T.train_text2image(other, recipe, clip_encoder, init=model)


def test_sampling_is_reproducible_and_checks_its_arguments(tiny, clip_encoder):
    model, _ = tiny
    kw = dict(steps=3, show_progress=False)
    a = T.generate(model, clip_encoder, ["a red circle", "a blue square above a red cross"], 3.0,
                   generator=torch.Generator().manual_seed(0), **kw)
    b = T.generate(model, clip_encoder, ["a red circle", "a blue square above a red cross"], 3.0,
                   generator=torch.Generator().manual_seed(0), **kw)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    dyn = T.generate(model, clip_encoder, ["a red circle"], 7.5, threshold="dynamic",
                     generator=torch.Generator().manual_seed(0), **kw)
    assert dyn.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="prompts is empty"):
        T.generate(model, clip_encoder, [], **kw)
    with pytest.raises(ValueError, match="guidance"):
        T.generate(model, clip_encoder, ["a red circle"], float("nan"), **kw)
    with pytest.raises(ValueError, match="threshold"):
        T.generate(model, clip_encoder, ["a red circle"], threshold="soft", **kw)
    lm_like = T.FrozenTextEncoder("clip", clip_encoder.model)
    lm_like.kind = "lm"
    with pytest.raises(ValueError, match="trained with"):
        T.generate(model, lm_like, ["a red circle"], **kw)
    with pytest.raises(ValueError, match="condition must be a TextCondition"):
        model(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), clip_encoder.encode(["a"]))


def test_mixed_condition_takes_tokens_from_one_prompt_and_pooled_from_another(tiny, clip_encoder):
    model, _ = tiny
    a = clip_encoder.encode(["a red circle", "a blue square"])
    b = clip_encoder.encode(["a green cross", "a yellow triangle"])
    mixed = T.mixed_condition(a, b)
    assert torch.equal(mixed.states, a.states) and torch.equal(mixed.mask, a.mask)
    assert torch.equal(mixed.pooled, b.pooled)
    null = T.mixed_condition(a, clip_encoder.encode([""]))         # one row: every row gets it
    assert torch.allclose(null.pooled, clip_encoder.encode(["", ""]).pooled, atol=1e-6)
    kw = dict(steps=3, show_progress=False)
    own = T.generate(model, clip_encoder, ["a red circle", "a blue square"], 3.0,
                     generator=torch.Generator().manual_seed(0), condition=a, **kw)
    plain = T.generate(model, clip_encoder, ["a red circle", "a blue square"], 3.0,
                       generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(own, plain)                 # the prompts' own condition: the same images
    swapped = T.generate(model, clip_encoder, ["a red circle", "a blue square"], 3.0,
                         generator=torch.Generator().manual_seed(0), condition=mixed, **kw)
    assert not torch.equal(swapped, plain)
    with pytest.raises(ValueError, match="one row or one per row"):
        T.mixed_condition(a, clip_encoder.encode(["a", "a red shape", "a cross"]))
    with pytest.raises(TypeError, match="pooled_from must be a TextCondition"):
        T.mixed_condition(a, b.pooled)
    with pytest.raises(ValueError, match="one row per prompt"):
        T.generate(model, clip_encoder, ["a red circle"], condition=a, **kw)
    with pytest.raises(ValueError, match="one row per prompt"):
        T.generate(model, clip_encoder, ["a red circle", "a cross"], condition="a red circle", **kw)
    wide = T.TextCondition(torch.zeros(2, 16, 7), a.mask, a.pooled)
    with pytest.raises(ValueError, match="model's own encoder"):
        T.generate(model, clip_encoder, ["a red circle", "a cross"], condition=wide, **kw)


def test_plan_layout_places_the_shapes_where_the_relation_holds():
    rng = np.random.default_rng(0)
    seen = set()
    for rel in ("to the left of", "to the right of", "above", "below"):
        for _ in range(40):
            a, b = T.plan_layout(f"a red circle {rel} a blue square", rng)
            assert a.prompt == f"a red circle {POSITION_PHRASES[a.cell]}" and b.prompt.startswith("a blue square ")
            sa, sb = (Shape(c, k, "small", r.cell, 0.0, 0.0, 1.0) for c, k, r in (("red", "circle", a),
                                                                                 ("blue", "square", b)))
            assert rel in relations(sa, sb)
            seen.add((a.cell, b.cell))
    assert len(seen) > 20                            # the cells are drawn, not fixed
    assert T.plan_layouts(["a red circle above a blue square"] * 3, seed=1) == \
        T.plan_layouts(["a red circle above a blue square"] * 3, seed=1)
    for bad in ("a red circle", "a red circle near a blue square", "a pink circle above a blue square",
                "a red blob above a blue square"):
        with pytest.raises(ValueError, match="plan_layout reads prompts like"):
            T.plan_layout(bad, rng)
    with pytest.raises(TypeError, match="numpy Generator"):
        T.plan_layout("a red circle above a blue square", 0)
    with pytest.raises(ValueError, match="Region.cell"):
        T.Region("a red circle", "upstairs")
    with pytest.raises(TypeError, match="TextToImagePipeline"):
        T.layout_scores(None, 2.0)


def test_region_weights_give_each_cell_to_its_region_and_share_the_rest():
    layout = [T.Region("a red circle at the top left", "top left"),
              T.Region("a blue square at the bottom right", "bottom right")]
    w = T.region_weights(layout, 12)
    assert w.shape == (2, 12, 12) and torch.allclose(w.sum(0), torch.ones(12, 12))
    assert (w[0, :4, :4] == 1).all() and (w[1, 8:, 8:] == 1).all()
    assert (w[:, 4:8, :] == 0.5).all()               # the middle band belongs to neither cell: shared
    with pytest.raises(ValueError, match="non-empty list of Regions"):
        T.region_weights([], 12)
    with pytest.raises(TypeError, match="must be a Region"):
        T.region_weights(["a red circle"], 12)


def test_generate_in_regions_fuses_each_regions_prediction_inside_its_cell(tiny, clip_encoder, monkeypatch):
    model, _ = tiny
    kw = dict(steps=3, out_size=16, show_progress=False)
    one = [[T.Region("a red circle at the top left", "top left")]]
    alone = T.generate_in_regions(model, clip_encoder, one, 3.0, generator=torch.Generator().manual_seed(0), **kw)
    plain = T.generate(model, clip_encoder, ["a red circle at the top left"], 3.0,
                       generator=torch.Generator().manual_seed(0), **kw)
    assert torch.allclose(alone, plain, atol=1e-6)   # one region: the plain model

    # A stand-in model that predicts a flat x0 per prompt shows which prompt drew which pixel.
    layout = [T.Region("a red circle at the top left", "top left"),
              T.Region("a blue square at the bottom right", "bottom right")]
    pooled = clip_encoder.encode(["", layout[0].prompt, layout[1].prompt]).pooled
    levels = torch.tensor([0.0, -0.6, 0.8])

    def flat(x_t, t, condition):
        row = (condition.pooled[:, None, :] - pooled[None]).abs().sum(-1).argmin(1)
        return levels[row].view(-1, 1, 1, 1).expand_as(x_t).clone()

    monkeypatch.setattr(model, "forward", flat)
    image = T.generate_in_regions(model, clip_encoder, [layout], 2.0, generator=torch.Generator().manual_seed(0),
                                  **kw)[0]
    # guided x0 = 0 + w·level per region; static thresholding clips the fused x0 to [−1, 1]
    assert torch.allclose(image[:, :5, :5], torch.tensor(0.0), atol=1e-3)       # −1.2 clipped: black
    assert torch.allclose(image[:, 11:, 11:], torch.tensor(1.0), atol=1e-3)     # 1.6 clipped: white
    shared = (0.5 * (-1.2) + 0.5 * 1.6 + 1) / 2                                 # the other cells: the mean
    assert torch.allclose(image[:, 5:11, :], torch.tensor(shared), atol=1e-3)
    assert torch.allclose(image[:, :5, 11:], torch.tensor(shared), atol=1e-3)
    monkeypatch.undo()
    step = T.region_predictions(model, clip_encoder, layout, torch.randn(3, 16, 16), t=25, guidance=2.0)
    assert step["regions"].shape == (2, 3, 16, 16) and step["weights"].shape == (2, 16, 16)
    assert torch.allclose(step["fused"], (step["weights"][:, None] * step["regions"]).sum(0), atol=1e-5)
    with pytest.raises(ValueError, match="one noisy image"):
        T.region_predictions(model, clip_encoder, layout, torch.randn(1, 3, 16, 16), t=25)
    with pytest.raises(ValueError, match="t must be at most"):
        T.region_predictions(model, clip_encoder, layout, torch.randn(3, 16, 16), t=50)
    with pytest.raises(ValueError, match="same number of regions"):
        T.generate_in_regions(model, clip_encoder, [layout, layout[:1]], **kw)
    with pytest.raises(ValueError, match="non-empty list of layouts"):
        T.generate_in_regions(model, clip_encoder, layout, **kw)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (two threads on a busy machine can be 10× slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_through_the_cache_trains_once_and_loads_the_same_model(clip_encoder, tmp_path, monkeypatch,
                                                                         one_thread):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    config = T.T2IConfig(encoder="clip", text_dim=clip_encoder.dim, pooled_dim=clip_encoder.pooled_dim,
                         channels=(8, 16, 16), image_size=16, T=50)
    recipe = T.T2IRecipe(steps=2, batch_size=4, n_train=40)
    state = torch.random.get_rng_state()
    first, art = T.build_text2image(config, recipe, clip_encoder, verbose=False)
    assert torch.equal(torch.random.get_rng_state(), state)          # trained: the global random state is kept
    again, art_again = T.build_text2image(config, recipe, clip_encoder, verbose=False)
    assert torch.equal(torch.random.get_rng_state(), state)          # loaded: likewise
    assert not art.from_cache and art_again.from_cache
    direct, history, _ = T.train_text2image(config, recipe, clip_encoder)
    for (k, a), b, c in zip(direct.state_dict().items(), first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), k             # bit for bit, trained or loaded
    assert art_again.history["loss"] == history["loss"] and art_again.metrics["steps"] == 2
    assert art_again.metrics["train_seconds"] == art.metrics["train_seconds"] > 0
    _, other = T.build_text2image(config, T.T2IRecipe(steps=2, batch_size=4, n_train=40, seed=1), clip_encoder,
                                  verbose=False)
    assert not other.from_cache                                       # another recipe: trained again
    with pytest.raises(TypeError, match="T2IConfig and a T2IRecipe"):
        T.build_text2image(config, recipe.to_dict(), clip_encoder)
    with pytest.raises(ValueError, match="kind 'lm'"):
        T.build_text2image(T.T2IConfig(encoder="lm"), recipe, clip_encoder)


def test_sampling_through_the_cache_draws_once_and_loads_the_same_images(tiny, clip_encoder, tmp_path, monkeypatch,
                                                                          one_thread):
    import copy

    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    model, _ = tiny
    prompts = ["a red circle", "a blue square above a red cross"]
    kw = dict(steps=3, show_progress=False, verbose=False)
    first = T.generate_cached(model, clip_encoder, prompts, 3.0, seed=1, **kw)
    again = T.generate_cached(model, clip_encoder, prompts, 3.0, seed=1, **kw)
    assert not first["from_cache"] and again["from_cache"] and again["seconds"] == first["seconds"]
    direct = T.generate(model, clip_encoder, prompts, 3.0, 3, generator=torch.Generator().manual_seed(1),
                        show_progress=False)
    assert torch.equal(first["images"], direct) and torch.equal(again["images"], direct)
    pipe = T.TextToImagePipeline(model, clip_encoder)
    assert torch.equal(pipe(prompts, guidance_scale=3, num_inference_steps=3, seed=1, cache=True), direct)
    for change in (dict(seed=2), dict(prompts=prompts[::-1]), dict(guidance=2.0), dict(threshold="dynamic")):
        args = {"prompts": prompts, "guidance": 3.0, "seed": 1, **kw, **change}
        assert not T.generate_cached(model, clip_encoder, **args)["from_cache"], change
    other_model, other_encoder = copy.deepcopy(model), copy.deepcopy(clip_encoder)
    with torch.no_grad():
        next(other_model.parameters()).add_(0.01)
        next(other_encoder.parameters()).add_(0.01)
    assert not T.generate_cached(other_model, clip_encoder, prompts, 3.0, seed=1, **kw)["from_cache"]
    assert not T.generate_cached(model, other_encoder, prompts, 3.0, seed=1, **kw)["from_cache"]
    with pytest.raises(ValueError, match="needs a seed"):
        pipe(prompts, cache=True)
    with pytest.raises(ValueError, match="a seed or a generator"):
        pipe(prompts, seed=0, generator=torch.Generator(), cache=True)
    with pytest.raises(ValueError, match="seed must be at least 0"):
        T.generate_cached(model, clip_encoder, prompts, seed=-1, **kw)
    with pytest.raises(ValueError, match="steps must be at most 50"):
        T.generate_cached(model, clip_encoder, prompts, steps=51, verbose=False)
    with pytest.raises(ValueError, match="prompts is empty"):
        T.generate_cached(model, clip_encoder, [], **kw)


def test_prompt_sets_hold_out_what_they_say():
    held = set(HELD_OUT)
    pairs = {frozenset(p) for p in T.HELD_OUT_COLOUR_PAIRS}
    _, seen = T.test_prompts(60, "one", "test")
    _, heldout = T.test_prompts(60, "one", "holdout")
    assert all((s["colour"], s["kind"]) not in held for s in seen)
    assert all((s["colour"], s["kind"]) in held for s in heldout)
    prompts, two = T.test_prompts(60, "two", "test", "held-out")
    for text, spec in zip(prompts, two):
        colours = {c for c, _ in spec["shapes"]}
        assert any(p <= colours for p in pairs) and spec["relation"] in text
    _, shapes = T.scenes(60, "two", "test", pairing="seen")
    assert not any(T.pairing_held_out(s) for s in shapes)
    for sc in shapes:
        assert relations(*sc)


def test_the_training_set_never_shows_a_held_out_pair_or_pairing():
    recipe = T.T2IRecipe(n_train=400)
    _, shapes = T.scenes(160, "two", "train", recipe.seed + 1)
    assert not any(T.pairing_held_out(s) for s in shapes)
    assert not any((s.colour, s.kind) in set(HELD_OUT) for sc in shapes for s in sc)
    texts = T.training_captions(shapes, np.random.default_rng(0))
    assert all(" of a " in t or " above a " in t or " below a " in t for t in texts)


def test_the_pipeline_saves_and_loads_the_diffusers_way(tiny, clip_encoder, tmp_path):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    model, _ = tiny
    pipe = T.TextToImagePipeline(model, clip_encoder)
    pipe.save_pretrained(tmp_path, metrics={"x": 1.0})
    assert isinstance(UNet2DConditionModel.from_pretrained(tmp_path / "unet", low_cpu_mem_usage=False),
                      UNet2DConditionModel)
    assert DDIMScheduler.from_pretrained(tmp_path / "scheduler").config.prediction_type == "sample"
    again = T.TextToImagePipeline.from_pretrained(tmp_path)
    a = again(["a red circle"], guidance_scale=2.0, num_inference_steps=3, seed=1)
    b = pipe(["a red circle"], guidance_scale=2.0, num_inference_steps=3, seed=1)
    assert (a - b).abs().max() < 5e-3 and (a - b).abs().mean() < 5e-4    # the UNet is stored in float16
    assert again.record["metrics"] == {"x": 1.0} and again.record["unet_parameters"] > 0
    assert torch.equal(again.unet.pooled_mean, model.pooled_mean) and torch.equal(again.unet.pooled_std, model.pooled_std)
    with pytest.raises(ValueError, match="a seed or a generator"):
        pipe("a red circle", seed=0, generator=torch.Generator())
    bad = tmp_path / "copy"
    shutil.copytree(tmp_path, bad, ignore=shutil.ignore_patterns("copy"))
    (bad / "unet" / "config.json").write_text((bad / "unet" / "config.json").read_text() + " ")
    with pytest.raises(ValueError, match="checksum"):
        T.TextToImagePipeline.from_pretrained(bad)
    with pytest.raises(FileNotFoundError):
        T.TextToImagePipeline.from_pretrained(tmp_path / "missing")


def test_saturation_and_diversity_measure_what_they_say():
    flat = torch.full((2, 3, 8, 8), 0.5)
    assert T.saturation(flat) == {"clipped": 0.0, "saturation": 0.0}
    assert T.saturation(torch.ones(1, 3, 4, 4))["clipped"] == 1.0
    a = [{"colour": "red", "kind": "circle", "size": "small", "position": "left"}]
    b = [{"colour": "red", "kind": "square", "size": "small", "position": "left"}]
    assert T.diversity([a, a, a, a], [True] * 4, [0] * 4) == 0.0
    assert T.diversity([a, b, a, b], [True] * 4, [0] * 4) == 0.5
    assert T.diversity([a, b, a, b], [True, False, True, False], [0] * 4) == 0.0
    assert T._open_spec("a small red shape") == {"colour": "red", "size": "small"}


@pytest.mark.parametrize("name", ["t2i-clip", "t2i-lm", "t2i-lm-small"])
def test_the_shipped_models_redraw_their_recorded_check(name):
    """Re-sample the recheck prompts of each shipped model and compare with its record."""
    folder = T.shipped_folder(name)
    if not (folder / "record.json").exists():
        pytest.skip(f"{name} is not shipped")
    torch.set_num_threads(1)
    pipe = T.TextToImagePipeline.from_pretrained(folder)
    m = pipe.record["metrics"]
    check = m["check"]
    now = T.recheck(pipe, check["guidance"], check["n"], check["seed"])
    assert abs(now["faithful"] - check["faithful"]) <= 0.05
    assert abs(now["mean_pixel"] - check["mean_pixel"]) <= 2e-3
    best = m["sweep"][f"{m['best_guidance']:g}"]
    assert m["best_guidance"] == max((float(w) for w in m["sweep"]),
                                     key=lambda w: m["sweep"][f"{w:g}"]["one_seen"]["faithful"])
    assert all(0 <= best[k]["faithful"] <= 1 for k in ("one_seen", "one_heldout", "two_seen", "two_heldout_pairing"))


def test_the_shipped_model_draws_two_shapes_right_layout_first():
    """Re-sample a few two-shape prompts of the better shipped model layout first (its record: 98.5%)."""
    folder = T.shipped_folder("t2i-clip")
    if not (folder / "record.json").exists():
        pytest.skip("t2i-clip is not shipped")
    torch.set_num_threads(1)
    pipe = T.TextToImagePipeline.from_pretrained(folder)
    prompts, specs = T.prompt_sets(24)["two_heldout_pairing"]
    images = T.generate_in_regions(pipe.unet, pipe.text_encoder, T.plan_layouts(prompts, seed=0),
                                   pipe.record["metrics"]["layout"]["guidance"],
                                   generator=torch.Generator().manual_seed(0), show_progress=False)
    direct = pipe(prompts, guidance_scale=pipe.record["metrics"]["layout"]["guidance"], seed=0)
    assert T.score_images(images, prompts, specs)["faithful"] >= 0.85
    assert T.score_images(direct, prompts, specs)["faithful"] <= 0.3


def test_the_shipped_models_meet_the_chapters_bars():
    """Issue 11's bars, on the scores stored with the shipped models (re-checked above). Two are not
    met by the models drawing directly: two-shape prompts (70% fully right for the better encoder)
    and dynamic thresholding at least as valid as static clipping at w >= 5. The chapter and
    BENCHMARK.md report both as missed; this test asks only that their scores are stored. Drawn
    layout first (a planned layout, one prompt per region), the better model meets the first."""
    folders = {name: T.shipped_folder(f"t2i-{name}") for name in T.ENCODERS}
    if not all((f / "record.json").exists() for f in folders.values()):
        pytest.skip("the text-to-image models are not shipped")
    records = {name: json.loads((f / "record.json").read_text())["metrics"] for name, f in folders.items()}

    def best(m):
        return m["sweep"][f"{m['best_guidance']:g}"]

    main = max(records, key=lambda n: best(records[n])["one_seen"]["faithful"])
    assert best(records[main])["one_seen"]["faithful"] >= 0.95
    assert best(records[main])["one_heldout"]["faithful"] >= 0.85
    for m in records.values():
        assert {"two_shapes", "pairs", "relation", "faithful"} <= set(best(m)["two_seen"])
    for m in records.values():                   # two shapes drawn layout first: the bar is met that way
        assert {"two_seen", "two_heldout_pairing"} <= set(m["layout"]) and m["layout"]["n"] >= 200
    assert records[main]["layout"]["two_seen"]["faithful"] >= 0.7
    th = records[main]["thresholding"]           # its bar (dynamic at least as valid) is not met either:
    for w in ("5", "7.5", "10"):                # the chapter measures and explains why; both are stored
        for kind in ("static", "dynamic"):
            assert 0 <= th[f"{kind}@{w}"]["valid"] <= 1 and "saturation" in th[f"{kind}@{w}"]
