"""LLaVA at ShapesWorld size: a frozen image encoder, a trained connector, a language model (chapter 8).

LLaVA (Liu et al., 2023) joins two models that were trained apart:

- the **vision tower**: a CLIP image encoder (a :class:`vlmlib.vit.ViT`; chapter 8's is chapter 2's CLIP
  taught crowded scenes, :mod:`vlmlib.scene_clip`), frozen. LLaVA does
  not use CLIP's pooled image embedding; it takes one feature per patch, the *grid features*, read
  from the **penultimate** transformer block (:func:`grid_features`);
- the **projector** W, the only new part (:class:`Projector`): it maps each patch feature to the
  language model's embedding size, so each patch becomes one "visual word". LLaVA v1 uses a single
  linear layer; LLaVA-1.5 (and ``transformers``' ``LlavaMultiModalProjector``) a two-layer MLP,
  Linear → GELU → Linear;
- the **language model**: chapter 6's ``LlamaForCausalLM`` (:func:`vlmlib.lm.load_lm`), pretrained on
  ShapesWorld text only: it has never seen an image.

The prompt holds one ``<image>`` placeholder token per patch feature (a conversation template writes
them, :func:`apply_template`). :meth:`LlavaModel.forward` looks the tokens up in the LM's embedding
table, then overwrites the rows of the placeholders with the projected patch features, in order
(``masked_scatter``), and runs the LM on the result. The loss is next-token cross-entropy on the
answer tokens only (every other label is −100). This is exactly what ``transformers``'
``LlavaForConditionalGeneration`` does; :func:`to_transformers` builds one with our weights, and the
tests check that both give the same logits.

Training has two stages (:func:`freeze_for_stage`): stage 1 (*feature alignment*, image–caption
pairs) trains only the projector, so W learns to speak the frozen LM's language; stage 2
(*end to end*, instruction conversations) trains the projector and the LM. The vision tower never
trains. :func:`dpo_loss` and :func:`sequence_logps` are for the chapter's preference tuning (DPO,
Rafailov et al., 2023).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from .tokenizer import IMAGE, shapes_tokenizer
from .vit import ViT

PROJECTORS = ("linear", "mlp")
IGNORE_INDEX = -100               # LLaVA's IGNORE_INDEX: no loss on this position

#: The conversation template, in the style of ``llava-hf/llava-1.5-7b-hf``:
#: ``USER: <image>\\n{question} ASSISTANT: {answer}[EOS]``, turn after turn. Each image in a user
#: message is written as ``image_seq_length`` copies of ``<image>`` (one per patch feature), as
#: ``transformers``' ``LlavaProcessor`` expands it; the answers (and their [EOS]) are wrapped in
#: ``{% generation %}`` so that ``return_assistant_tokens_mask=True`` marks the tokens to learn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set n = image_seq_length | default(1) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '" + IMAGE + "' * n }}{{ '\\n' }}{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}"
    "{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{% endif %}"
    "{{ eos_token }}{% endgeneration %}{{ ' ' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: LLaVA-1.5's stage-1 ("plain") format: the image, then the caption, nothing else.
PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% set n = image_seq_length | default(1) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% for c in message['content'] if c['type'] == 'image' %}{{ '" + IMAGE + "' * n }}{% endfor %}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{% endif %}"
    "{{ eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)

#: Words the conversation template adds to ShapesWorld's vocabulary (new ids after the old ones).
ROLE_WORDS = ("user", "assistant", ":")
#: Words of chapter 8's questions that ShapesWorld's captions lack (:data:`vlmlib.instructions.EXTRA_WORDS`).
QUESTION_WORDS = ("which", "closer")


# -- the parts ----------------------------------------------------------------------------------------
def _vision_tower(vision) -> ViT:
    """A CLIP's image encoder, or a ViT itself."""
    from .clip import CLIP

    if isinstance(vision, CLIP):
        return vision.image_encoder
    if isinstance(vision, ViT):
        return vision
    raise TypeError(f"the vision tower must be a vlmlib CLIP (its image_encoder is used) or a vlmlib ViT, "
                    f"got {type(vision).__name__}")


def _check_layer(layer, depth: int) -> int:
    layer = checks.integer(layer, "layer", minimum=-(depth + 1), maximum=depth)
    return layer


@torch.no_grad()
def grid_features(clip_model, images, layer: int = -2) -> torch.Tensor:
    """The frozen vision tower's per-patch features: (B, N, D), N patches, the CLS token dropped.

    ``layer`` indexes the hidden states as ``transformers`` does: index 0 is the embeddings z₀
    (Eq. 1 of ViT), index ℓ the output of block ℓ, −1 the last block's output (before the final
    LayerNorm, which belongs to the pooled feature). LLaVA reads layer **−2**, the penultimate block
    (``--mm_vision_select_layer -2``; ``vision_feature_layer=-2`` in ``transformers``). CLIP's
    training shapes only the last block's CLS token (it must match a caption), so the last block's
    patch tokens serve that one pooled vector; LLaVA's ablation found the last layer's features
    slightly worse and suggests that the layer before keeps more localised detail. (Chapter 2's
    CLIP has two blocks, so −2 is the output of its first block.) The CLS token is dropped (``vision_feature_select_strategy="default"``): the LM gets only the
    grid. ``clip_model`` is a vlmlib CLIP (its ``image_encoder``) or a ViT; images (B, 3, H, W) in
    [0, 1]. No gradient flows: the tower is frozen.
    """
    vit = _vision_tower(clip_model)
    layer = _check_layer(layer, len(vit.blocks))
    stop = layer % (len(vit.blocks) + 1)            # how many blocks to run
    z = vit.embed(images)                           # (B, N+1, D), checks the images
    for block in vit.blocks[:stop]:
        z = block(z)
    return z[:, 1:]                                 # (B, N, D): the patches, no CLS


class Projector(nn.Module):
    """W: patch features (…, vision_dim) -> visual tokens (…, text_dim).

    ``kind="linear"`` is LLaVA v1's single linear layer (with a bias, as in its code);
    ``kind="mlp"`` is LLaVA-1.5's ``mlp2x_gelu``, Linear → GELU → Linear, the module
    ``transformers`` calls ``LlavaMultiModalProjector`` (its layer names are used here).
    """

    def __init__(self, kind: str, vision_dim: int, text_dim: int):
        super().__init__()
        self.kind = checks.choice(kind, "projector", PROJECTORS)
        vision_dim = checks.integer(vision_dim, "vision_dim", minimum=1)
        text_dim = checks.integer(text_dim, "text_dim", minimum=1)
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        if self.kind == "mlp":
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.linear_1(features)
        return self.linear_2(self.act(h)) if self.kind == "mlp" else h


# -- the model -----------------------------------------------------------------------------------------
class LlavaModel(nn.Module):
    """Frozen vision tower + projector + causal LM, merged at the ``<image>`` placeholders.

    ``vision`` is a vlmlib CLIP (its ``image_encoder`` is used) or a ViT; ``lm`` a ``transformers``
    causal LM such as the ``LlamaForCausalLM`` of :func:`vlmlib.lm.load_lm`; ``image_token_id`` the
    tokenizer's ``<image>`` id. Both parts are **copied**, so training this model never changes the
    CLIP or the LM it was built from (``load_lm`` hands every caller the same object).
    """

    def __init__(self, vision, lm, image_token_id: int, projector: str = "mlp", feature_layer: int = -2):
        super().__init__()
        vit = _vision_tower(vision)
        if not hasattr(lm, "get_input_embeddings") or not hasattr(lm, "generate"):
            raise TypeError(f"lm must be a transformers causal language model (LlamaForCausalLM), "
                            f"got {type(lm).__name__}")
        self.vision_tower = copy.deepcopy(vit).eval()
        self.vision_tower.requires_grad_(False)
        self.language_model = copy.deepcopy(lm)
        self.language_model.requires_grad_(True)
        vocab = self.language_model.get_input_embeddings().num_embeddings
        self.image_token_id = checks.integer(image_token_id, "image_token_id", minimum=0, maximum=vocab - 1)
        self.feature_layer = _check_layer(feature_layer, len(vit.blocks))
        self.projector = Projector(projector, vit.config.dim, self.language_model.config.hidden_size)

    @property
    def n_patches(self) -> int:
        """Visual tokens per image: one per patch (the CLS token is dropped)."""
        return self.vision_tower.config.num_patches

    def train(self, mode: bool = True):
        super().train(mode)
        self.vision_tower.eval()                  # frozen: always in inference mode
        return self

    def image_features(self, images) -> torch.Tensor:
        """Projected grid features, (B, N, text_dim): the visual tokens the LM reads."""
        return self.projector(grid_features(self.vision_tower, images, self.feature_layer))

    def merge(self, images, input_ids: torch.Tensor) -> torch.Tensor:
        """The LM's input embeddings (B, L, text_dim) with each ``<image>`` row replaced by a visual token.

        ``images`` (M, 3, H, W) are all the images of the batch in the order their placeholders
        appear (row by row); ``input_ids`` must hold exactly M × n_patches ``<image>`` ids.
        ``images=None`` is the blind model: then ``input_ids`` may hold no ``<image>``.
        """
        input_ids = _check_ids(input_ids, "input_ids")
        embeds = self.language_model.get_input_embeddings()(input_ids)              # (B, L, D)
        mask = input_ids == self.image_token_id                                     # (B, L)
        n_tokens = int(mask.sum())
        if images is None:
            if n_tokens:
                raise ValueError(f"input_ids hold {n_tokens} <image> placeholders but images is None: "
                                 "give the images, or leave the placeholders out for the blind model")
            return embeds
        features = self.image_features(images)                                      # (M, N, D)
        if n_tokens != features.shape[0] * features.shape[1]:
            raise ValueError(f"input_ids hold {n_tokens} <image> placeholders, but {features.shape[0]} image(s) "
                             f"give {features.shape[0] * features.shape[1]} visual tokens ({features.shape[1]} "
                             f"per image): write {features.shape[1]} copies of <image> per image "
                             "(apply_template does, with image_seq_length=model.n_patches)")
        return merge_embeddings(embeds, input_ids, features, self.image_token_id)

    def forward(self, images, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        """The LM's output (``.logits`` (B, L, vocab), ``.loss`` when ``labels`` are given).

        ``labels`` are aligned with ``input_ids`` (the LM shifts them), −100 where no loss is taken:
        everything but the answers.
        """
        embeds = self.merge(images, input_ids)
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape):
            raise ValueError(f"labels must be a tensor shaped like input_ids {tuple(input_ids.shape)}, got "
                             f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, images, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 8, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, seed: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> torch.Tensor:
        """New tokens (B, ≤ max_new_tokens) after each prompt, greedy or sampled, with the KV cache.

        The merged embeddings go to the LM's own ``generate(inputs_embeds=...)``, which runs the
        prompt once and then feeds one token at a time, reusing the cached keys and values. A batch
        of prompts of different lengths must be padded on the **left** (the new tokens follow the
        last column). ``top_k=0`` samples from the whole distribution; ``seed`` seeds torch's
        global generator first. Rows that end early are filled with ``pad_token_id``.
        """
        max_new_tokens = checks.integer(max_new_tokens, "max_new_tokens", minimum=1)
        temperature = checks.number(temperature, "temperature", low=0.0, low_open=True)
        top_k = checks.integer(top_k, "top_k", minimum=0)
        if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("attention_mask has padding in its last column: pad prompts on the left for generation")
        config = self.language_model.config
        eos = config.eos_token_id if eos_token_id is None else eos_token_id
        pad = config.pad_token_id if pad_token_id is None else pad_token_id
        if seed is not None:
            torch.manual_seed(checks.integer(seed, "seed", minimum=0))
        embeds = self.merge(images, input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=embeds.device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0) if do_sample else \
            dict(do_sample=False, temperature=None, top_k=None, top_p=None)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask,
                                            max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                            use_cache=True, **sampling)


def merge_embeddings(embeds: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor,
                     image_token_id: int) -> torch.Tensor:
    """Token embeddings (B, L, D) with the rows at ``<image>`` ids replaced by the visual tokens.

    ``features`` (M, N, D) are the projected patch features of the M images, in the order their
    placeholders appear, row by row; there must be exactly M × N placeholders. The others keep their
    embedding. (``transformers``' Llava does this with ``masked_scatter``.)
    """
    input_ids = _check_ids(input_ids, "input_ids")
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[:2] != input_ids.shape:
        raise ValueError(f"embeds must be (B, L, D) with (B, L) = input_ids' shape {tuple(input_ids.shape)}, got "
                         f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}")
    if not isinstance(features, torch.Tensor) or features.ndim != 3 or features.shape[-1] != embeds.shape[-1]:
        raise ValueError(f"features must be (M, N, {embeds.shape[-1]}), got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    mask = input_ids == checks.integer(image_token_id, "image_token_id", minimum=0)
    if int(mask.sum()) != features.shape[0] * features.shape[1]:
        raise ValueError(f"input_ids hold {int(mask.sum())} <image> ids but features give "
                         f"{features.shape[0] * features.shape[1]} visual tokens")
    return embeds.masked_scatter(mask[..., None], features.to(embeds.device, embeds.dtype))


def trains_in_stage(name: str, stage: int) -> bool:
    """Whether the parameter called ``name`` (as ``LlavaModel.named_parameters()`` names it) trains in
    ``stage``: the projector always, the language model in stage 2 only, the vision tower never."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a parameter name (a string), got {type(name).__name__}")
    stage = checks.choice(stage, "stage", (1, 2))
    return name.startswith("projector.") or (stage == 2 and name.startswith("language_model."))


def _check_ids(ids, name: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of shape (B, L), got "
                        f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    return ids.long()


def freeze_for_stage(model: LlavaModel, stage: int) -> list[str]:
    """Set ``requires_grad`` for a training stage; return the names of the parameters that train.

    Stage 1 (feature alignment): only the projector. Stage 2 (end to end): the projector and the
    language model. The vision tower never trains (LLaVA: ``vision_tower.requires_grad_(False)``).
    """
    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    stage = checks.choice(stage, "stage", (1, 2))
    for name, p in model.named_parameters():
        p.requires_grad_(trains_in_stage(name, stage))
    return [name for name, p in model.named_parameters() if p.requires_grad]


# -- the same model in transformers ---------------------------------------------------------------------
def to_transformers(model: LlavaModel):
    """A ``transformers`` ``LlavaForConditionalGeneration`` holding this model's weights.

    The vision tower is written as a ``transformers`` ``ViTModel`` (``vision_config`` a ``ViTConfig``),
    because our ViT has exactly its layout: pre-norm blocks, a patch embedding with a bias, no
    LayerNorm before the first block. ``CLIPVisionModel`` has one more LayerNorm (``pre_layrnorm``,
    applied to the embeddings before block 1), which no choice of weights turns into the identity,
    so our tower cannot be copied into it exactly. (Its bias-free patch convolution alone would be
    no obstacle: the bias can be added to the position embeddings.) ``LlavaModel`` in ``transformers``
    builds whatever tower ``vision_config`` names, so the Llava model itself is the real class.

    The MLP projector maps one to one onto ``LlavaMultiModalProjector``. The linear projector (v1)
    is written in the same two-layer module with ``projector_hidden_act="linear"`` (the identity)
    and ``linear_2`` the identity matrix with a zero bias: the same map, one extra matrix product.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers import ViTConfig as HFViTConfig

    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    vit, lm = model.vision_tower, model.language_model
    c = vit.config
    if not c.pos_embedding:
        raise ValueError("a ViT without position embeddings has no transformers counterpart")
    vision_config = HFViTConfig(image_size=c.image_size, patch_size=c.patch_size, num_channels=c.channels,
                                hidden_size=c.dim, num_hidden_layers=c.depth, num_attention_heads=c.heads,
                                intermediate_size=c.mlp_ratio * c.dim, hidden_act="gelu", qkv_bias=True,
                                layer_norm_eps=vit.norm.eps, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
    text_config = copy.deepcopy(lm.config)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_id=model.image_token_id,
                         vision_feature_layer=model.feature_layer, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu" if model.projector.kind == "mlp" else "linear",
                         image_seq_length=model.n_patches, multimodal_projector_bias=True,
                         tie_word_embeddings=bool(lm.config.tie_word_embeddings))
    hf = LlavaForConditionalGeneration(config)
    D = c.dim
    with torch.no_grad():
        tower = hf.model.vision_tower
        e = tower.embeddings
        e.patch_embeddings.projection.weight.copy_(vit.patch_embed.as_conv().weight)
        e.patch_embeddings.projection.bias.copy_(vit.patch_embed.proj.bias)
        e.cls_token.copy_(vit.cls_token)
        e.position_embeddings.copy_(vit.pos_embed)
        for block, layer in zip(vit.blocks, tower.layers, strict=True):
            w, b = block.attn.qkv.weight, block.attn.qkv.bias                     # rows: q (D), k (D), v (D)
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                getattr(layer.attention, name).weight.copy_(w[i * D:(i + 1) * D])
                getattr(layer.attention, name).bias.copy_(b[i * D:(i + 1) * D])
            layer.attention.o_proj.load_state_dict(block.attn.out.state_dict())
            layer.layernorm_before.load_state_dict(block.ln1.state_dict())
            layer.layernorm_after.load_state_dict(block.ln2.state_dict())
            layer.mlp.fc1.load_state_dict(block.mlp.fc1.state_dict())
            layer.mlp.fc2.load_state_dict(block.mlp.fc2.state_dict())
        tower.layernorm.load_state_dict(vit.norm.state_dict())
        proj = hf.model.multi_modal_projector
        proj.linear_1.load_state_dict(model.projector.linear_1.state_dict())
        if model.projector.kind == "mlp":
            proj.linear_2.load_state_dict(model.projector.linear_2.state_dict())
        else:
            proj.linear_2.weight.copy_(torch.eye(proj.linear_2.out_features))
            proj.linear_2.bias.zero_()
        hf.model.language_model.load_state_dict(lm.model.state_dict())
        hf.lm_head.load_state_dict(lm.lm_head.state_dict())
    device = next(lm.parameters()).device
    return hf.to(device=device, dtype=next(lm.parameters()).dtype).eval()


# -- the conversation template ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def llava_tokenizer():
    """The ShapesWorld tokenizer with the conversation's words and :data:`CHAT_TEMPLATE`.

    ``user``, ``assistant``, ``:`` and :data:`QUESTION_WORDS` get new ids after the existing ones
    (the ids of every other token are unchanged, so the text-only LM reads them as before; the new
    rows of its embedding table are untrained until stage 2). ``<image>`` keeps its id. Treat the returned
    tokenizer as read-only: it is shared.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    base = shapes_tokenizer()
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for word in ROLE_WORDS + QUESTION_WORDS:
        vocab.setdefault(word, len(vocab))
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                  pad_token=base.pad_token, unk_token=base.unk_token, bos_token=base.bos_token,
                                  eos_token=base.eos_token, mask_token=base.mask_token,
                                  additional_special_tokens=[IMAGE], model_max_length=256)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def conversation(question: str, answer: str | None = None, images: int = 1) -> list[dict]:
    """One exchange in the messages format of ``apply_chat_template``: ``images`` images, then the question."""
    question = checks.text_list([question], "question")[0]
    images = checks.integer(images, "images", minimum=0)
    messages = [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": checks.text_list([answer], "answer")[0]}]})
    return messages


def dialogue(turns: Sequence[tuple[str, str]], images: int = 1) -> list[dict]:
    """A conversation of several exchanges about the same image(s), LLaVA's multi-turn format: the
    images come with the first question only; ``turns`` is a list of (question, answer)."""
    if isinstance(turns, (str, tuple)) or not isinstance(turns, list) or not turns or \
            not all(isinstance(t, tuple) and len(t) == 2 for t in turns):
        raise TypeError(f"turns must be a non-empty list of (question, answer) pairs, got {turns!r}")
    messages = conversation(*turns[0], images=images)
    for question, answer in turns[1:]:
        messages += conversation(question, answer, images=0)
    return messages


def apply_template(conversations: Sequence[list[dict]], image_seq_length: int, tokenizer=None,
                   add_generation_prompt: bool = False, plain: bool = False, padding_side: str = "right"
                   ) -> dict[str, torch.Tensor]:
    """Tokenize conversations with the chat template: ``input_ids``, ``attention_mask``, ``labels``.

    Each image becomes ``image_seq_length`` ``<image>`` ids (use ``model.n_patches``). ``labels``
    equal ``input_ids`` on the assistant's tokens (its answers and their [EOS], found with
    ``return_assistant_tokens_mask``) and −100 everywhere else. ``plain=True`` uses LLaVA-1.5's
    stage-1 format (image then caption, :data:`PLAIN_TEMPLATE`). Rows are padded on
    ``padding_side``: "right" for training, "left" for :meth:`LlavaModel.generate` (with
    ``add_generation_prompt=True``, which ends each prompt with "ASSISTANT:").
    """
    tok = tokenizer if tokenizer is not None else llava_tokenizer()
    n = checks.integer(image_seq_length, "image_seq_length", minimum=1)
    padding_side = checks.choice(padding_side, "padding_side", ("left", "right"))
    if not isinstance(conversations, (list, tuple)) or not conversations or \
            not all(isinstance(c, list) and c and all(isinstance(m, dict) for m in c) for c in conversations):
        raise TypeError("conversations must be a non-empty list of conversations, each a list of "
                        "{'role': ..., 'content': ...} messages (see conversation())")
    out = tok.apply_chat_template(list(conversations), chat_template=PLAIN_TEMPLATE if plain else CHAT_TEMPLATE,
                                  tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                  add_generation_prompt=add_generation_prompt, image_seq_length=n)
    rows, masks = out["input_ids"], out["assistant_masks"]
    if any(tok.unk_token_id in row for row in rows):
        bad = [tok.decode(row) for row in rows if tok.unk_token_id in row][0]
        raise ValueError(f"words outside the vocabulary ([UNK]) in {bad!r}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        cols = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        row, mask = torch.tensor(row), torch.tensor(mask, dtype=torch.bool)
        ids[i, cols], attention[i, cols] = row, 1
        labels[i, cols] = row.masked_fill(~mask, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


# -- preference tuning -----------------------------------------------------------------------------------
def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(answer | prompt) per row, (B,): the sum of the answer tokens' log-probabilities.

    ``labels`` (B, L) are aligned with the inputs, as for the LM's loss: the logits at position t
    predict label t+1; positions labelled −100 (prompt, image, padding) do not count. A sum, not a
    mean: DPO compares the probabilities of whole answers.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor (B, L, vocab), got "
                        f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    labels = _check_ids(labels, "labels")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(logits.shape[:2])} (the logits' B, L), got {tuple(labels.shape)}")
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    logp = logits[:, :-1].float().log_softmax(-1)
    picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]       # (B, L-1)
    return (picked * keep).sum(-1)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """The DPO loss (Rafailov et al., 2023, Eq. 7), averaged over the pairs.

    L = −log σ(β [(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]), with y_w the chosen
    (faithful) answer and y_l the rejected one; each argument is (B,) sequence log-probabilities
    (:func:`sequence_logps`). The reference model's are constants (computed without gradient).
    """
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    values = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    for name, v in zip(names, values):
        if not isinstance(v, torch.Tensor) or v.ndim != 1 or not v.is_floating_point() or len(v) == 0:
            raise TypeError(f"{name} must be a non-empty float tensor (B,) of sequence log-probabilities, got "
                            f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        if v.shape != policy_chosen_logps.shape:
            raise ValueError(f"{name} has shape {tuple(v.shape)}, policy_chosen_logps {tuple(policy_chosen_logps.shape)}")
    beta = checks.number(beta, "beta", low=0.0, low_open=True)
    chosen = policy_chosen_logps - ref_chosen_logps.detach()            # log π(y_w)/π_ref(y_w)
    rejected = policy_rejected_logps - ref_rejected_logps.detach()      # log π(y_l)/π_ref(y_l)
    return -F.logsigmoid(beta * (chosen - rejected)).mean()
