"""Chapter 2 and 3's CLIP: the losses against references, zero-shot and retrieval on hand-made
cases, clear errors on bad input, and the offline round trip of a tiny ``transformers`` CLIP."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from vlmlib import clip as C


def test_clip_loss_equals_transformers_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 64):
        logits = torch.randn(n, n, generator=g) * 5
        ours = C.clip_loss(logits)
        theirs = image_text_contrastive_loss(logits.T)     # transformers takes logits_per_text
        assert torch.allclose(ours, theirs, atol=1e-6), (n, ours, theirs)


def test_clip_loss_of_a_perfect_batch_is_near_zero_and_of_a_uniform_batch_is_log_n():
    assert C.clip_loss(torch.eye(8) * 100).item() < 1e-6
    assert math.isclose(C.clip_loss(torch.zeros(8, 8)).item(), math.log(8), rel_tol=1e-6)


def test_clip_model_loss_matches_transformers_forward_convention():
    torch.manual_seed(0)
    model = C.CLIP(C.CLIPConfig(patch_size=8, vision_dim=32, text_dim=32, embed_dim=16))
    images = torch.rand(5, 3, 32, 32)
    ids = C.tokenize(["a red circle", "a blue square on the left", "a shape", "a large cross",
                      "a green triangle at the top"])
    logits = model(images, ids)
    manual = model.encode_image(images) @ model.encode_text(ids).T * math.exp(C.LOGIT_SCALE_INIT)
    assert torch.allclose(logits, manual, atol=1e-5)
    assert torch.allclose(model.encode_image(images).norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(C.clip_loss(logits), image_text_contrastive_loss(logits.T))


def test_logit_scale_is_initialised_to_1_over_007_and_clamped_at_100():
    model = C.CLIP(C.CLIPConfig(patch_size=8))
    assert math.isclose(model.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale_()
    assert math.isclose(model.logit_scale.exp().item(), 100.0, rel_tol=1e-5)


def test_siglip_loss_matches_the_direct_formula():
    g = torch.Generator().manual_seed(1)
    for n in (1, 3, 16):
        logits, b = torch.randn(n, n, generator=g) * 3, -2.5
        direct = 0.0
        for i in range(n):
            for j in range(n):
                z = 1.0 if i == j else -1.0
                direct -= math.log(1 / (1 + math.exp(-z * (logits[i, j].item() + b))))
        assert math.isclose(C.siglip_loss(logits, b).item(), direct / n, rel_tol=1e-5)


@pytest.mark.parametrize("bad, error", [(torch.zeros(3, 4), ValueError), (torch.zeros(3), ValueError),
                                        (torch.zeros(0, 0), ValueError), (torch.zeros(2, 2, dtype=torch.long), ValueError),
                                        ("logits", TypeError)])
def test_losses_reject_bad_logits(bad, error):
    with pytest.raises(error, match="logits"):
        C.clip_loss(bad)
    with pytest.raises(error, match="logits"):
        C.siglip_loss(bad, 0.0)


def test_text_encoder_pools_at_eos_and_ignores_padding():
    torch.manual_seed(0)
    for causal in (True, False):
        model = C.CLIP(C.CLIPConfig(patch_size=8, causal=causal)).eval()
        short = C.tokenize(["a red circle"], max_length=8)
        long = C.tokenize(["a red circle"], max_length=16)
        assert torch.allclose(model.encode_text(short), model.encode_text(long), atol=1e-5)


def test_text_encoder_rejects_bad_input():
    model = C.CLIP(C.CLIPConfig(patch_size=8))
    with pytest.raises(ValueError, match="EOS"):
        model.encode_text(torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model.encode_text(torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"token ids in \[0, 63\]"):
        model.encode_text(torch.tensor([[2, 99, 3]]))
    with pytest.raises(ValueError, match="longer than max_length"):
        model.encode_text(torch.full((1, 40), 3))
    with pytest.raises(ValueError, match="vocabulary"):
        C.tokenize(["a purple elephant"])
    with pytest.raises(ValueError, match="images"):
        model.encode_image(torch.rand(2, 3, 16, 16))


def test_zero_shot_classifier_ensembles_normalised_embeddings():
    table = {"a red x": [1.0, 0.0, 0.0], "the red x": [0.0, 3.0, 0.0],
             "a blue x": [0.0, 0.0, 2.0], "the blue x": [0.0, 0.0, 1.0]}
    embed = lambda texts: torch.tensor([table[t] for t in texts])   # noqa: E731
    clf = C.zero_shot_classifier(embed, ["red", "blue"], ["a {} x", "the {} x"])
    assert torch.allclose(clf[0], torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    assert torch.allclose(clf[1], torch.tensor([0.0, 0.0, 1.0]))
    images = torch.tensor([[0.0, 0.1, 1.0], [1.0, 0.2, 0.0], [0.6, 0.8, 0.0]])
    assert C.zero_shot_predict(images, clf).tolist() == [1, 0, 0]


def test_zero_shot_classifier_rejects_bad_templates():
    embed = lambda texts: torch.ones(len(texts), 3)   # noqa: E731
    with pytest.raises(ValueError, match="exactly once"):
        C.zero_shot_classifier(embed, ["red"], ["a red x"])
    with pytest.raises(ValueError, match="non-empty"):
        C.zero_shot_classifier(embed, [], ["a {}"])
    with pytest.raises(ValueError, match="templates"):
        C.zero_shot_classifier(embed, ["red"], "a {}")
    with pytest.raises(ValueError, match="classifier"):
        C.zero_shot_predict(torch.ones(2, 3), torch.ones(2, 4))


def test_recall_at_k_on_a_hand_made_case():
    sim = torch.tensor([[0.9, 0.1, 0.0],      # query 0: correct item first
                        [0.8, 0.5, 0.1],      # query 1: correct item second
                        [0.7, 0.6, 0.5]])     # query 2: correct item third
    assert C.recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert C.recall_at_k(sim, 2) == pytest.approx(2 / 3)
    assert C.recall_at_k(sim, 3) == pytest.approx(1.0)
    assert C.recall_at_k(sim, 1, targets=torch.tensor([0, 0, 0])) == pytest.approx(1.0)


@pytest.mark.parametrize("args, error, match", [
    ((torch.zeros(2, 3), 1), ValueError, "square"), ((torch.zeros(3, 3), 0), ValueError, "k must be at least 1"),
    ((torch.zeros(3, 3), 4), ValueError, "k must be at most 3"), ((torch.zeros(0, 0), 1), ValueError, "non-empty"),
    ((torch.zeros(2, 2), 1.5), TypeError, "k must be an integer")])
def test_recall_at_k_rejects_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        C.recall_at_k(*args)
    with pytest.raises(ValueError, match="targets"):
        C.recall_at_k(torch.zeros(2, 3), 1, targets=torch.tensor([0, 3]))


def test_partial_captions_use_the_vocabulary_and_omit_colour_when_asked():
    from vlmlib.shapesworld import COLOUR_NAMES, ShapesWorld

    data = ShapesWorld(seed=0).sample(50, seed=0, captions=None)
    rng = np.random.default_rng(0)
    caps = [C.partial_caption(s[0], rng) for s in data.shapes]
    C.tokenize(caps)                                   # every word is known
    grey = [C.partial_caption(s[0], rng, colour=False) for s in data.shapes]
    assert not any(c in g.split() for g in grey for c in COLOUR_NAMES)


def test_a_short_training_run_lowers_the_loss_and_keeps_the_scale_clamped():
    config = C.CLIPConfig(patch_size=8, vision_dim=32, text_dim=32, embed_dim=16, vision_depth=1, text_depth=1)
    recipe = C.Recipe(steps=30, batch_size=32, n_train=500, lr=3e-3)
    model, history, _ = C.train_clip(config, recipe)
    assert np.mean(history["loss"][-5:]) < np.mean(history["loss"][:5])
    assert max(history["temperature scale"]) <= 100.0 + 1e-3


def test_tiny_hf_clip_round_trip_offline(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    tc = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
                        bos_token_id=98, eos_token_id=99, pad_token_id=0)
    vc = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, projection_dim=16)
    torch.manual_seed(0)
    original = CLIPModel(CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=16)).eval()
    original.save_pretrained(tmp_path)
    model, processor = C.load_hf_clip(str(tmp_path))
    assert processor is None
    pixels = torch.rand(2, 3, 32, 32)
    ids = torch.tensor([[98, 5, 6, 99], [98, 7, 99, 0]])
    probs = C.hf_zero_shot(model, pixels, ids)
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        out = original(input_ids=ids, pixel_values=pixels)
    assert torch.allclose(probs, out.logits_per_image.softmax(-1), atol=1e-5)
    assert torch.equal(C.hf_zero_shot(model, pixels.double(), ids), probs)          # float64 pixels are converted
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        C.hf_zero_shot(model, pixels, ids, attention_mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(OSError):
        C.load_hf_clip(str(tmp_path / "missing"))


def test_siglip_bias_starts_at_minus_log_batch_unless_given():
    config = C.CLIPConfig(patch_size=8, vision_dim=32, text_dim=32, embed_dim=16, vision_depth=1, text_depth=1)
    for given, expected in ((None, -math.log(16)), (-10.0, -10.0)):
        recipe = C.Recipe(steps=2, batch_size=16, n_train=200, lr=1e-9, loss="siglip", siglip_bias=given)
        _, history, _ = C.train_clip(config, recipe)
        assert math.isclose(history["bias"][0], expected, abs_tol=1e-4)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_text_encoder_equals_transformers_clip_text_model_pooled_at_eos(dtype, atol):
    """Our text transformer and its [EOS] pooling against CLIPTextModel with copied weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = C.CLIPConfig(patch_size=8, text_dim=32, text_depth=2, text_heads=4, max_length=16)
    ours = C.CLIP(config).text_encoder.eval()
    with torch.no_grad():                      # off the initial values: zero biases and unit gains hide mistakes
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    tok = C.shapes_tokenizer()
    hf = CLIPTextModel(CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.text_dim, intermediate_size=config.mlp_ratio * config.text_dim,
        num_hidden_layers=config.text_depth, num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length, hidden_act="gelu", layer_norm_eps=ours.norm.eps,
        bos_token_id=tok.bos_token_id, eos_token_id=config.eos_id, pad_token_id=config.pad_id,
        attn_implementation="sdpa")).eval()    # (the eager path takes the softmax in float32)
    D = config.text_dim
    with torch.no_grad():
        hf.embeddings.token_embedding.weight.copy_(ours.token_embed.weight)
        hf.embeddings.position_embedding.weight.copy_(ours.pos_embed[0])
        for block, layer in zip(ours.blocks, hf.encoder.layers, strict=True):
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):          # our qkv rows: q, k, v
                getattr(layer.self_attn, name).weight.copy_(block.attn.qkv.weight[i * D:(i + 1) * D])
                getattr(layer.self_attn, name).bias.copy_(block.attn.qkv.bias[i * D:(i + 1) * D])
            layer.self_attn.out_proj.load_state_dict(block.attn.out.state_dict())
            layer.layer_norm1.load_state_dict(block.ln1.state_dict())
            layer.layer_norm2.load_state_dict(block.ln2.state_dict())
            layer.mlp.fc1.load_state_dict(block.mlp.fc1.state_dict())
            layer.mlp.fc2.load_state_dict(block.mlp.fc2.state_dict())
        hf.final_layer_norm.load_state_dict(ours.norm.state_dict())
    ours, hf = ours.to(dtype), hf.to(dtype)
    ids = C.tokenize(["a red circle", "there is a large blue square on the left", "a shape",
                      "at the top right there is a green cross"])               # [EOS] at different places
    with torch.no_grad():
        theirs = hf(input_ids=ids).pooler_output                                 # causal mask, read at the first [EOS]
        mine = ours(ids)
    assert mine.dtype == dtype and mine.shape == theirs.shape == (4, D)
    assert torch.allclose(mine, theirs, atol=atol, rtol=0), (mine - theirs).abs().max()
