"""A small code model: from a ShapesWorld description to a program in the drawing API of
:mod:`vlmlib.programs`.

Introduced in chapter 10. The model is a ``transformers`` ``LlamaForCausalLM`` at a tiny
configuration. It reads one sequence::

    [BOS] a small red circle at the top left [SEP] scene.add("circle", colour="red", ...)\\n [EOS]

and learns to predict the program's tokens only: the loss is masked (label -100) on the
description and the separator, so the model is a conditional generator of programs, as code
models are trained on (docstring, code) pairs. Programs are written with ``generate()`` (greedy or
sampled, a KV cache, many descriptions in one batch) and judged **by execution**: each is run by
:func:`vlmlib.programs.run` and what it drew is checked against what the description asked for.

:class:`CodeTokenizer` is word-level on both sides. A description is split at spaces into
ShapesWorld's words. A program is split by longest match over a fixed list of pieces of the
drawing API (``scene.add(``, ``"circle"``, ``, colour=``, ``cell=(``, ``for row in range(``, a
newline, an indent, ...), with every printable ASCII character as a fallback piece, so **any**
ASCII program is encoded and decoded back to exactly the same text.

Two ways to get a model: :func:`build_codegen` trains one through the artifact cache
(``build_codegen(SMALL_CONFIG, SMALL_RECIPE)`` takes about a minute on one CPU core), and
:func:`load_shipped` loads the shipped one (the default :class:`CodeGenConfig` and
:class:`CodeGenRecipe`, made by ``python -m tools.train_codegen``; its measured results are in
its ``record.json``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import checks
from .settings import quiet_loading
from .cache import Artifact, cached
from .shapesworld import COLOUR_NAMES, KINDS, SIZES, vocabulary

PAD, UNK, BOS, SEP, EOS = "[PAD]", "[UNK]", "[BOS]", "[SEP]", "[EOS]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, SEP, EOS)
#: Words of descriptions beyond ShapesWorld's captions: the plural kinds, rows and columns of "line" prompts.
EXTRA_WORDS: tuple[str, ...] = tuple(k + ("es" if k.endswith("s") else "s") for k in KINDS) + (
    "row", "column", "middle")
#: Pieces of the drawing API that are one token each (longest match first; any other character is its own token).
PROGRAM_PIECES: tuple[str, ...] = (
    ("scene.add(", ", colour=", ", size=", ", cell=(", ", ", "))", "):", "\n", "    ",
     "for ", " in range(", "row", "col")
    + tuple(f'"{w}"' for w in KINDS + COLOUR_NAMES + SIZES)
)
#: The fallback pieces: one per printable ASCII character (space included) and the tab.
ASCII = tuple(chr(c) for c in range(32, 127)) + ("\t",)
#: Bumped whenever training or the data's encoding changes what a cached model holds.
CACHE_VERSION = 1
#: The folder (inside ``vlmlib/weights``) of the shipped model.
SHIPPED_NAME = "codegen-shapes"


class CodeTokenizer:
    """Word-level ids for descriptions and programs (one vocabulary, fixed order).

    ``encode(description, program)`` gives the training sequence and which of its positions are
    program (the loss is taken there); ``prompt_ids(description)`` the prefix that generation
    starts from; ``decode_program(ids)`` the text of generated program ids (up to ``[EOS]``).
    """

    def __init__(self, words: Sequence[str] | None = None, pieces: Sequence[str] | None = None):
        words = list(dict.fromkeys(vocabulary() + list(EXTRA_WORDS))) if words is None else list(words)
        pieces = list(dict.fromkeys(list(PROGRAM_PIECES) + list(ASCII))) if pieces is None else list(pieces)
        self.words, self.pieces = words, pieces
        self.tokens = list(SPECIAL_TOKENS) + [f"w:{w}" for w in words] + [f"p:{p}" for p in pieces]
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("the tokenizer's words and pieces must be distinct")
        self._word_id = {w: len(SPECIAL_TOKENS) + i for i, w in enumerate(words)}
        self._piece_id = {p: len(SPECIAL_TOKENS) + len(words) + i for i, p in enumerate(pieces)}
        self._id_piece = {i: p for p, i in self._piece_id.items()}
        self._id_word = {i: w for w, i in self._word_id.items()}
        # longest first, so "scene.add(" wins over "s"; every ASCII character is a piece, so nothing is skipped
        self._split = re.compile("|".join(re.escape(p) for p in sorted(pieces, key=len, reverse=True)), re.S)
        self.pad_id, self.unk_id, self.bos_id, self.sep_id, self.eos_id = range(len(SPECIAL_TOKENS))

    def __len__(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        return {"words": self.words, "pieces": self.pieces}

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict()).encode()).hexdigest()

    def description_ids(self, text: str) -> list[int]:
        """A description's word ids (split at spaces; an unknown word is ``[UNK]``)."""
        if not isinstance(text, str):
            raise TypeError(f"a description must be a string, got {checks._given(text)}")
        return [self._word_id.get(w, self.unk_id) for w in text.split()]

    def program_ids(self, program: str) -> list[int]:
        """A program's piece ids; ``decode_program`` gives back exactly the same text."""
        if not isinstance(program, str):
            raise TypeError(f"a program must be a string, got {checks._given(program)}")
        pieces, at = [], 0
        for m in self._split.finditer(program):
            if m.start() != at:
                break
            pieces.append(m.group())
            at = m.end()
        if at != len(program):
            raise ValueError(f"a program must be printable ASCII text (with newlines and tabs); character {at} is "
                             f"{program[at]!r}")
        return [self._piece_id[p] for p in pieces]

    def decode_program(self, ids: Sequence[int]) -> str:
        """The text of program ids, up to the first ``[EOS]`` (other special or word ids are skipped)."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            out.append(self._id_piece.get(i, ""))
        return "".join(out)

    def decode_description(self, ids: Sequence[int]) -> str:
        return " ".join(self._id_word.get(int(i), UNK) for i in ids if int(i) not in (self.bos_id, self.sep_id,
                                                                                        self.pad_id, self.eos_id))

    def prompt_ids(self, description: str) -> list[int]:
        """``[BOS] description [SEP]``: what the model reads before it writes."""
        return [self.bos_id] + self.description_ids(description) + [self.sep_id]

    def encode(self, description: str, program: str) -> tuple[list[int], list[bool]]:
        """``[BOS] description [SEP] program [EOS]`` and, per position, whether it is a target
        (the program's tokens and ``[EOS]``: what the loss is taken on)."""
        prompt, prog = self.prompt_ids(description), self.program_ids(program) + [self.eos_id]
        return prompt + prog, [False] * len(prompt) + [True] * len(prog)

    def batch(self, descriptions: Sequence[str], programs: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 except on program targets)."""
        descriptions = checks.text_list(descriptions, "descriptions")
        programs = checks.text_list(programs, "programs", length=len(descriptions))
        seqs = [self.encode(d, p) for d, p in zip(descriptions, programs)]
        width = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, target) in enumerate(seqs):
            t = torch.tensor(s)
            ids[i, :len(s)], mask[i, :len(s)] = t, 1
            labels[i, :len(s)] = torch.where(torch.tensor(target), t, torch.tensor(-100))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def code_tokenizer() -> CodeTokenizer:
    """The course's code tokenizer (fixed ids)."""
    return CodeTokenizer()


# -- the model and its recipe -----------------------------------------------------------------------
@dataclass
class CodeGenConfig:
    """The code model's size (a ``LlamaForCausalLM``)."""

    hidden_size: int = 96
    layers: int = 3
    heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 192

    def __post_init__(self):
        for name in ("hidden_size", "layers", "heads", "intermediate_size", "max_positions"):
            setattr(self, name, checks.integer(getattr(self, name), f"CodeGenConfig.{name}", minimum=1))
        if self.hidden_size % self.heads or (self.hidden_size // self.heads) % 2:
            raise ValueError(f"CodeGenConfig.hidden_size ({self.hidden_size}) must be heads ({self.heads}) "
                             "times an even head size (rotary position embeddings)")

    def to_dict(self) -> dict:
        return asdict(self)

    def llama_config(self, tokenizer: CodeTokenizer):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=self.hidden_size,
                           intermediate_size=self.intermediate_size, num_hidden_layers=self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.heads,
                           max_position_embeddings=self.max_positions, bos_token_id=tokenizer.bos_id,
                           eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, tie_word_embeddings=True)


@dataclass
class CodeGenRecipe:
    """How the code model is trained: ``n_train`` (description, program) pairs of the ``train`` split."""

    steps: int = 2500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    n_train: int = 20_000
    seed: int = 0
    data_seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "n_train"):
            setattr(self, name, checks.integer(getattr(self, name), f"CodeGenRecipe.{name}", minimum=1))
        for name in ("seed", "data_seed"):
            setattr(self, name, checks.integer(getattr(self, name), f"CodeGenRecipe.{name}", minimum=0))
        self.lr = checks.number(self.lr, "CodeGenRecipe.lr", low=0.0, low_open=True)
        self.weight_decay = checks.number(self.weight_decay, "CodeGenRecipe.weight_decay", low=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


#: A smaller model and a shorter recipe that a chapter notebook can train through the cache (:func:`build_codegen`):
#: 94k parameters, 700 steps, about a minute on one busy CPU core. One run scored greedy pass@1 100% on
#: 300 test and 300 holdout problems (550 steps: 94%); the shipped model is the default config and recipe.
SMALL_CONFIG = CodeGenConfig(hidden_size=64, layers=2, heads=4, intermediate_size=128)
SMALL_RECIPE = CodeGenRecipe(steps=700, lr=5e-3, n_train=10_000)


def new_model(config: CodeGenConfig, tokenizer: CodeTokenizer | None = None):
    """An untrained ``LlamaForCausalLM`` of ``config`` for ``tokenizer``'s ids."""
    from transformers import LlamaForCausalLM

    if not isinstance(config, CodeGenConfig):
        raise TypeError(f"config must be a CodeGenConfig, got {type(config).__name__}")
    tokenizer = tokenizer if tokenizer is not None else code_tokenizer()
    return LlamaForCausalLM(config.llama_config(tokenizer))


def _pairs(n: int, split: str, seed: int) -> tuple[list[str], list[str]]:
    from . import programs

    data = programs.dataset(n, split, seed)
    return [e.description for e in data], [e.program for e in data]


def fit(model, tokenizer: CodeTokenizer, descriptions: Sequence[str], programs: Sequence[str], steps: int,
        batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.01, seed: int = 0,
        desc: str = "training the code model") -> dict[str, list[float]]:
    """Train ``model`` on (description, program) pairs, the loss on program tokens only; return the history."""
    from .training import train

    enc = tokenizer.batch(descriptions, programs)
    ids, mask, labels = enc["input_ids"], enc["attention_mask"], enc["labels"]
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)

    def loss_fn(step: int):
        idx = torch.randint(len(ids), (batch_size,), generator=g)
        width = int(mask[idx].sum(1).max())                  # no compute on columns of padding only
        return model(input_ids=ids[idx, :width].to(device), attention_mask=mask[idx, :width].to(device),
                     labels=labels[idx, :width].to(device)).loss

    return train(model, loss_fn, checks.integer(steps, "steps", minimum=1), lr=float(lr),
                 weight_decay=float(weight_decay), desc=desc)


def train_codegen(config: CodeGenConfig | None = None, recipe: CodeGenRecipe | None = None,
                  device: str | torch.device = "cpu", desc: str = "training the code model"):
    """Train the code model on ``programs.dataset(recipe.n_train, "train", recipe.data_seed)``;
    return ``(model, history, seconds)``."""
    config = config if config is not None else CodeGenConfig()
    recipe = recipe if recipe is not None else CodeGenRecipe()
    if not isinstance(recipe, CodeGenRecipe):
        raise TypeError(f"recipe must be a CodeGenRecipe, got {type(recipe).__name__}")
    tok = code_tokenizer()
    torch.manual_seed(recipe.seed)
    model = new_model(config, tok).to(torch.device(device))
    descriptions, programs = _pairs(recipe.n_train, "train", recipe.data_seed)
    start = time.perf_counter()
    history = fit(model, tok, descriptions, programs, recipe.steps, recipe.batch_size, recipe.lr,
                  recipe.weight_decay, recipe.seed, desc)
    return model.eval(), history, time.perf_counter() - start


def _data_sha(recipe: CodeGenRecipe) -> str:
    """A checksum of the first training pairs: a change to the programs' language retrains."""
    d, p = _pairs(min(recipe.n_train, 64), "train", recipe.data_seed)
    return hashlib.sha256(json.dumps([d, p]).encode()).hexdigest()[:16]


def build_codegen(config: CodeGenConfig | None = None, recipe: CodeGenRecipe | None = None,
                  device: str | torch.device = "cpu", verbose: bool = True):
    """The trained code model for ``config`` and ``recipe``: from the artifact cache, or trained now
    and stored. Keyed by both, the tokenizer, a checksum of the training data and the device type.
    Returns ``(model in eval mode, tokenizer, artifact)``; the artifact's metrics hold
    ``train_seconds`` and ``parameters``, its history the loss."""
    config = config if config is not None else CodeGenConfig()
    recipe = recipe if recipe is not None else CodeGenRecipe()
    if not isinstance(config, CodeGenConfig) or not isinstance(recipe, CodeGenRecipe):
        raise TypeError("build_codegen needs a CodeGenConfig and a CodeGenRecipe")
    device = torch.device(device)
    tok = code_tokenizer()
    key = {"model": config.to_dict(), "recipe": recipe.to_dict(), "tokenizer": tok.sha256()[:16],
           "data": _data_sha(recipe), "device": device.type, "version": CACHE_VERSION}

    def build() -> Artifact:
        model, history, seconds = train_codegen(config, recipe, device)
        metrics = {"train_seconds": seconds, "parameters": sum(p.numel() for p in model.parameters())}
        return Artifact("codegen", key, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        metrics, {"loss": history["loss"]})

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        art = cached("codegen", key, build, verbose=verbose)
    model = new_model(config, tok)
    model.load_state_dict(art.state_dict)
    return model.to(device).eval(), tok, art


# -- writing programs -------------------------------------------------------------------------------
@torch.no_grad()
def write_programs(model, tokenizer: CodeTokenizer, descriptions: Sequence[str], temperature: float = 0.0,
                   n: int = 1, seed: int = 0, max_new_tokens: int = 96, batch_size: int = 256) -> list[list[str]]:
    """``n`` programs per description: ``out[i]`` is the list written for ``descriptions[i]``.

    ``temperature=0`` is greedy decoding (then ``n`` must be 1); above 0, ``n`` samples from the model's
    distribution at that temperature (no top-k or top-p cut), drawn from ``seed``: the same arguments
    give the same programs. Uses ``transformers``' ``generate()`` with its KV cache, ``batch_size``
    descriptions at a time (left-padded).
    """
    if not isinstance(tokenizer, CodeTokenizer):
        raise TypeError(f"tokenizer must be a CodeTokenizer (codegen.code_tokenizer()), got {type(tokenizer).__name__}")
    descriptions = checks.text_list(descriptions, "descriptions")
    temperature = checks.number(temperature, "temperature", low=0.0)
    n = checks.integer(n, "n", minimum=1)
    seed = checks.integer(seed, "seed", minimum=0)
    max_new_tokens = checks.integer(max_new_tokens, "max_new_tokens", minimum=1)
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    if temperature == 0 and n > 1:
        raise ValueError(f"n must be 1 for greedy decoding (temperature=0): every copy would be the same; got n={n}")
    device = next(model.parameters()).device
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
        else {"do_sample": False}
    out: list[list[str]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(descriptions), batch_size):
            prompts = [tokenizer.prompt_ids(d) for d in descriptions[start:start + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(prompts):          # left padding: every prompt ends where writing begins
                ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, num_return_sequences=n,
                                 eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, **sampling)
            texts = [tokenizer.decode_program(row) for row in gen[:, width:].tolist()]
            out += [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
    return out


# -- judging by execution ---------------------------------------------------------------------------
def check_programs(examples: Sequence, written: Sequence[str], seed: int = 0) -> list[tuple[bool, str]]:
    """Run each written program (:func:`vlmlib.programs.passes`) and check what it drew against its
    example's spec: per program ``(ok, reason)``; ``reason`` says why a program failed ("" when it passed)."""
    from . import programs

    examples, written = list(examples), checks.text_list(written, "written")
    if len(written) != len(examples):
        raise ValueError(f"written must hold one program per example ({len(examples)}), got {len(written)}")
    bad = [i for i, e in enumerate(examples) if not isinstance(e, programs.Example)]
    if bad:
        raise TypeError(f"examples must be programs.Example objects; item {bad[0]} is {checks._given(examples[bad[0]])}")
    seed = checks.integer(seed, "seed", minimum=0)
    out = []
    for i, (e, src) in enumerate(zip(examples, written)):
        r = programs.passes(src, e.spec, seed + i)
        out.append((r.ok, r.reason))
    return out


def _rates(examples: Sequence, ok: Sequence[bool]) -> dict[str, float]:
    """The pass rate per family and over all examples."""
    from .programs import FAMILIES

    out = {f: float(np.mean([o for e, o in zip(examples, ok) if e.family == f]))
           for f in FAMILIES if any(e.family == f for e in examples)}
    out["all"] = float(np.mean(ok))
    return out


SPLITS = ("test", "holdout")


def evaluate(model, tokenizer: CodeTokenizer, n: int = 300, splits: Sequence[str] = SPLITS, seed: int = 1000,
             batch_size: int = 256) -> dict:
    """pass@1 of greedy programs, judged by execution, on ``n`` problems of each split
    (``programs.dataset(n, split, seed)``): ``{split: {"scene", "relation", "line", "all": rate}}``.
    ``"test"`` holds compositions seen in training, ``"holdout"`` always names a held-out colour–kind pair."""
    from . import programs

    n = checks.integer(n, "n", minimum=1)
    if isinstance(splits, str):
        splits = (splits,)
    splits = [checks.choice(s, "splits", SPLITS) for s in splits]
    out = {}
    for split in splits:
        data = programs.dataset(n, split, seed)
        written = [w[0] for w in write_programs(model, tokenizer, [e.description for e in data],
                                                batch_size=batch_size)]
        out[split] = _rates(data, [ok for ok, _ in check_programs(data, written)])
    return out


def pass_at_k_curve(model, tokenizer: CodeTokenizer, temperatures: Sequence[float] = (0.2, 0.5, 0.8, 1.0, 1.3),
                    n_samples: int = 10, ks: Sequence[int] = (1, 5, 10), n: int = 100, split: str = "holdout",
                    seed: int = 2000, batch_size: int = 256) -> dict:
    """pass@k against the sampling temperature: ``n_samples`` programs per problem at each temperature,
    each judged by execution, and the unbiased estimator :func:`vlmlib.programs.pass_at_k` averaged over
    ``n`` problems of ``split``. Returns ``{temperature: {k: pass@k}}``."""
    from . import programs

    if isinstance(temperatures, (int, float)) or not isinstance(temperatures, (list, tuple)) or not temperatures:
        raise TypeError(f"temperatures must be a non-empty list of numbers, got {checks._given(temperatures)}")
    temperatures = [checks.number(t, f"temperatures[{i}]", low=0.0, low_open=True) for i, t in enumerate(temperatures)]
    n_samples = checks.integer(n_samples, "n_samples", minimum=1)
    if isinstance(ks, (int, np.integer)) or not isinstance(ks, (list, tuple)) or not ks:
        raise TypeError(f"ks must be a non-empty list of integers such as (1, 5), got {checks._given(ks)}")
    ks = [checks.integer(k, f"ks[{i}]", minimum=1, maximum=n_samples) for i, k in enumerate(ks)]
    split = checks.choice(split, "split", SPLITS)
    data = programs.dataset(checks.integer(n, "n", minimum=1), split, seed)
    out = {}
    for j, t in enumerate(temperatures):
        written = write_programs(model, tokenizer, [e.description for e in data], temperature=t, n=n_samples,
                                 seed=seed + j, batch_size=batch_size)
        flat = [e for e in data for _ in range(n_samples)]
        ok = [r for r, _ in check_programs(flat, [p for w in written for p in w])]
        correct = [ok[i * n_samples:(i + 1) * n_samples] for i in range(len(data))]
        out[t] = programs.pass_at_k_table(correct, ks)
    return out


# -- code against pixels ----------------------------------------------------------------------------
def comparison_prompts(n: int, seed: int = 3000) -> dict[str, list]:
    """The prompts of :func:`code_vs_pixels`, all naming a held-out colour–kind pair: ``"relation"``,
    two shapes in a relation ("a purple triangle above a red circle"), and ``"one_shape"``, one shape
    with its size and place ("a small yellow circle at the top right"): ``n`` ``programs.Example`` each."""
    from . import programs

    n = checks.integer(n, "n", minimum=1)
    out: dict[str, list] = {"relation": [], "one_shape": []}
    size = 10 * n
    while min(len(v) for v in out.values()) < n:
        out = {"relation": [], "one_shape": []}
        for e in programs.dataset(size, "holdout", seed):
            if e.family == "relation":
                out["relation"].append(e)
            elif e.family == "scene" and len(e.spec["scene"]) == 1:
                out["one_shape"].append(e)
        size *= 2
    return {k: v[:n] for k, v in out.items()}


def _pixel_spec(example, with_size: bool) -> dict:
    """What the judge checks in the pixels: chapter 6's specs (one shape: colour, kind and place, and
    the size when ``with_size``; two shapes: both pairs and the relation)."""
    if "scene" in example.spec:
        s = example.spec["scene"][0]
        return {k: s[k] for k in ("colour", "kind", "position") + (("size",) if with_size else ())}
    return example.spec


def _one_shape_faithfulness(pipeline: str) -> float:
    """The faithfulness to one-shape prompts of seen pairs that a shipped pipeline's record holds (at its best w)."""
    from . import text2image as T

    m = json.loads((T.shipped_folder(pipeline) / "record.json").read_text())["metrics"]
    return m["sweep"][f"{m['best_guidance']:g}"]["one_seen"]["faithful"]


def code_vs_pixels(n: int = 48, seed: int = 0, model=None, tokenizer: CodeTokenizer | None = None,
                   pipeline: str | None = None, guidance: float | None = None, steps: int = 20) -> dict:
    """The same held-out prompts two ways, read by the same scene judge with the same spec check
    (:func:`vlmlib.programs.judge_pixels`):

    - ``"code"``: the code model writes a program (greedy), the interpreter draws it, the judge reads
      the image (a program that fails to run counts as wrong);
    - ``"pixels"``: chapter 6's shipped text-to-image ``pipeline`` generates the image directly
      (``None``: the shipped pipeline whose record scores best on one-shape prompts, as chapter 6
      picks it; ``guidance`` defaults to the best w of its record; ``steps`` DDIM steps; images
      through the artifact cache, drawn from ``seed``).

    For ``n`` prompts of each family of :func:`comparison_prompts`. Returns per family
    (``"relation"``, ``"one_shape"`` judged on colour, kind and place as chapter 6's bars,
    ``"one_shape_with_size"``) ``{"code": rate, "pixels": rate}``, ``"code_by_execution"`` (the
    programs' ground truth, not the judge), the settings and ``"seconds"`` (writing and drawing the
    programs; sampling the pixels, as measured when they were first drawn)."""
    from . import programs
    from . import text2image as T

    n, seed = checks.integer(n, "n", minimum=1), checks.integer(seed, "seed", minimum=0)
    if model is None:
        model, tokenizer, _ = load_shipped()
    elif not isinstance(tokenizer, CodeTokenizer):
        raise TypeError("tokenizer must be the model's CodeTokenizer when a model is given")
    if pipeline is None:
        pipeline = max(("t2i-clip", "t2i-lm"), key=_one_shape_faithfulness)
    pipe = T.TextToImagePipeline.from_pretrained(T.shipped_folder(pipeline))
    w = pipe.record["metrics"]["best_guidance"] if guidance is None else checks.number(guidance, "guidance", low=0.0)
    sets = comparison_prompts(n, seed=3000 + seed)
    out: dict = {"n": n, "pipeline": pipeline, "guidance": float(w), "steps": steps, "seconds": {}}
    start = time.perf_counter()
    drawn = {}
    for family, data in sets.items():
        written = [p[0] for p in write_programs(model, tokenizer, [e.description for e in data])]
        runs = [programs.run(src, seed + i) for i, src in enumerate(written)]
        drawn[family] = (runs, data)
    out["seconds"]["code"] = time.perf_counter() - start
    sampled = {}
    pixel_seconds = 0.0
    for family, data in sets.items():
        got = T.generate_cached(pipe.unet, pipe.text_encoder, [e.description for e in data], guidance=w,
                                steps=steps, seed=seed, show_progress=False, verbose=False)
        sampled[family], pixel_seconds = got["images"], pixel_seconds + got["seconds"]
    out["seconds"]["pixels"] = pixel_seconds
    rows = (("relation", "relation", False), ("one_shape", "one_shape", False), ("one_shape_with_size", "one_shape", True))
    for row, family, with_size in rows:
        runs, data = drawn[family]
        specs = [_pixel_spec(e, with_size) for e in data]
        ran = [i for i, r in enumerate(runs) if r.ok]
        code_ok = [False] * len(data)
        if ran:
            for i, (ok, _) in zip(ran, programs.judge_pixels(torch.stack([runs[i].image for i in ran]),
                                                              [specs[i] for i in ran])):
                code_ok[i] = ok
        pixel_ok = [ok for ok, _ in programs.judge_pixels(sampled[family], specs)]
        out[row] = {"code": float(np.mean(code_ok)), "pixels": float(np.mean(pixel_ok))}
    out["code_by_execution"] = {
        family: float(np.mean([r.ok and programs.check_scene(r.shapes, e.spec)[0] for r, e in zip(*drawn[family])]))
        for family in sets}
    return out


# -- the shipped model ------------------------------------------------------------------------------
def weights_folder() -> Path:
    from importlib.resources import files

    return Path(str(files("vlmlib") / "weights")) / SHIPPED_NAME


def save_shipped(model, config: CodeGenConfig, recipe: CodeGenRecipe, metrics: dict, history: dict,
                 stored_checks: Sequence[tuple[str, str]], folder: Path | str | None = None) -> Path:
    """``save_pretrained`` the model into ``folder`` with ``tokenizer.json`` (the vocabulary) and
    ``record.json`` (config, recipe, measured metrics, the loss history, a few stored checks
    (description, program written) and every file's SHA-256)."""
    folder = Path(folder) if folder is not None else weights_folder()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(code_tokenizer().to_dict(), indent=1))
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
             if p.is_file() and p.name != "record.json"}
    record = {"config": config.to_dict(), "recipe": recipe.to_dict(), "metrics": metrics, "history": history,
              "checks": [list(c) for c in stored_checks], "files": files}
    (folder / "record.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return folder


_LOADED: dict[str, tuple] = {}


def load_shipped(folder: Path | str | None = None, device: str | torch.device = "cpu"):
    """The shipped code model (``vlmlib/weights/codegen-shapes``, made by ``python -m tools.train_codegen``):
    ``(model, tokenizer, record)``, the model frozen in eval mode. Raises ``FileNotFoundError`` when the
    folder is missing and ``ValueError`` when a file fails its checksum."""
    from transformers import LlamaForCausalLM

    folder = Path(folder) if folder is not None else weights_folder()
    device = torch.device(device)
    memo = f"{folder.resolve()}@{device}"
    if memo in _LOADED:
        return _LOADED[memo]
    if not (folder / "record.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"no code model in {folder}: run `python -m tools.train_codegen`")
    record = json.loads((folder / "record.json").read_text())
    for name, sha in record["files"].items():
        if not (folder / name).is_file() or hashlib.sha256((folder / name).read_bytes()).hexdigest() != sha:
            raise ValueError(f"{folder / name} is missing or fails its checksum: run `python -m tools.train_codegen` again")
    tok = CodeTokenizer(**json.loads((folder / "tokenizer.json").read_text()))
    with quiet_loading():
        model = LlamaForCausalLM.from_pretrained(folder).to(device).eval()
    model.requires_grad_(False)
    _LOADED[memo] = (model, tok, record)
    return _LOADED[memo]
