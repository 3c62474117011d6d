import math

import pytest
import torch
import torch.nn as nn
from transformers import BatchEncoding, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vlmlib.clip import CLIP, CLIPConfig
from vlmlib.llava import (CHAT_TEMPLATE, IGNORE_INDEX, LlavaModel, Projector, apply_template, conversation,
                          dpo_loss, freeze_for_stage, grid_features, llava_tokenizer, sequence_logps,
                          to_transformers)

TOK = llava_tokenizer()
IMAGE_ID = TOK.convert_tokens_to_ids("<image>")


def _tiny_clip(seed=0, depth=3):
    torch.manual_seed(seed)
    clip = CLIP(CLIPConfig(vision_dim=32, vision_depth=depth, vision_heads=4, text_dim=16, text_depth=1,
                           embed_dim=16))
    with torch.no_grad():                  # off the initial values (zero biases, unit gains)
        for p in clip.image_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return clip


def _tiny_lm(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                                        bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id,
                                        pad_token_id=TOK.pad_token_id, tie_word_embeddings=True,
                                        initializer_range=0.5))     # varied greedy output


def _model(projector="mlp", layer=-2):
    torch.manual_seed(1)
    return LlavaModel(_tiny_clip(), _tiny_lm(), IMAGE_ID, projector=projector, feature_layer=layer)


def _batch(model, answers=True):
    convs = [conversation("what colour is the circle?", "red" if answers else None),
             conversation("what shape is the red one?", "square" if answers else None)]     # one word longer
    return apply_template(convs, model.n_patches, add_generation_prompt=not answers,
                          padding_side="right" if answers else "left")


@pytest.mark.parametrize("projector, layer, dtype", [("mlp", -2, torch.float64), ("linear", -2, torch.float64),
                                                     ("mlp", -1, torch.float64), ("mlp", -2, torch.float32)])
def test_logits_equal_transformers_llava_with_the_same_weights(projector, layer, dtype):
    model = _model(projector, layer).eval().to(dtype)
    hf = to_transformers(model)
    assert type(hf).__name__ == "LlavaForConditionalGeneration" and hf.dtype == dtype
    assert hf.config.vision_feature_layer == layer and hf.config.vision_feature_select_strategy == "default"
    assert hf.config.image_token_id == IMAGE_ID and hf.config.image_seq_length == model.n_patches == 16
    batch = _batch(model)
    x = torch.rand(2, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        ours = model(x, **batch)
        theirs = hf(pixel_values=x, **batch)
        feats = torch.stack(list(hf.model.get_image_features(pixel_values=x).pooler_output))
    # float64: the same equations to rounding; float32: 1e-5 of the logits' scale (rounding, summed over layers).
    atol = 1e-10 if dtype == torch.float64 else 1e-5 * theirs.logits.abs().max().item()
    assert ours.logits.dtype == dtype
    assert torch.allclose(ours.logits, theirs.logits, atol=atol, rtol=0), (ours.logits - theirs.logits).abs().max()
    assert torch.allclose(ours.loss, theirs.loss, atol=atol)
    assert torch.allclose(model.image_features(x), feats, atol=atol, rtol=0)      # the projected grid features


def test_grid_features_are_the_penultimate_block_without_cls():
    clip = _tiny_clip()
    vit = clip.image_encoder
    x = torch.rand(2, 3, 32, 32)
    z = vit.embed(x)
    for block in vit.blocks[:-1]:
        z = block(z)
    got = grid_features(clip, x)
    assert got.shape == (2, 16, 32) and not got.requires_grad
    assert torch.equal(got, z[:, 1:].detach())
    assert torch.equal(grid_features(vit, x, layer=0), vit.embed(x)[:, 1:])
    with pytest.raises(ValueError, match="layer must be at least -4"):
        grid_features(clip, x, layer=-5)


def test_clip_vision_model_differs_from_our_tower_only_by_its_pre_layernorm():
    """Why to_transformers writes the tower as a ViTModel: CLIPVisionModel normalises the embeddings."""
    clip = _tiny_clip()
    vit, c = clip.image_encoder, clip.config
    hf = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=c.patch_size, hidden_size=c.vision_dim,
                                          intermediate_size=c.mlp_ratio * c.vision_dim, num_hidden_layers=c.vision_depth,
                                          num_attention_heads=c.vision_heads, hidden_act="gelu",
                                          layer_norm_eps=vit.norm.eps)).eval()
    D = c.vision_dim
    with torch.no_grad():
        e = hf.embeddings
        e.patch_embedding.weight.copy_(vit.patch_embed.as_conv().weight)
        e.class_embedding.copy_(vit.cls_token[0, 0])
        pos = vit.pos_embed[0].clone()
        pos[1:] += vit.patch_embed.proj.bias          # CLIP's patch convolution has no bias: fold it in
        e.position_embedding.weight.copy_(pos)
        for block, layer in zip(vit.blocks, hf.encoder.layers, strict=True):
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                getattr(layer.self_attn, name).weight.copy_(block.attn.qkv.weight[i * D:(i + 1) * D])
                getattr(layer.self_attn, name).bias.copy_(block.attn.qkv.bias[i * D:(i + 1) * D])
            layer.self_attn.out_proj.load_state_dict(block.attn.out.state_dict())
            layer.layer_norm1.load_state_dict(block.ln1.state_dict())
            layer.layer_norm2.load_state_dict(block.ln2.state_dict())
            layer.mlp.fc1.load_state_dict(block.mlp.fc1.state_dict())
            layer.mlp.fc2.load_state_dict(block.mlp.fc2.state_dict())
    x = torch.rand(2, 3, 32, 32)
    ours = grid_features(clip, x)
    with torch.no_grad():
        with_pre_norm = hf(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        hf.pre_layrnorm = nn.Identity()
        without = hf(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert torch.allclose(ours, without, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, with_pre_norm, atol=1e-2)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(before, module):
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def _step(model, stage):
    names = freeze_for_stage(model, stage)
    model.train()
    # Every parameter goes to the optimiser: freezing must work through requires_grad alone.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = _batch(model)
    model(torch.rand(2, 3, 32, 32), **batch).loss.backward()
    opt.step()
    return names


def test_stage_1_trains_only_the_projector():
    model = _model()
    vision, lm, proj = _snapshot(model.vision_tower), _snapshot(model.language_model), _snapshot(model.projector)
    names = _step(model, 1)
    assert names and all(n.startswith("projector.") for n in names)
    assert set(names) == {f"projector.{n}" for n, _ in model.projector.named_parameters()}
    assert _same(vision, model.vision_tower) and _same(lm, model.language_model)        # bit for bit
    assert all(not torch.equal(proj[k], v) for k, v in model.projector.state_dict().items())


def test_stage_2_trains_projector_and_lm_but_never_the_vision_tower():
    clip, lm = _tiny_clip(), _tiny_lm()
    clip_before, lm_before = _snapshot(clip), _snapshot(lm)
    model = LlavaModel(clip, lm, IMAGE_ID)
    vision, lm_start, proj = _snapshot(model.vision_tower), _snapshot(model.language_model), _snapshot(model.projector)
    names = _step(model, 2)
    assert any(n.startswith("language_model.") for n in names) and not any(n.startswith("vision_tower") for n in names)
    assert _same(vision, model.vision_tower)
    assert all(not torch.equal(proj[k], v) for k, v in model.projector.state_dict().items())
    changed = [k for k, v in model.language_model.state_dict().items() if not torch.equal(lm_start[k], v)]
    assert len(changed) == len(lm_start)            # every LM tensor moved
    assert _same(clip_before, clip) and _same(lm_before, lm)     # the parts were copied, the originals kept
    with pytest.raises(ValueError, match=r"stage must be one of \[1, 2\]"):
        freeze_for_stage(model, 3)


def test_placeholder_count_must_match_the_visual_tokens():
    model = _model().eval()
    batch = _batch(model)
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"32 <image> placeholders, but 1 image\(s\) give 16 visual tokens"):
        model(x[:1], **batch)
    one = apply_template([conversation("what colour is the circle?", "red")], image_seq_length=4)
    with pytest.raises(ValueError, match="4 <image> placeholders.*write 16 copies of <image> per image"):
        model(x[:1], **one)
    with pytest.raises(ValueError, match="images is None"):
        model(None, **batch)
    blind = apply_template([conversation("what colour is the circle?", "red", images=0)], image_seq_length=16)
    assert model(None, **blind).logits.shape[:2] == blind["input_ids"].shape


def test_chat_template_is_llava_1_5_style_and_labels_only_the_answers():
    text = TOK.apply_chat_template(conversation("what colour is the circle?", "red"), tokenize=False)
    assert text.strip() == "[BOS]USER: <image>\nwhat colour is the circle? ASSISTANT: red[EOS]"
    prompt = TOK.apply_chat_template(conversation("what colour is the circle?"), tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("what colour is the circle? ASSISTANT:")
    enc = TOK.apply_chat_template(conversation("what colour is the circle?", "red"), image_seq_length=16)
    assert isinstance(enc, BatchEncoding) and enc["input_ids"].count(IMAGE_ID) == 16      # a dict in transformers 5
    assert TOK.chat_template == CHAT_TEMPLATE
    two_turns = conversation("what colour is the circle?", "red") + conversation("how many shapes are there?", "two", 0)
    batch = apply_template([two_turns, conversation("is there a red circle?", "yes")], image_seq_length=16)
    ids, labels = batch["input_ids"], batch["labels"]
    answer_words = [TOK.decode([int(t)]) for t in labels[0][labels[0] != IGNORE_INDEX]]
    assert answer_words == ["red", "[EOS]", "two", "[EOS]"]
    assert (ids[0] == IMAGE_ID).sum() == 16 and (batch["attention_mask"][1] == 0).sum() > 0    # right padding
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    plain = apply_template([[{"role": "user", "content": [{"type": "image"}]},
                             {"role": "assistant", "content": "a red circle on the left"}]], 16, plain=True)
    assert TOK.decode(plain["input_ids"][0]) == "[BOS] " + " ".join(["<image>"] * 16) + " a red circle on the left [EOS]"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        apply_template([conversation("what is a dog?", "no")], 16)


def test_sequence_logps_sums_the_answer_tokens_and_gives_the_lm_loss():
    model = _model().eval()
    batch = _batch(model)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32), **batch)
    logps = sequence_logps(out.logits, batch["labels"])
    n_answer = (batch["labels"] != IGNORE_INDEX).sum()
    assert torch.allclose(-logps.sum() / n_answer, out.loss, atol=1e-6)      # the LM's mean token loss
    hand = []
    for row, lab in zip(out.logits.log_softmax(-1), batch["labels"]):
        hand.append(sum(row[t - 1, lab[t]] for t in range(1, len(lab)) if lab[t] != IGNORE_INDEX))
    assert torch.allclose(logps, torch.stack(hand), atol=1e-6)


def test_dpo_loss_is_the_paper_formula_and_the_bradley_terry_loss():
    pc, pr = torch.tensor([-3.0, -5.0, -2.5], dtype=torch.float64), torch.tensor([-4.0, -4.5, -6.0], dtype=torch.float64)
    rc, rr = torch.tensor([-3.5, -5.0, -3.0], dtype=torch.float64), torch.tensor([-3.8, -4.0, -5.0], dtype=torch.float64)
    beta = 0.1
    # By hand, pair 0: β[(−3 + 3.5) − (−4 + 3.8)] = 0.1 · 0.7 = 0.07, and −log σ(0.07) = log(1 + e^−0.07).
    assert abs(dpo_loss(pc[:1], pr[:1], rc[:1], rr[:1], beta).item() - math.log1p(math.exp(-0.07))) < 1e-12
    # Bradley–Terry with the implicit reward r = β log(π/π_ref): P(chosen ≻ rejected) = e^r_c / (e^r_c + e^r_r).
    r_c, r_r = beta * (pc - rc), beta * (pr - rr)
    bt = -torch.log(torch.exp(r_c) / (torch.exp(r_c) + torch.exp(r_r))).mean()
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta), bt, atol=1e-12)
    # A policy that prefers the chosen answer more than the reference does has a loss below log 2.
    assert dpo_loss(pc, pr, pc, pr, beta).item() == pytest.approx(0.6931471805599453)
    # No gradient reaches the reference.
    ref = rc.clone().requires_grad_(True)
    policy = pc.clone().requires_grad_(True)
    dpo_loss(policy, pr, ref, rr, beta).backward()
    assert ref.grad is None and policy.grad is not None and (policy.grad < 0).all()
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(pc, pr, rc, rr, 0.0)
    with pytest.raises(ValueError, match="ref_rejected_logps has shape"):
        dpo_loss(pc, pr, rc, rr[:2], beta)


def _decode_without_cache(model, image, ids, steps, sample=False, temperature=1.0):
    """Reference decoding: the whole sequence re-run at every step, no cache."""
    eos = model.language_model.config.eos_token_id
    new = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(image, ids).logits[0, -1]
        if sample:
            token = torch.multinomial((logits / temperature).softmax(-1), 1)[0]
        else:
            token = logits.argmax()
        new.append(int(token))
        if int(token) == eos:
            break
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
    return new


def test_generate_with_the_kv_cache_equals_decoding_step_by_step():
    model = _model().eval()
    x = torch.rand(2, 3, 32, 32)
    batch = _batch(model, answers=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows = [ids[i, mask[i].bool()][None] for i in range(2)]
    assert mask[0, 0] == 0 and mask[1].all()                            # the shorter prompt is padded on the left
    out = model.generate(x, ids, mask, max_new_tokens=6)                 # a left-padded batch
    for i in range(2):
        ref = _decode_without_cache(model, x[i:i + 1], rows[i], 6)
        single = model.generate(x[i:i + 1], rows[i], max_new_tokens=6)[0].tolist()
        assert single == ref
        assert out[i, :len(ref)].tolist() == ref
    sampled = model.generate(x[:1], rows[0], max_new_tokens=6, do_sample=True, temperature=0.7, seed=3)[0].tolist()
    torch.manual_seed(3)
    assert sampled == _decode_without_cache(model, x[:1], rows[0], 6, sample=True, temperature=0.7)
    with pytest.raises(ValueError, match="pad prompts on the left"):
        model.generate(x, **{k: v for k, v in _batch(model).items() if k != "labels"})


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"projector must be one of \['linear', 'mlp'\]"):
        Projector("conv", 8, 8)
    with pytest.raises(TypeError, match="vlmlib CLIP .* or a vlmlib ViT"):
        LlavaModel("clip", _tiny_lm(), IMAGE_ID)
    with pytest.raises(TypeError, match="transformers causal language model"):
        LlavaModel(_tiny_clip(), nn.Linear(2, 2), IMAGE_ID)
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        _model()(torch.rand(1, 3, 32, 32), torch.rand(1, 20))
    with pytest.raises(TypeError, match="conversations must be a non-empty list"):
        apply_template(["what colour is the circle?"], 16)


def test_the_transformers_copy_saves_and_loads_with_the_same_logits(tmp_path):
    from transformers import LlavaForConditionalGeneration

    model = _model("linear").eval()
    hf = to_transformers(model)
    hf.save_pretrained(tmp_path)
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert again.config.projector_hidden_act == "linear"
    batch = _batch(model)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hf(pixel_values=x, **batch).logits, again(pixel_values=x, **batch).logits)


def test_merge_embeddings_and_trains_in_stage_check_their_arguments():
    from vlmlib.llava import merge_embeddings, trains_in_stage
    ids = torch.tensor([[1, IMAGE_ID, IMAGE_ID, 2]])
    embeds, features = torch.zeros(1, 4, 3), torch.ones(1, 2, 3)
    out = merge_embeddings(embeds, ids, features, IMAGE_ID)
    assert out[0, 1:3].eq(1).all() and out[0, [0, 3]].eq(0).all() and embeds.eq(0).all()
    with pytest.raises(ValueError, match="visual tokens"):
        merge_embeddings(embeds, ids, torch.ones(1, 3, 3), IMAGE_ID)
    with pytest.raises(ValueError, match="embeds must be"):
        merge_embeddings(torch.zeros(1, 5, 3), ids, features, IMAGE_ID)
    with pytest.raises(ValueError, match="features must be"):
        merge_embeddings(embeds, ids, torch.ones(2, 3), IMAGE_ID)
    assert trains_in_stage("projector.linear_1.weight", 1) and not trains_in_stage("language_model.x", 1)
    assert trains_in_stage("language_model.x", 2) and not trains_in_stage("vision_tower.x", 2)
    with pytest.raises(ValueError, match="stage"):
        trains_in_stage("projector.x", 3)
