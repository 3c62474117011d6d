"""Chapter 2's CLIP taught crowded scenes: the vision tower of chapter 8's LLaVA.

Chapter 2 trained its CLIP on images of **one** shape. Chapter 8 found that in a scene of two or three
shapes the grid feature under a shape still holds its colour but only part of its kind, and that no
training on the language side makes up for it. This module continues chapter 2's training on
scenes of one to three shapes, with chapter 2's cure for kind carried over to scenes:

- **twin hard negatives.** Each training scene comes with a *twin*: the same scene, drawn from the
  same seed (background, tints and noise identical), in which one shape has another kind (never a
  held-out colour–kind pair). Both go into the same batch, so CLIP can only tell them apart, and
  match each to its caption, by the kind of that one shape (:func:`twin`, :class:`ScenePairs`);
- **captions of scenes** that name every shape ("a red circle and a blue square"), or one shape
  (most often the changed one, always with its kind), worded as chapter 2's captions are;
- **grey copies** (a share ``p_grey`` of the pairs, both twins) with captions that name no colour.

:func:`load_scene_clip` gives the fine-tuned model through the artifact cache (about three minutes
on two CPU cores the first time). :func:`shape_token_probe` measures what the tower's grid
features hold: a linear probe of each shape's own token (the patch under its centre), by how many
shapes share the scene.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import checks
from .cache import Artifact, cached
from .clip import CLIP, _full_caption, clip_loss, grey_copies, load_clip, partial_caption, tokenize
from .shapesworld import COLOUR_NAMES, KINDS, Shape, ShapesWorld, draw

NAME = "clip-scenes"


@dataclass
class SceneRecipe:
    """How chapter 2's CLIP is taught scenes (with the base model's key, the cache key)."""

    steps: int = 2000
    batch_size: int = 128                 # half scenes, half their twins
    lr: float = 1e-3
    weight_decay: float = 0.05
    n_train: int = 20_000                 # training scenes (each with its twin)
    max_shapes: int = 3
    p_grey: float = 0.7                   # pairs shown in grey, with captions that name no colour
    p_changed: float = 0.4                # captions of the changed shape; p_one: of any one shape;
    p_one: float = 0.15                   # the rest name every shape of the scene
    world_seed: int = 0
    seed: int = 0

    def __post_init__(self):
        for name, minimum in (("steps", 1), ("batch_size", 2), ("n_train", 1), ("world_seed", 0), ("seed", 0)):
            setattr(self, name, checks.integer(getattr(self, name), f"SceneRecipe.{name}", minimum=minimum))
        if self.batch_size % 2:
            raise ValueError(f"SceneRecipe.batch_size must be even (scenes and their twins), got {self.batch_size}")
        self.max_shapes = checks.integer(self.max_shapes, "SceneRecipe.max_shapes", minimum=2, maximum=4)
        for name in ("lr", "weight_decay", "p_grey", "p_changed", "p_one"):
            value = checks.number(getattr(self, name), f"SceneRecipe.{name}", low=0.0)
            setattr(self, name, float(value) if isinstance(value, (np.generic, torch.Tensor)) else value)
        checks.number(self.lr, "SceneRecipe.lr", low=0.0, low_open=True)
        for name in ("p_grey", "p_changed", "p_one"):
            checks.probability(getattr(self, name), f"SceneRecipe.{name}")
        if self.p_changed + self.p_one > 1:
            raise ValueError(f"SceneRecipe.p_changed + p_one must be at most 1, got {self.p_changed} + {self.p_one}")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_scene(scene, name: str = "scene") -> list[Shape]:
    if isinstance(scene, Shape) or not isinstance(scene, (list, tuple)) or not scene \
            or not all(isinstance(s, Shape) for s in scene):
        raise TypeError(f"{name} must be a non-empty list of ShapesWorld Shapes (data.shapes[i]), "
                        f"got {checks._given(scene)}")
    return list(scene)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def twin(scene, world: ShapesWorld, rng: np.random.Generator) -> tuple[list[Shape], int]:
    """The scene with one shape (index ``j``, drawn at random) given another kind, never a pair that
    ``world`` holds out: ``(twin_scene, j)``. Everything else about the shapes is kept."""
    scene = _check_scene(scene)
    if not isinstance(world, ShapesWorld):
        raise TypeError(f"world must be a ShapesWorld, got {type(world).__name__}")
    rng = _check_rng(rng)
    j = int(rng.integers(len(scene)))
    s = scene[j]
    options = [k for k in KINDS if k != s.kind and not world.is_held_out(s.colour, k)]
    if not options:
        raise ValueError(f"every other kind of {s.colour} is held out: no twin for the {s.name}")
    changed = list(scene)
    changed[j] = dataclasses.replace(s, kind=options[int(rng.integers(len(options)))])
    return changed, j


def _one_caption(shape: Shape, colour: bool, rng: np.random.Generator) -> str:
    """A caption of one shape that always names its kind (full, or some of the attributes)."""
    if colour and rng.random() < 0.5:
        return _full_caption(shape, rng)
    while True:
        text = partial_caption(shape, rng, colour=colour)
        if shape.kind in text.split():
            return text


def scene_caption(scene, j: int, rng: np.random.Generator, colour: bool = True, p_changed: float = 0.4,
                  p_one: float = 0.15) -> str:
    """A training caption of ``scene`` whose shape ``j`` is the one its twin changes: with probability
    ``p_changed`` a caption of shape ``j``, with ``p_one`` one of any shape, otherwise every shape in
    a random order ("a red circle and a blue square"). ``colour=False`` names no colour."""
    scene, rng = _check_scene(scene), _check_rng(rng)
    j = checks.integer(j, "j", minimum=0, maximum=len(scene) - 1)
    r = rng.random()
    if r < p_changed:
        return _one_caption(scene[j], colour, rng)
    if r < p_changed + p_one:
        return _one_caption(scene[int(rng.integers(len(scene)))], colour, rng)
    return " and ".join("a " + (f"{scene[i].colour} " if colour else "") + scene[i].kind
                        for i in rng.permutation(len(scene)))


class ScenePairs:
    """A fixed pool of training scenes and their twins; each draw gives a batch of pairs (a scene,
    then its twin) with freshly worded captions."""

    def __init__(self, recipe: SceneRecipe):
        if not isinstance(recipe, SceneRecipe):
            raise TypeError(f"recipe must be a SceneRecipe, got {type(recipe).__name__}")
        self.recipe = recipe
        world = ShapesWorld(max_shapes=recipe.max_shapes, seed=recipe.world_seed)
        data = world.sample(recipe.n_train, split="train", seed=recipe.seed, captions=None)
        rng = np.random.default_rng([recipe.seed, 13])
        self.scenes, self.twins, self.changed = data.shapes, [], []
        firsts, seconds = [], []
        for i, scene in enumerate(data.shapes):
            other, j = twin(scene, world, rng)
            self.twins.append(other)
            self.changed.append(j)
            firsts.append(draw(scene, world.image_size, world.noise, seed=i))
            seconds.append(draw(other, world.image_size, world.noise, seed=i))
        self.images = torch.stack([torch.stack(firsts), torch.stack(seconds)], 1)       # (N, 2, 3, H, W)
        self.grey = grey_copies(self.images.flatten(0, 1)).view_as(self.images)
        self.rng = np.random.default_rng([recipe.seed, 7])

    def __len__(self) -> int:
        return len(self.scenes)

    def batch(self, max_length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """``recipe.batch_size`` images (pairs side by side: scene, twin, scene, twin, ...) and their
        tokenized captions."""
        r, rng = self.recipe, self.rng
        idx = rng.choice(len(self), size=min(r.batch_size // 2, len(self)), replace=False)
        grey = rng.random(len(idx)) < r.p_grey
        texts = []
        for i, g in zip(idx, grey):
            for scene in (self.scenes[i], self.twins[i]):
                texts.append(scene_caption(scene, self.changed[i], rng, colour=not g, p_changed=r.p_changed,
                                           p_one=r.p_one))
        idx_t, grey_t = torch.from_numpy(idx), torch.from_numpy(grey)[:, None, None, None, None]
        images = torch.where(grey_t, self.grey[idx_t], self.images[idx_t]).flatten(0, 1)
        return images, tokenize(texts, max_length)


def finetune_on_scenes(model: CLIP, recipe: SceneRecipe, desc: str = "teaching CLIP scenes") -> tuple[dict, float]:
    """Continue training ``model`` (in place) on scenes with twin hard negatives; return the history
    and the seconds. Both encoders train, with CLIP's loss, as in chapter 2."""
    from .training import train

    if not isinstance(model, CLIP):
        raise TypeError(f"model must be a vlmlib CLIP (vlmlib.clip.load_clip()[0]), got {type(model).__name__}")
    if not isinstance(recipe, SceneRecipe):
        raise TypeError(f"recipe must be a SceneRecipe, got {type(recipe).__name__}")
    torch.manual_seed(recipe.seed)
    pool = ScenePairs(recipe)
    device = next(model.parameters()).device
    model.train()

    def loss_fn(step: int):
        images, ids = pool.batch(model.config.max_length)
        return clip_loss(model(images.to(device), ids.to(device))), {}

    start = time.perf_counter()
    history = train(model, loss_fn, recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay, desc=desc,
                    after_step=lambda step: model.clamp_logit_scale_())
    model.eval()
    return history, time.perf_counter() - start


# -- what the grid features hold --------------------------------------------------------------------
def shape_tokens(tower, n: int, split: str, seed: int, layer: int = -2, max_shapes: int = 3):
    """Each shape's own grid feature (the patch under its centre) in ``n`` scenes of a split:
    ``(features (M, D), shapes (M,), shapes in its scene (M,))``. ``tower``: a ViT or a vlmlib CLIP."""
    from .llava import _vision_tower, grid_features

    vit = _vision_tower(tower)
    data = ShapesWorld(max_shapes=max_shapes).sample(checks.integer(n, "n", minimum=1), split=split,
                                                     seed=seed, captions=None)
    device = next(vit.parameters()).device
    with torch.no_grad():
        f = grid_features(vit, data.tensor().to(device), layer).cpu()
    side, patch = vit.config.image_size // vit.config.patch_size, vit.config.patch_size
    rows, shapes, crowding = [], [], []
    for i, scene in enumerate(data.shapes):
        for s in scene:
            col, row = (min(int(v // patch), side - 1) for v in (s.x, s.y))
            rows.append(f[i, row * side + col])
            shapes.append(s)
            crowding.append(len(scene))
    return torch.stack(rows), shapes, np.array(crowding)


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 300):
    """A linear classifier on standardised features (full-batch Adam); returns its prediction function."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be float features (N, D), got {checks._given(x)}")
    if not isinstance(y, torch.Tensor) or y.shape != (len(x),) or y.dtype != torch.long:
        raise ValueError(f"y must be ({len(x)},) class indices (torch.long), got {checks._given(y)}")
    n_classes = checks.integer(n_classes, "n_classes", minimum=2)
    mu, sd = x.mean(0), x.std(0) + 1e-5
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], n_classes)
    torch.random.set_rng_state(generator_state)
    opt = torch.optim.Adam(probe.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(checks.integer(steps, "steps", minimum=1)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe((x - mu) / sd), y).backward()
        opt.step()
    return lambda f: probe((f - mu) / sd).argmax(1)


def shape_token_probe(tower, layer: int = -2, n_train: int = 2700, n_test: int = 1500) -> dict[str, dict[str, float]]:
    """How well a linear probe reads each shape's colour and kind from its own grid feature, trained
    on every shape of ``n_train`` training scenes (one to three shapes), measured on ``n_test`` scenes
    of seen and of held-out pairs: ``{"kind, held-out pairs": {"1 shape": ..., "2 shapes": ...,
    "3 shapes": ...}, ...}``."""
    x, shapes, _ = shape_tokens(tower, n_train, "train", 1, layer)
    tests = {"seen pairs": shape_tokens(tower, n_test, "test", 2, layer),
             "held-out pairs": shape_tokens(tower, n_test, "holdout", 3, layer)}
    out = {}
    for attr, names in (("colour", COLOUR_NAMES), ("kind", KINDS)):
        def target(group):
            return torch.tensor([names.index(getattr(s, attr)) for s in group])

        predict = fit_probe(x, target(shapes), len(names))
        for pairs, (xt, st, crowd) in tests.items():
            with torch.no_grad():
                right = (predict(xt) == target(st)).numpy()
            out[f"{attr}, {pairs}"] = {f"{k} shape{'s' * (k > 1)}": float(right[crowd == k].mean()) for k in (1, 2, 3)}
    return out


def twin_accuracy(model: CLIP, n: int = 500, split: str = "holdout", seed: int = 5) -> float:
    """How often CLIP matches a scene and its twin to their own captions (every shape named, colour
    and kind), among just the two: the share of ``n`` pairs where both images are nearer their own
    caption than the twin's. Chance is a quarter."""
    if not isinstance(model, CLIP):
        raise TypeError(f"model must be a vlmlib CLIP, got {type(model).__name__}")
    n = checks.integer(n, "n", minimum=1)
    world = ShapesWorld(max_shapes=3)
    data = world.sample(n, split=split, seed=seed, captions=None)
    rng = np.random.default_rng([seed, 17])
    imgs, texts = [], []
    anything = ShapesWorld(max_shapes=3, held_out=())      # a twin may change to any other kind
    for i, scene in enumerate(data.shapes):
        other, _ = twin(scene, anything, rng)
        for s in (scene, other):
            imgs.append(draw(s, world.image_size, world.noise, seed=i))
            texts.append(" and ".join(f"a {x.colour} {x.kind}" for x in s))
    device = next(model.parameters()).device
    with torch.no_grad():
        ie = model.encode_image(torch.stack(imgs).to(device)).view(n, 2, -1)
        te = model.encode_text(tokenize(texts, model.config.max_length).to(device)).view(n, 2, -1)
    sim = torch.einsum("nid,njd->nij", ie, te)                       # (n, image, caption)
    return float(((sim[:, 0, 0] > sim[:, 0, 1]) & (sim[:, 1, 1] > sim[:, 1, 0])).float().mean())


def load_scene_clip(budget: str | None = None, device: str | torch.device | None = None,
                    recipe: SceneRecipe | None = None, verbose: bool = True) -> tuple[CLIP, Artifact]:
    """Chapter 2's CLIP (:func:`vlmlib.clip.load_clip`) fine-tuned on scenes by ``recipe`` (default
    :class:`SceneRecipe`): trained on first use, then loaded from the cache. The artifact's metrics
    hold the twin accuracy and the shape-token probe of both the base model and this one."""
    from .settings import _device as settings_device, current

    device = settings_device(device) if device is not None else current().device
    recipe = recipe if recipe is not None else SceneRecipe()
    if not isinstance(recipe, SceneRecipe):
        raise TypeError(f"recipe must be a SceneRecipe, got {type(recipe).__name__}")
    base, base_art = load_clip(budget=budget, device="cpu", verbose=verbose)
    key = {"base": base_art.config, "recipe": recipe.to_dict()}

    def measure(model: CLIP, prefix: str) -> dict:
        out = {f"{prefix}twin_{split}": twin_accuracy(model, split=split) for split in ("test", "holdout")}
        for row, cols in shape_token_probe(model).items():
            out.update({f"{prefix}probe {row}, {col}": v for col, v in cols.items()})
        return out

    def build() -> Artifact:
        model = CLIP(base.config)
        model.load_state_dict(base.state_dict())
        metrics = measure(model, "base ")
        history, seconds = finetune_on_scenes(model, recipe)
        metrics.update({"train_seconds": seconds, **measure(model, "")})
        return Artifact(NAME, key, {k: v.cpu() for k, v in model.state_dict().items()}, metrics, history)

    art = cached(NAME, key, build, verbose=verbose)
    model = CLIP(base.config)
    model.load_state_dict(art.state_dict)
    model.eval()
    return model.to(device), art
