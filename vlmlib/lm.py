"""A small language model pretrained on ShapesWorld text only: no image is ever shown to it.

Chapter 6 uses it as a frozen text encoder (Imagen's idea: a language model trained on text alone
conditions the image generator), chapter 8 as LLaVA's language model. It is a ``transformers``
``LlamaForCausalLM`` at a tiny configuration, trained to predict the next word of

- captions of scenes of one to three shapes ("a small red circle at the top left and ..."),
  in several wordings, and two-shape scenes named by a relation ("a red circle to the left of a
  blue square");
- text-only questions about described scenes: "a red circle at the top left and a blue square on
  the right . what colour is the square ? blue".

Its text comes from ShapesWorld's ``train`` split only, so no scene it reads holds a held-out
colour–kind pair (a purple triangle, ...); such a pair is named only in questions about absent
shapes, answered "no" ("is there a purple triangle ? no"). The trained model ships with the package
(``vlmlib/weights/shapes-lm``, made by ``python -m tools.train_lm``) and :func:`load_lm` loads it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import checks
from .settings import quiet_loading
from .shapesworld import POSITION_PHRASES, ShapesWorld, caption, questions, relation_caption, varied_caption
from .tokenizer import shapes_tokenizer

#: The folder (inside ``vlmlib/weights``) of the shipped model.
LM_NAME = "shapes-lm"


@dataclass
class LMConfig:
    """The language model's size and its training recipe."""

    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 64                 # the ShapesWorld tokenizer's ids (53 words and specials) and room to grow
    max_positions: int = 128
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    n_texts: int = 60_000
    max_length: int = 48                 # tokens per training text, [BOS] and [EOS] included
    seed: int = 0
    world_seed: int = 0

    def __post_init__(self):
        for name in ("hidden_size", "layers", "heads", "intermediate_size", "vocab_size", "max_positions",
                     "steps", "batch_size", "n_texts", "max_length"):
            setattr(self, name, checks.integer(getattr(self, name), f"LMConfig.{name}", minimum=1))
        if self.hidden_size % self.heads:
            raise ValueError(f"LMConfig.heads {self.heads} must divide hidden_size {self.hidden_size}")
        if self.vocab_size < len(shapes_tokenizer()):
            raise ValueError(f"LMConfig.vocab_size must be at least the tokenizer's {len(shapes_tokenizer())} ids")
        self.lr = checks.number(self.lr, "LMConfig.lr", low=0.0, low_open=True)

    def to_dict(self) -> dict:
        return asdict(self)

    def llama_config(self):
        from transformers import LlamaConfig

        tok = shapes_tokenizer()
        return LlamaConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                           intermediate_size=self.intermediate_size, num_hidden_layers=self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.heads,
                           max_position_embeddings=self.max_positions, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)


def describe(shapes, rng: np.random.Generator) -> str:
    """One caption of a scene in one of the wordings the course uses (drawn with ``rng``)."""
    if len(shapes) == 2 and rng.random() < 0.5:
        return relation_caption(shapes, rng)
    u = rng.random()
    if u < 0.5:
        return caption(shapes, "full")
    if u < 0.7:
        return caption(shapes, "short")
    return varied_caption(shapes, rng)


def corpus(n: int, seed: int = 0, world_seed: int = 0) -> list[str]:
    """``n`` training texts: captions and described-scene questions (ShapesWorld's ``train`` split)."""
    n = checks.integer(n, "n", minimum=1)
    rng = np.random.default_rng([seed, 77])
    world = ShapesWorld(max_shapes=3, seed=world_seed)
    data = world.sample(n, split="train", seed=seed, captions=None)
    texts = []
    for shapes in data.shapes:
        text = describe(shapes, rng)
        if rng.random() < 0.5:
            qa = questions(shapes, rng)
            q, a = qa[int(rng.integers(len(qa)))]
            text = f"{caption(shapes, 'full')} . {q} {a}"
        texts.append(text)
    return texts


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def train_lm(config: LMConfig | None = None, device: str | torch.device = "cpu", desc: str = "training the LM"):
    """Train the language model (next-word prediction); return ``(model, history, seconds)``."""
    from transformers import LlamaForCausalLM

    from .training import train

    config = config if config is not None else LMConfig()
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
    device = _device(device)
    torch.manual_seed(config.seed)
    tok = shapes_tokenizer()
    texts = corpus(config.n_texts, config.seed, config.world_seed)
    enc = tok(texts, padding="max_length", max_length=config.max_length, truncation=True, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    labels = ids.masked_fill(mask == 0, -100)
    model = LlamaForCausalLM(config.llama_config()).to(device)
    g = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()

    def loss_fn(step: int):
        idx = torch.randint(len(ids), (config.batch_size,), generator=g).to(device)
        width = int(mask[idx].sum(1).max())                  # no compute on columns of padding only
        return model(input_ids=ids[idx, :width], attention_mask=mask[idx, :width], labels=labels[idx, :width]).loss

    history = train(model, loss_fn, config.steps, lr=config.lr, weight_decay=config.weight_decay, desc=desc)
    return model.eval(), history, time.perf_counter() - start


@torch.no_grad()
def evaluate(model, n: int = 500, seed: int = 123, world_seed: int = 0) -> dict[str, float]:
    """Held-out text: the per-word perplexity, and the accuracy of greedy answers to described-scene questions.

    The scenes are drawn from ShapesWorld's ``test`` split (combinations seen in training, new scenes).
    """
    tok = shapes_tokenizer()
    rng = np.random.default_rng([seed, 5])
    data = ShapesWorld(max_shapes=3, seed=world_seed).sample(n, split="test", seed=seed, captions=None)
    texts = [describe(s, rng) for s in data.shapes]
    device = next(model.parameters()).device
    enc = tok(texts, padding=True, return_tensors="pt").to(device)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    loss = model(**enc, labels=labels).loss.item()
    prompts, answers = [], []
    for shapes in data.shapes:
        qa = questions(shapes, rng)
        q, a = qa[int(rng.integers(len(qa)))]
        prompts.append(f"{caption(shapes, 'full')} . {q}")
        answers.append(a)
    right = 0
    for p, a in zip(prompts, answers):
        ids = tok(p, return_tensors="pt")["input_ids"][:, :-1].to(device)      # without the final [EOS]
        logits = model(input_ids=ids).logits[0, -1]
        right += tok.convert_ids_to_tokens(int(logits.argmax())) == a.split()[0]   # its first word
    return {"perplexity": float(np.exp(loss)), "answer_accuracy": right / len(prompts)}


def weights_folder() -> Path:
    from importlib.resources import files

    return Path(str(files("vlmlib") / "weights")) / LM_NAME


def save_lm(model, config: LMConfig, metrics: dict, history: dict, folder: Path | str | None = None) -> Path:
    """``save_pretrained`` the model and the tokenizer into ``folder``, with ``record.json`` beside them."""
    folder = Path(folder) if folder is not None else weights_folder()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    shapes_tokenizer().save_pretrained(folder)
    weights = folder / "model.safetensors"
    record = {"config": config.to_dict(), "metrics": metrics, "history": history,
              "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (folder / "record.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return folder


_LOADED: dict[str, tuple] = {}


def load_lm(folder: Path | str | None = None, device: str | torch.device = "cpu"):
    """The shipped language model, frozen: ``(model, tokenizer, record)``.

    ``model`` is a ``transformers`` ``LlamaForCausalLM`` in eval mode with ``requires_grad`` off;
    ``tokenizer`` the ShapesWorld tokenizer it was saved with. Raises ``FileNotFoundError`` when the
    folder is missing and ``ValueError`` when its weights fail their checksum.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = Path(folder) if folder is not None else weights_folder()
    device = _device(device)
    memo = f"{folder.resolve()}@{device}"
    if memo in _LOADED:
        return _LOADED[memo]
    record_path, weights = folder / "record.json", folder / "model.safetensors"
    if not record_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no language model in {folder}: run `python -m tools.train_lm`")
    record = json.loads(record_path.read_text())
    if hashlib.sha256(weights.read_bytes()).hexdigest() != record["weights_sha256"]:
        raise ValueError(f"{weights} fails its checksum: run `python -m tools.train_lm` again")
    with quiet_loading():
        model = LlamaForCausalLM.from_pretrained(folder).to(device).eval()
    model.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(folder)
    _LOADED[memo] = (model, tok, record)
    return _LOADED[memo]


@torch.no_grad()
def token_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last layer's states (B, L, hidden), after the final norm: what a frozen LM gives a generator."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise ValueError(f"input_ids must be a (B, L) integer tensor, got {type(input_ids).__name__}")
    return model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def generate_text(model, prompts: Sequence[str], max_new_tokens: int = 4) -> list[str]:
    """Greedy continuations of text prompts (no [EOS] appended to the prompt), as strings."""
    tok = shapes_tokenizer()
    prompts = checks.text_list(prompts, "prompts")
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"][:, :-1].to(next(model.parameters()).device)
        gen = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out
