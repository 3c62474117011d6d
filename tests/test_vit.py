import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, ViTConfig as HFViTConfig, ViTModel
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

from vlmlib.exercises import ch01
from vlmlib.vit import (PatchEmbedding, ViT, ViTClassifier, ViTConfig, patchify, scaled_dot_product_attention,
                        unpatchify)


def test_patchify_orders_patches_by_rows_and_pixels_channel_first():
    img = torch.arange(2 * 4 * 4.0).reshape(1, 2, 4, 4)     # channel 0: 0..15, channel 1: 16..31
    p = patchify(img, 2)
    assert p.shape == (1, 4, 8)
    assert p[0, 0].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]   # top-left patch: red rows, then green rows
    assert p[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]   # its right neighbour comes next
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(unpatchify(patchify(x, 4), 4, 3), x)


def test_patch_embedding_equals_a_strided_convolution():
    torch.manual_seed(0)
    emb = PatchEmbedding(4, 3, 16)
    x = torch.randn(5, 3, 32, 32)
    conv = emb.as_conv()
    via_conv = conv(x).flatten(2).transpose(1, 2)            # (B, D, 8, 8) -> (B, 64, D), as timm/HF do
    assert torch.allclose(emb(x), via_conv, atol=1e-5)


def test_patch_embedding_equals_transformers_vit_and_clip():
    torch.manual_seed(0)
    hf = ViTModel(HFViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=32), add_pooling_layer=False)
    ours = PatchEmbedding(4, 3, 16)
    with torch.no_grad():
        hf.embeddings.patch_embeddings.projection.weight.copy_(ours.as_conv().weight)
        hf.embeddings.patch_embeddings.projection.bias.copy_(ours.proj.bias)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(hf.embeddings.patch_embeddings(x), ours(x), atol=1e-5)
    clip = CLIPVisionEmbeddings(CLIPVisionConfig(image_size=32, patch_size=4, hidden_size=16, num_attention_heads=2))
    ours = PatchEmbedding(4, 3, 16, bias=False)               # CLIP's patch embedding has no bias
    with torch.no_grad():
        clip.patch_embedding.weight.copy_(ours.as_conv().weight)
    assert torch.allclose(clip.patch_embedding(x).flatten(2).transpose(1, 2), ours(x), atol=1e-5)


def test_attention_matches_pytorch():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    out, w = scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 7))
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    out, w = scaled_dot_product_attention(q, k, v, mask)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)
    assert (w.triu(1) == 0).all()


def test_vit_shapes_and_parameter_count_match_transformers():
    c = ViTConfig(image_size=32, patch_size=4, dim=64, depth=2, heads=4, mlp_ratio=2)
    vit = ViT(c)
    x = torch.randn(2, 3, 32, 32)
    assert vit(x).shape == (2, 65, 64) and vit.features(x).shape == (2, 64)
    assert [a.shape for a in vit.attention_maps()] == [(2, 4, 65, 65)] * 2
    hf = ViTModel(HFViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=128), add_pooling_layer=False)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(vit) == count(hf)
    assert vit.pos_embed.shape == hf.embeddings.position_embeddings.shape == (1, 65, 64)


def test_without_position_embeddings_the_vit_cannot_see_where_patches_are():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(pos_embedding=False)).eval()
    x = torch.randn(3, 3, 32, 32)
    shuffled = unpatchify(patchify(x, 4)[:, torch.randperm(64)], 4, 3)
    assert torch.allclose(vit.features(x), vit.features(shuffled), atol=1e-5)
    with_pos = ViT(ViTConfig(pos_embedding=True)).eval()
    assert not torch.allclose(with_pos.features(x), with_pos.features(shuffled), atol=1e-3)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"patch_size": 5}, ValueError, "must divide image_size"),
    ({"dim": 30, "heads": 4}, ValueError, "must divide dim"),
    ({"depth": 0}, ValueError, "ViTConfig.depth must be at least 1"),
    ({"dim": 6.5}, TypeError, "ViTConfig.dim must be an integer"),
    ({"pos_embedding": "no"}, TypeError, "ViTConfig.pos_embedding must be True or False"),
])
def test_bad_configs_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ViTConfig(**kwargs)


def test_bad_inputs_are_clear_errors():
    vit = ViT(ViTConfig())
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, 32, 32\)"):
        vit(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\), got \(3, 32, 32\); add a batch dimension"):
        vit(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="must be a tensor"):
        patchify([[1.0]], 2)
    with pytest.raises(ValueError, match="dividing H=32"):
        patchify(torch.randn(1, 3, 32, 32), 5)
    with pytest.raises(ValueError, match="incompatible shapes"):
        scaled_dot_product_attention(torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(TypeError, match="config must be a ViTConfig"):
        ViT({"dim": 64})
    with pytest.raises(ValueError, match="classes must map"):
        ViTClassifier(ViTConfig(), {"colour": 1})


def test_classifier_has_one_head_per_attribute():
    model = ViTClassifier(ViTConfig(), {"colour": 6, "kind": 4, "position": 9})
    out = model(torch.randn(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"colour": (2, 6), "kind": (2, 4), "position": (2, 9)}


def test_chapter_1_checks_accept_solutions_and_reject_mistakes():
    assert ch01.check_patchify(patchify, seed=0)
    wrong_order = lambda x, P: x.unfold(2, P, P).unfold(3, P, P).permute(0, 2, 3, 4, 5, 1).reshape(x.shape[0], -1, x.shape[1] * P * P)
    assert not ch01.check_patchify(wrong_order)                       # channel last: a common slip
    assert ch01.check_embed_tokens(lambda t, c, p: torch.cat([c.expand(len(t), -1, -1), t], 1) + p)
    assert not ch01.check_embed_tokens(lambda t, c, p: torch.cat([t, c.expand(len(t), -1, -1)], 1) + p)
    assert ch01.check_attention(lambda q, k, v: F.scaled_dot_product_attention(q, k, v))
    naive = lambda q, k, v: (torch.exp(q @ k.transpose(-2, -1)) / torch.exp(q @ k.transpose(-2, -1)).sum(-1, keepdim=True)) @ v
    assert not ch01.check_attention(naive)                             # forgot the 1/sqrt(d)


def _copy_vit_into_transformers(ours: ViT) -> ViTModel:
    """A transformers ViTModel with our weights: the same equations, written by someone else."""
    c = ours.config
    hf = ViTModel(HFViTConfig(image_size=c.image_size, patch_size=c.patch_size, num_channels=c.channels,
                              hidden_size=c.dim, num_hidden_layers=c.depth, num_attention_heads=c.heads,
                              intermediate_size=c.mlp_ratio * c.dim, hidden_act="gelu",
                              layer_norm_eps=ours.norm.eps,             # HF's default is 1e-12, ours 1e-5
                              # HF's eager attention takes the softmax in float32 even in float64
                              attn_implementation="sdpa"), add_pooling_layer=False)
    D = c.dim
    with torch.no_grad():
        e = hf.embeddings
        e.patch_embeddings.projection.weight.copy_(ours.patch_embed.as_conv().weight)
        e.patch_embeddings.projection.bias.copy_(ours.patch_embed.proj.bias)
        e.cls_token.copy_(ours.cls_token)
        e.position_embeddings.copy_(ours.pos_embed)
        assert len(hf.layers) == len(ours.blocks)
        for block, layer in zip(ours.blocks, hf.layers):
            qkv_w, qkv_b = block.attn.qkv.weight, block.attn.qkv.bias          # rows: q (D), k (D), v (D)
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                getattr(layer.attention, name).weight.copy_(qkv_w[i * D:(i + 1) * D])
                getattr(layer.attention, name).bias.copy_(qkv_b[i * D:(i + 1) * D])
            layer.attention.o_proj.load_state_dict(block.attn.out.state_dict())
            layer.layernorm_before.load_state_dict(block.ln1.state_dict())
            layer.layernorm_after.load_state_dict(block.ln2.state_dict())
            layer.mlp.fc1.load_state_dict(block.mlp.fc1.state_dict())
            layer.mlp.fc2.load_state_dict(block.mlp.fc2.state_dict())
        hf.layernorm.load_state_dict(ours.norm.state_dict())
    return hf.eval()


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_whole_vit_equals_transformers_vit_with_copied_weights(dtype, atol):
    torch.manual_seed(0)
    ours = ViT(ViTConfig(image_size=32, patch_size=4, dim=64, depth=3, heads=4, mlp_ratio=2)).eval()
    with torch.no_grad():                      # move the parameters off their initial values (zero biases, unit gains)
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf = _copy_vit_into_transformers(ours)
    ours, hf = ours.to(dtype), hf.to(dtype)
    x = torch.rand(3, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        theirs = hf(pixel_values=x).last_hidden_state                        # (B, N+1, D), after the final LN
        mine = ours(x)
    assert mine.dtype == dtype and mine.shape == theirs.shape == (3, 65, 64)
    assert torch.allclose(mine, theirs, atol=atol, rtol=0), (mine - theirs).abs().max()
    assert torch.allclose(ours.features(x), theirs[:, 0], atol=atol, rtol=0)   # y = LN(z_L⁰), Eq. 4


def test_friendly_image_conversions_give_the_float32_result():
    torch.manual_seed(0)
    vit = ViT(ViTConfig()).eval()
    x = torch.rand(2, 3, 32, 32)
    pixels = (x * 255).round().to(torch.uint8)
    with torch.no_grad():
        assert torch.equal(vit(x.double()), vit(x.double().float()))          # float64 -> float32
        assert torch.equal(vit(pixels), vit(pixels.float() / 255))           # uint8 0..255 -> [0, 1]
        assert torch.equal(vit(x.permute(0, 2, 3, 1).numpy().transpose(0, 3, 1, 2)), vit(x))   # NumPy arrays
    with pytest.raises(ValueError, match="channels-last"):
        vit(x.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="NaN"):
        vit(torch.full((1, 3, 32, 32), float("nan")))


def test_train_classifier_caches_and_masks_colour_for_grey_copies(tmp_path, monkeypatch):
    from vlmlib.vit import grey, load_classifier, train_classifier

    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    config = ViTConfig(image_size=32, patch_size=8, dim=16, depth=1, heads=2, mlp_ratio=2)
    first = train_classifier(config, steps=3, n_train=64, batch=8, p_grey=1.0, verbose=False)
    again = train_classifier(config, steps=3, n_train=64, batch=8, p_grey=1.0, verbose=False)
    assert not first.from_cache and again.from_cache
    # every image grey: no colour label at all, so the colour accuracy has nothing to count
    assert all(v == 0 for v in first.history["colour accuracy"])
    model = load_classifier(again)
    assert set(model(torch.rand(2, 3, 32, 32))) == {"colour", "kind", "position"}
    x = torch.rand(2, 3, 32, 32)
    g = grey(x)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    with pytest.raises(ValueError, match="p_grey"):
        train_classifier(config, steps=3, n_train=64, p_grey=1.5)
    with pytest.raises(TypeError, match="artifact"):
        load_classifier({"vit": 1})
