"""RT-2's idea at grid-world size: chapter 8's LLaVA fine-tuned to answer with action words (chapter 11).

RT-2 (Brohan et al., 2023) turns a vision-language model into a policy without a new output head:
the actions are written as text tokens and the model is fine-tuned to answer "what should the
robot do?" with them, "in the same way as natural language tokens". Here the vision-language model
is chapter 8's LLaVA (:func:`vlmlib.llava_training.load_llava`: chapter 2's frozen CLIP vision
tower taught crowded scenes, the projector and the small language model, trained on ShapesWorld
questions) and the world is chapter 11's grid (:mod:`vlmlib.gridworld`).

**Images.** The vision tower was trained on 32×32 images in 8-pixel patches (a 4×4 grid of
patches); a grid-world image is 50×50 with 10-pixel cells. Each image is shrunk to 40×40 (area
averaging), so each cell is exactly one 8-pixel patch, and the tower's 4×4 position embeddings are
interpolated (bicubic) to 5×5, as ViT does to fine-tune at a higher resolution (Dosovitskiy et al.,
2021, §3.2); the tower stays frozen (:func:`widen_tower`). In one run of linear probes (logistic
regression, 70% of the states to fit, 30% to score) the frozen 40-px grid features told the agent's
cell (25 classes) 99.5% right on 915 held-out states, and one cell's patch feature told the colour
of the shape in it 100% and its kind 99.5% right (1,565 held-out shapes); simply shrinking the image
to the tower's 32×32 (a patch then straddles cells) gave 92% for the agent's cell.

**Action tokens.** The grid world has five actions, up, down, left, right and stop, and they are
written as those words: the answer to ``<image> go to the red circle`` is ``up``. RT-2 needed
token ids for 256 bins per action dimension and took them from the vocabulary it had (PaLI-X's
number tokens; PaLM-E's 256 least used tokens, overwritten). Our word-level vocabulary has no spare
words to overwrite, and the instructions themselves use words it lacks (go, move, walk, next,
push, cell, that, up, down; :data:`NEW_WORDS`). So these words are **added** as new tokens after
the existing ones (:func:`rt2_tokenizer`; every old id is unchanged), the language model's
embedding table (tied to its output layer) gets one new row per word, started at the mean of the
trained rows plus a little noise, and the new rows train with the rest of the language model. Two
of the five actions, left and right, are old words; the words' ids are :func:`action_token_ids`.

**Fine-tuning** is chapter 8's stage 2 (:func:`vlmlib.llava.freeze_for_stage`): the projector and
the language model train, the vision tower does not. The loss is the language model's next-token
loss on the answer (the action word and its [EOS]), on the expert's demonstrations
(:func:`vlmlib.gridworld.demonstrations`) and, as in chapter 11's own policy, one round of DAgger:
states the policy visits, labelled by the expert (:class:`RT2Recipe`).

**Acting.** RT-2 samples only valid action tokens when it is asked for an action. Here
:func:`action_logits` reads the language model's next-token logits after "ASSISTANT:" at the five
action words only, and :func:`act` takes the largest (greedy constrained decoding, one forward
pass per step). :func:`policy_fn` makes a policy for :func:`vlmlib.gridworld.run_episodes` and
:func:`evaluate` measures success rates by running episodes.

**Does the pretrained VLM help?** :class:`RT2Recipe` ``pretrained=True`` starts from chapter 8's
model; ``pretrained=False`` keeps the same frozen vision tower but gives the projector and the
language model fresh random weights (the same architecture, no language or vision-language
pretraining), trained with the same recipe: RT-2's ablation of training from scratch, in miniature.
:func:`build_rt2` goes through the artifact cache, keyed by the recipe.

**What one run showed (2 Dec 2026, one shared CPU core; success by running 150 episodes per split,
tasks ``gridworld.tasks(150, split, 1000)``).** With the default recipe (1,000 tasks' 4,394 expert
steps, 700 steps of 32, then 300 DAgger tasks and 300 steps; about 13 minutes on a busy core) the
policy almost never succeeded: 1% on test and 3% on held-out pairs from chapter 8's weights, 1% and
0% from fresh weights. Trained on for 1,500 more steps (learning rate 10⁻³, another 300 DAgger
tasks; 2,500 steps in all) it reached 24% on test and 23% on held-out pairs from chapter 8's weights
against 13% and 9% from fresh ones (``push`` near 0% for both): the pretrained model learns faster,
RT-2's finding in miniature, but far below chapter 11's own policy (:mod:`vlmlib.vla`, 10,500 steps
of 64), and the training accuracy (81%) against 48% on test demonstrations says it needs more data.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import checks, gridworld
from .cache import Artifact, cached
from .gridworld import ACTIONS, FAMILIES, GRID, SPLITS
from .llava import IGNORE_INDEX, LlavaModel, apply_template, conversation, freeze_for_stage, llava_tokenizer
from .vit import ViT, ViTConfig

#: The side of the images the vision tower reads: one 8-pixel patch per grid cell.
TOWER_SIZE = 40
#: The grid-world words chapter 8's tokenizer lacks, in a fixed order; they become new tokens.
NEW_WORDS: tuple[str, ...] = tuple(w for w in dict.fromkeys(gridworld.vocabulary() + list(ACTIONS))
                                   if w not in llava_tokenizer().get_vocab())


# -- tokens ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def rt2_tokenizer():
    """Chapter 8's tokenizer (:func:`vlmlib.llava.llava_tokenizer`) with :data:`NEW_WORDS` added after
    its last id; every other id is unchanged. Shared: treat it as read-only."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from .tokenizer import IMAGE

    base = llava_tokenizer()
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for word in NEW_WORDS:
        vocab.setdefault(word, len(vocab))
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                  pad_token=base.pad_token, unk_token=base.unk_token, bos_token=base.bos_token,
                                  eos_token=base.eos_token, mask_token=base.mask_token,
                                  additional_special_tokens=[IMAGE], model_max_length=256)
    tok.chat_template = base.chat_template
    return tok


def action_token_ids() -> torch.Tensor:
    """The token ids (5,) of the action words, in the order of :data:`gridworld.ACTIONS`."""
    return torch.tensor(rt2_tokenizer().convert_tokens_to_ids(list(ACTIONS)), dtype=torch.long)


def tokens_to_actions(ids) -> list[str]:
    """The action names of action-token ids (a tensor or a list); any other id is refused."""
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    if isinstance(ids, (int, np.integer)) or not isinstance(ids, (list, tuple)):
        raise TypeError(f"ids must be a list or tensor of token ids, got {checks._given(ids)}")
    table = dict(zip(action_token_ids().tolist(), ACTIONS))
    bad = [i for i in ids if i not in table]
    if bad:
        raise ValueError(f"ids must be action tokens {table}, got {bad}")
    return [table[i] for i in ids]


# -- the model ---------------------------------------------------------------------------------------------
def widen_tower(vit: ViT, grid: int = GRID) -> ViT:
    """A copy of the frozen vision tower for ``grid``×``grid`` patches (images of grid × patch pixels):
    the same weights, the class token's position embedding kept and the patches' bicubically
    interpolated from the old grid to the new one (ViT's recipe for a higher resolution)."""
    if not isinstance(vit, ViT):
        raise TypeError(f"vit must be a vlmlib ViT, got {checks._given(vit)}")
    grid = checks.integer(grid, "grid", minimum=1)
    c = vit.config
    if vit.pos_embed is None:
        raise ValueError("the vision tower has no position embeddings to interpolate")
    old = c.image_size // c.patch_size
    wide = ViT(ViTConfig(**{**c.to_dict(), "image_size": grid * c.patch_size}))
    state = {k: v for k, v in vit.state_dict().items() if k != "pos_embed"}
    wide.load_state_dict(state, strict=False)
    pe = vit.pos_embed.detach()
    cells = pe[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    cells = F.interpolate(cells, size=(grid, grid), mode="bicubic", align_corners=False)
    with torch.no_grad():
        wide.pos_embed.copy_(torch.cat([pe[:, :1], cells.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1))
    return wide.eval().requires_grad_(False)


def prepare_images(images) -> torch.Tensor:
    """Grid-world images (N, 3, 50, 50) in [0, 1] (or uint8) shrunk to (N, 3, 40, 40) by area averaging."""
    images = checks.images(images, "images", shape=(3, gridworld.IMAGE_SIZE, gridworld.IMAGE_SIZE), from_uint8=True)
    if images.dtype == torch.uint8:
        images = images.float() / 255
    return F.interpolate(images.float(), size=(TOWER_SIZE, TOWER_SIZE), mode="area")


def build_model(pretrained: bool = True, seed: int = 0) -> LlavaModel:
    """Chapter 8's LLaVA made ready to act: the widened tower (:func:`widen_tower`) and the language
    model's vocabulary grown by :data:`NEW_WORDS`. ``pretrained=False`` keeps the tower but starts
    the projector and the language model from fresh random weights (same sizes)."""
    from transformers import LlamaForCausalLM

    from .llava_training import load_llava

    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {checks._given(pretrained)}")
    seed = checks.integer(seed, "seed", minimum=0)
    base, _ = load_llava()
    torch.manual_seed(seed)
    model = LlavaModel(widen_tower(base.vision_tower), base.language_model, base.image_token_id,
                       projector=base.projector.kind, feature_layer=base.feature_layer)
    if pretrained:
        model.projector.load_state_dict(base.projector.state_dict())
    else:
        model.language_model = LlamaForCausalLM(model.language_model.config)
    _grow_vocabulary(model, len(rt2_tokenizer()), len(llava_tokenizer()), seed)
    return model.eval()


def _grow_vocabulary(model: LlavaModel, size: int, first_new: int, seed: int) -> None:
    """Resize the LM's (tied) embedding table to ``size`` rows; rows from ``first_new`` on (the new
    words) start at the mean of the trained rows plus noise of their per-feature spread / 10."""
    lm = model.language_model
    lm.resize_token_embeddings(size, mean_resizing=False)
    lm.config.vocab_size = size
    table = lm.get_input_embeddings().weight
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        old = table[:first_new]
        noise = torch.randn(size - first_new, table.shape[1], generator=g) * old.std(0) / 10
        table[first_new:] = old.mean(0) + noise
    lm.tie_weights()


def _batch(instructions: Sequence[str], actions: Sequence[str] | None, n_patches: int) -> dict[str, torch.Tensor]:
    """The chat-template prompts: training rows (right-padded, labelled on the answer) when ``actions``
    are given, otherwise generation prompts ending with "ASSISTANT:" (left-padded)."""
    if actions is None:
        convs = [conversation(t) for t in instructions]
        return apply_template(convs, n_patches, rt2_tokenizer(), add_generation_prompt=True, padding_side="left")
    convs = [conversation(t, a) for t, a in zip(instructions, actions)]
    return apply_template(convs, n_patches, rt2_tokenizer())


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _check_model(model) -> LlavaModel:
    if not isinstance(model, LlavaModel) or model.language_model.config.vocab_size != len(rt2_tokenizer()):
        raise TypeError(f"model must be a LlavaModel with the action words (rt2.build_model or build_rt2), "
                        f"got {checks._given(model)}")
    return model


# -- acting ------------------------------------------------------------------------------------------------
@torch.no_grad()
def action_logits(model: LlavaModel, images, instructions: Sequence[str], full: bool = False) -> torch.Tensor:
    """The next-token logits after "ASSISTANT:" for grid-world images (N, 3, 50, 50) and their
    instructions: at the five action words only, (N, 5) in the order of :data:`gridworld.ACTIONS`,
    or over the whole vocabulary (N, vocab) with ``full=True``."""
    model = _check_model(model)
    instructions = checks.text_list(instructions, "instructions")
    images = prepare_images(images)
    if len(images) != len(instructions):
        raise ValueError(f"images and instructions must have the same length, got {len(images)} and {len(instructions)}")
    model.eval()
    device = next(model.projector.parameters()).device
    b = _batch(instructions, None, model.n_patches)
    ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
    logits = model(images.to(device), ids, mask, position_ids=_positions(mask)).logits[:, -1].float().cpu()
    return logits if full else logits[:, action_token_ids()]


def act(model: LlavaModel, images, instructions: Sequence[str]) -> torch.Tensor:
    """Constrained greedy decoding: the action indices (N,) whose words have the largest logits."""
    return action_logits(model, images, instructions).argmax(1)


def policy_fn(model: LlavaModel, batch_size: int = 256):
    """``model`` as a batched policy for :func:`gridworld.run_episodes` (``batch_size`` prompts per
    forward pass), or for one image and instruction for :func:`gridworld.run_episode`."""
    model = _check_model(model)
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)

    def policy(images, instructions):
        if isinstance(instructions, (str, np.str_)):
            return ACTIONS[int(act(model, images[None], [instructions])[0])]
        out = [act(model, images[i:i + batch_size], instructions[i:i + batch_size])
               for i in range(0, len(instructions), batch_size)]
        return [ACTIONS[int(a)] for a in torch.cat(out)]
    return policy


def evaluate(model: LlavaModel, n: int = 150, splits: Sequence[str] = ("test", "holdout_pairs"),
             seed: int = 1000) -> dict[str, dict[str, float]]:
    """Success rates by running episodes, as :func:`vlmlib.vla.evaluate`: for each split, ``n``
    tasks ``gridworld.tasks(n, split, seed)``; ``{split: {"all": ..., "goto": ..., ..., "n": n}}``."""
    model = _check_model(model)
    n = checks.integer(n, "n", minimum=1)
    seed = checks.integer(seed, "seed", minimum=0)
    splits = [checks.choice(s, "splits", SPLITS) for s in checks.text_list(
        [splits] if isinstance(splits, str) else list(splits), "splits")]
    out = {}
    for split in splits:
        episodes = gridworld.run_episodes(policy_fn(model), gridworld.tasks(n, split, seed))
        won = np.array([e.success for e in episodes], dtype=float)
        fam = np.array([e.task.family for e in episodes])
        out[split] = {"all": float(won.mean()), "n": n,
                      **{f: float(won[fam == f].mean()) for f in FAMILIES if (fam == f).any()}}
    return out


# -- training ----------------------------------------------------------------------------------------------
@dataclass
class RT2Recipe:
    """How the action model is fine-tuned (the cache key). ``pretrained``: start from chapter 8's
    model (True) or from fresh projector and LM weights (False). ``n_tasks`` training tasks give the
    expert's demonstrations, trained on for ``steps``; then ``dagger_tasks`` tasks run by the policy,
    labelled by the expert, and ``dagger_steps`` more steps on everything (0 tasks: no DAgger)."""

    pretrained: bool = True
    n_tasks: int = 1000
    steps: int = 700
    dagger_tasks: int = 300
    dagger_steps: int = 300
    batch_size: int = 32
    lr: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.pretrained, bool):
            raise TypeError(f"RT2Recipe.pretrained must be True or False, got {checks._given(self.pretrained)}")
        for name, low in (("n_tasks", 1), ("steps", 1), ("dagger_tasks", 0), ("dagger_steps", 1),
                          ("batch_size", 1), ("seed", 0)):
            setattr(self, name, checks.integer(getattr(self, name), f"RT2Recipe.{name}", minimum=low))
        self.lr = checks.number(self.lr, "RT2Recipe.lr", low=0.0, low_open=True)

    def to_dict(self) -> dict:
        return asdict(self)


def _data(images: torch.Tensor, texts: list[str], actions: list[str], n_patches: int) -> dict:
    b = _batch(texts, actions, n_patches)
    return {"images": (prepare_images(images) * 255).round().to(torch.uint8), **b}


def _cat(a: dict, b: dict) -> dict:
    out = {"images": torch.cat([a["images"], b["images"]])}
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    for k, fill in (("input_ids", rt2_tokenizer().pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        out[k] = torch.cat([F.pad(x[k], (0, width - x[k].shape[1]), value=fill) for x in (a, b)])
    return out


def dagger_states(model: LlavaModel, n_tasks: int, seed: int) -> tuple[torch.Tensor, list[str], list[str], float]:
    """DAgger's data: run the policy on ``gridworld.tasks(n_tasks, "train", seed)`` and label every
    state it visited (before its last) with the expert's action, where the task can still be done.
    Returns images, instructions, actions and the policy's success rate on these tasks."""
    episodes = gridworld.run_episodes(policy_fn(model), gridworld.tasks(n_tasks, "train", seed))
    states, seeds, texts, labels = [], [], [], []
    for e in episodes:
        for s in e.states[:-1]:
            a = gridworld.expert_action(s, e.task)
            if a is not None:
                states.append(s), seeds.append(e.task.seed), texts.append(e.task.instruction), labels.append(a)
    return gridworld.render_many(states, seeds), texts, labels, float(np.mean([e.success for e in episodes]))


def _fit(model: LlavaModel, data: dict, steps: int, recipe: RT2Recipe, g: torch.Generator, desc: str,
         history: dict) -> None:
    from .training import train

    freeze_for_stage(model, 2)
    device = next(model.projector.parameters()).device
    answer = action_token_ids().to(device)

    def loss_fn(step: int):
        i = torch.randint(len(data["images"]), (recipe.batch_size,), generator=g)
        mask = data["attention_mask"][i]
        width = int(mask.sum(1).max())
        ids, labels = data["input_ids"][i, :width].to(device), data["labels"][i, :width].to(device)
        out = model(data["images"][i].to(device).float() / 255, ids, mask[:, :width].to(device), labels=labels)
        with torch.no_grad():                 # how often the action word is the one the expert took
            at = (labels[:, 1:] != IGNORE_INDEX) & torch.isin(labels[:, 1:], answer)
            right = (out.logits[:, :-1][at][:, answer].argmax(-1) == (labels[:, 1:][at][:, None] == answer).int().argmax(-1))
        return out.loss, {"accuracy": right.float().mean()}

    params = [p for p in model.parameters() if p.requires_grad]
    h = train(model, loss_fn, steps, lr=recipe.lr, weight_decay=0.0, warmup=0.03, params=params, desc=desc)
    for k, v in h.items():
        history.setdefault(k, []).extend(v)


def train_rt2(recipe: RT2Recipe | None = None, progress: bool = True,
              device: str | torch.device = "cpu") -> tuple[LlavaModel, dict, dict]:
    """Fine-tune (see :class:`RT2Recipe`); returns the model (eval mode), its history (loss and
    action accuracy per step) and ``info``: the number of expert and DAgger examples, the policy's
    success on the DAgger tasks before it trained on them, and the seconds taken."""
    from .settings import _device

    recipe = recipe if recipe is not None else RT2Recipe()
    if not isinstance(recipe, RT2Recipe):
        raise TypeError(f"recipe must be an RT2Recipe, got {checks._given(recipe)}")
    start = time.perf_counter()
    model = build_model(recipe.pretrained, recipe.seed).to(_device(device))
    g = torch.Generator().manual_seed(recipe.seed)
    demos = gridworld.demonstrations(recipe.n_tasks, "train", recipe.seed)
    data = _data(demos.images, demos.instructions, [ACTIONS[int(a)] for a in demos.actions], model.n_patches)
    del demos
    info = {"expert_examples": len(data["images"])}
    history: dict[str, list[float]] = {}
    with contextlib.ExitStack() as quiet:
        if not progress:
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        _fit(model, data, recipe.steps, recipe, g, "RT-2 fine-tuning", history)
        if recipe.dagger_tasks:
            images, texts, labels, rate = dagger_states(model.eval(), recipe.dagger_tasks, recipe.seed + 10_000)
            info.update(dagger_examples=len(texts), dagger_success=rate)
            data = _cat(data, _data(images, texts, labels, model.n_patches))
            _fit(model, data, recipe.dagger_steps, recipe, g, "RT-2 DAgger", history)
    info["train_seconds"] = time.perf_counter() - start
    return model.eval(), history, info


#: Bumped when the world, the data or the model's construction change: cached models are retrained.
_VERSION = 1


def build_rt2(recipe: RT2Recipe | None = None, verbose: bool = True, eval_n: int = 150,
              device: str | torch.device = "cpu") -> tuple[LlavaModel, Artifact]:
    """The fine-tuned model for ``recipe``: from the artifact cache, or trained now (then
    ``artifact.metrics`` holds ``info`` of :func:`train_rt2` and :func:`evaluate`'s success rates on
    ``eval_n`` episodes of the test and holdout_pairs splits, e.g. ``"test_all"``)."""
    from .settings import _device

    recipe = recipe if recipe is not None else RT2Recipe()
    if not isinstance(recipe, RT2Recipe):
        raise TypeError(f"recipe must be an RT2Recipe, got {checks._given(recipe)}")
    eval_n = checks.integer(eval_n, "eval_n", minimum=1)
    key = {"recipe": recipe.to_dict(), "version": _VERSION, "eval_n": eval_n}

    def build() -> Artifact:
        model, history, info = train_rt2(recipe, progress=verbose, device=device)
        metrics = dict(info)
        for split, rates in evaluate(model, eval_n).items():
            metrics.update({f"{split}_{k}": v for k, v in rates.items() if k != "n"})
        return Artifact("rt2", key, {k: v.cpu() for k, v in model.state_dict().items()}, metrics, history)

    art = cached("rt2", key, build, verbose=verbose)
    model = build_model(recipe.pretrained, recipe.seed)
    model.load_state_dict(art.state_dict)
    return model.eval().to(_device(device)), art
