"""The scene judge: a small CNN that reads every shape of a ShapesWorld scene.

Chapter 5's :mod:`~vlmlib.judge` reads images of *one* shape. Chapter 6 generates scenes from
prompts such as "a red circle to the left of a blue square", so its judge must read all the shapes
of an image. ShapesWorld draws each shape in its own cell of a 3×3 grid, so a scene is fully
described by nine answers, one per cell: *empty*, or a shape of some colour, kind and size. From
those nine answers follow the count, and every left/right/above/below relation
(:func:`vlmlib.shapesworld.relations`).

The network (:class:`SceneJudge`) is a small CNN on 32×32 images in [0, 1] with two coordinate
channels, as :class:`vlmlib.judge.Judge`. Its 8×8 feature map is pooled into a 3×3 map, one
vector per grid cell, and one small head, shared by the nine cells (each cell adds a learnt bias of
its own), gives each cell four sets of logits: occupancy (empty or shape), colour (6), kind (4)
and size (2). Sharing the head means every shape, wherever it lies, teaches every cell. A further
stride-2 stage and a feature layer give a *realness* logit: is this a valid ShapesWorld scene of
one to three shapes at all? (A reader's confidence is no such test: off its data it is
over-confident, so noise would be "read" as shapes.) At inference, the logits are averaged over
the image and its mirror image, the mirror's cells swapped back left <-> right.

Training (:func:`train_scene_judge`, about ten minutes on one CPU core; the model ships with the
package, :func:`load_scene_judge`):

- *positives*: ShapesWorld scenes of 1–3 shapes (split ``"all"``), rendered clean, then given pixel
  noise of a random strength (0–0.05) and mirrored half of the time. Chapter 6's generator makes
  16×16 images that are upsampled (bicubic) to 32×32, so half of the positives make that round
  trip (area-averaged to 16 px, bicubic back to 32 px): the judge must read blurred, generated-looking
  images too;
- *negatives* (realness only): Gaussian and uniform noise, blank backgrounds, and real scenes mixed
  with noise, heavily blurred, with pixels scrambled or patches shuffled (the corruptions of
  :mod:`vlmlib.judge`); half of them make the 16-px round trip as well, so blur alone says nothing.

:func:`evaluate` checks the bars the shipped model was held to: its scores are stored beside the
weights. The helpers :func:`count`, :func:`find`, :func:`relation_holds`, :func:`faithful` and
:func:`score_prompts` turn what the judge reads into chapter 6's prompt-faithfulness scores.
A scene, for these helpers, is a list of shapes: the dicts that :meth:`SceneJudge.read_scenes`
returns ({"position", "colour", "kind", "size"}) or :class:`~vlmlib.shapesworld.Shape` objects.

Limits: the judge has seen shapes only where ShapesWorld draws them (within ±2 px of a cell's
centre) and never more than one shape per cell; a shape far off its cell is read in the cell that
holds most of it, or not at all.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from . import judge as J
from .shapesworld import COLOUR_NAMES, KINDS, POSITIONS, RELATIONS, SIZES, Shape, ShapesWorld, relations

#: What each cell answers, with its classes (occupancy first: 0 empty, 1 a shape).
CELL_OUTPUTS: dict[str, tuple[str, ...]] = {
    "occupied": ("empty", "shape"), "colour": COLOUR_NAMES, "kind": KINDS, "size": SIZES}
_WIDTHS = [len(v) for v in CELL_OUTPUTS.values()]
#: Cell i of an image is cell _MIRROR[i] of its mirror image (left and right swap).
_MIRROR = J._MIRROR
_IGNORE = -100                # the target of colour, kind and size in an empty cell (no loss)
NAME = "scene-judge"


@dataclass
class SceneJudgeConfig:
    """The scene judge's network and training recipe (recorded beside the shipped weights)."""

    stem: int = 16                     # a 3×3 convolution at full resolution (32 px)
    channels: tuple[int, ...] = (32, 64, 96)   # stride-2 stages 32 -> 16 -> 8 px, then a stride-1 one at 8 px
    cell_dim: int = 128                # the hidden layer of the head shared by the nine cells
    feature_dim: int = 128             # the feature layer under the realness logit
    steps: int = 4000
    batch_size: int = 128
    real_fraction: float = 0.75        # of each batch; the rest are negatives
    round_trip: float = 0.5            # the fraction of images (real and not) sent through 16 px and back
    max_noise: float = 0.05            # pixel noise of the positives: std uniform in [0, max_noise]
    lr: float = 3e-3
    n_train: int = 16_000              # distinct clean training scenes (split "all")
    seed: int = 0
    world_seed: int = 0

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if len(self.channels) != 3:
            raise ValueError(f"SceneJudgeConfig.channels must be three positive integers, got {self.channels!r}")
        for i, v in enumerate(self.channels):
            checks.integer(v, f"SceneJudgeConfig.channels[{i}]", minimum=1)
        for name in ("stem", "cell_dim", "feature_dim", "steps", "n_train"):
            checks.integer(getattr(self, name), f"SceneJudgeConfig.{name}", minimum=1)
        checks.integer(self.batch_size, "SceneJudgeConfig.batch_size", minimum=16)
        checks.integer(self.seed, "SceneJudgeConfig.seed", minimum=0)
        checks.integer(self.world_seed, "SceneJudgeConfig.world_seed", minimum=0)
        checks.number(self.real_fraction, "SceneJudgeConfig.real_fraction", 0.0, 1.0, low_open=True, high_open=True)
        checks.number(self.round_trip, "SceneJudgeConfig.round_trip", 0.0, 1.0)
        checks.number(self.max_noise, "SceneJudgeConfig.max_noise", 0.0, 0.5)
        checks.number(self.lr, "SceneJudgeConfig.lr", 0.0, low_open=True)

    def to_dict(self) -> dict:
        return asdict(self)


def round_trip(images: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Images (N, 3, 32, 32) area-averaged to ``size`` px and upsampled (bicubic) back, clamped to [0, 1]:
    what chapter 6's generator, which makes ``size``-px images, shows after ``to_image_space(x, 32)``."""
    images = J.check_images(images)
    size = checks.integer(size, "size", minimum=1, maximum=32)
    return _round_trip(images, size)


def _round_trip(x: torch.Tensor, size: int = 16) -> torch.Tensor:
    small = F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)


# -- the network ----------------------------------------------------------------------------------
def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SceneJudge(nn.Module):
    """Reads the nine grid cells of a 32×32 scene, and says whether it is a valid scene at all.

    body: RGB + (x, y) coordinates -> stem (32 px) -> stride-2 stages (16, 8 px) -> a stride-1 stage (8 px)
    cells: the 8×8 map max- and average-pooled to 3×3 (one vector per cell) -> a shared two-layer head
           (1×1 convolutions, plus a learnt bias per cell) -> 2 + 6 + 4 + 2 logits per cell
    realness: a stride-2 stage (4 px) -> a feature layer (the 4×4 map and each channel's maximum) -> 1 logit
    """

    def __init__(self, config: SceneJudgeConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else SceneJudgeConfig()
        if not isinstance(c, SceneJudgeConfig):
            raise TypeError(f"config must be a SceneJudgeConfig, got {type(c).__name__}")
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)     # (1, 2, 32, 32)
        c1, c2, c3 = c.channels
        self.body = nn.Sequential(*_conv(5, c.stem, 1), *_conv(c.stem, c1, 2), *_conv(c1, c2, 2), *_conv(c2, c3, 1))
        self.cell_in = nn.Conv2d(2 * c3, c.cell_dim, 1)
        self.cell_bias = nn.Parameter(torch.zeros(1, c.cell_dim, 3, 3))                   # each cell's own bias
        self.cell_out = nn.Conv2d(c.cell_dim, sum(_WIDTHS), 1)
        self.down = nn.Sequential(*_conv(c3, 2 * c3, 2))                                   # (N, 2·c3, 4, 4)
        self.fc = nn.Sequential(nn.Linear(2 * c3 * 17, c.feature_dim), nn.ReLU(inplace=True))
        self.real = nn.Linear(c.feature_dim, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits: ``"occupied"``, ``"colour"``, ``"kind"``, ``"size"`` -> (N, 9, classes), cells in
        :data:`~vlmlib.shapesworld.POSITIONS` order, and ``"real"`` -> (N,). No input checks (used in training)."""
        x = torch.cat([images, self.coords.expand(len(images), -1, -1, -1)], dim=1)
        h = self.body(x.contiguous(memory_format=torch.channels_last))                     # (N, C, 8, 8)
        cells = torch.cat([F.adaptive_max_pool2d(h, 3), F.adaptive_avg_pool2d(h, 3)], 1)     # (N, 2C, 3, 3)
        cells = self.cell_out(F.relu(self.cell_in(cells) + self.cell_bias))                 # (N, 14, 3, 3)
        parts = cells.flatten(2).transpose(1, 2).split(_WIDTHS, dim=-1)                     # (N, 9, ·) each
        out = dict(zip(CELL_OUTPUTS, parts))
        g = self.down(h)
        out["real"] = self.real(self.fc(torch.cat([g.flatten(1), g.amax((2, 3))], 1)))[:, 0]
        return out

    def _both_ways(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits averaged over the image and its mirror image (whose cells are swapped back left <-> right)."""
        out, mirror = self.forward(x), self.forward(x.flip(-1))
        return {k: (v + (mirror[k] if k == "real" else mirror[k][:, _MIRROR])) / 2 for k, v in out.items()}

    @torch.no_grad()
    def _run(self, images: Any, fn, batch_size: int = 500) -> Any:
        images = J.check_images(images)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            outs = [fn(images[i:i + batch_size].to(device, torch.float32))
                    for i in range(0, len(images), batch_size)]
        finally:
            self.train(was_training)
        if isinstance(outs[0], dict):
            return {k: torch.cat([o[k] for o in outs]).cpu() for k in outs[0]}
        return torch.cat(outs).cpu()

    def logits(self, images: Any) -> dict[str, torch.Tensor]:
        """Checked, batched, no-gradient logits (on the CPU), averaged over each image and its mirror image."""
        return self._run(images, self._both_ways)

    def read_cells(self, images: Any) -> dict[str, torch.Tensor]:
        """Per cell (N, 9), in POSITIONS order: ``"occupied"`` (bool) and the ``"colour"``, ``"kind"`` and
        ``"size"`` class indices (meaningful where a cell is occupied)."""
        def read(x):
            out = {k: v.argmax(-1) for k, v in self._both_ways(x).items() if k != "real"}
            out["occupied"] = out["occupied"].bool()
            return out
        return self._run(images, read)

    def read_scenes(self, images: Any) -> list[list[dict[str, str]]]:
        """The shapes in each image: per image a list (in POSITIONS order) of
        ``{"position", "colour", "kind", "size"}`` dicts of names; an empty list where it sees none."""
        cells = self.read_cells(images)
        scenes = []
        for i in range(len(cells["occupied"])):
            scenes.append([{"position": POSITIONS[p], "colour": COLOUR_NAMES[cells["colour"][i, p]],
                            "kind": KINDS[cells["kind"][i, p]], "size": SIZES[cells["size"][i, p]]}
                           for p in range(9) if cells["occupied"][i, p]])
        return scenes

    def validity(self, images: Any) -> torch.Tensor:
        """The probability (N,) that each image is a valid ShapesWorld scene (shapes whole, undamaged).

        Trained on scenes of 1–3 shapes; blank images are invalid. Scenes of four shapes, never seen
        in training, are called valid (and their four shapes read): count them with :func:`count`."""
        return self._run(images, lambda x: torch.sigmoid(self._both_ways(x)["real"]))


def read_scenes(model: SceneJudge | None, images: Any) -> list[list[dict[str, str]]]:
    """``model.read_scenes(images)``; ``model=None`` uses the shipped judge (:func:`load_scene_judge`)."""
    return _model(model).read_scenes(images)


def _model(model: SceneJudge | None) -> SceneJudge:
    if model is None:
        return load_scene_judge()[0]
    if not isinstance(model, SceneJudge):
        raise TypeError(f"model must be a SceneJudge (load_scene_judge()[0]) or None, got {type(model).__name__}")
    return model


# -- training -------------------------------------------------------------------------------------
def cell_targets(shapes: Sequence[Sequence[Shape]]) -> dict[str, torch.Tensor]:
    """Per-cell targets (N, 9) from ground-truth scenes: occupancy 0/1, and colour, kind and size
    indices (-100, ignored by the loss, in empty cells)."""
    n = len(shapes)
    out = {k: torch.full((n, 9), _IGNORE, dtype=torch.long) for k in CELL_OUTPUTS}
    out["occupied"].zero_()
    for i, scene in enumerate(shapes):
        for s in scene:
            p = POSITIONS.index(s.position)
            out["occupied"][i, p] = 1
            out["colour"][i, p] = COLOUR_NAMES.index(s.colour)
            out["kind"][i, p] = KINDS.index(s.kind)
            out["size"][i, p] = SIZES.index(s.size)
    return out


class _Batches:
    """Training batches: real scenes (noise, mirror, 16-px round trip) and seven kinds of invalid image."""

    NEGATIVES = ("gaussian noise", "uniform noise", "blank", "noise mix", "blur", "scramble", "patches")

    def __init__(self, config: SceneJudgeConfig):
        self.config = config
        world = ShapesWorld(max_shapes=3, noise=0.0, seed=config.world_seed)   # clean renders; noise per draw
        data = world.sample(config.n_train, split="all", seed=config.seed, captions=None)
        self.images, self.targets = data.tensor(), cell_targets(data.shapes)
        self.g = torch.Generator().manual_seed(config.seed)
        self.n_pos = round(config.real_fraction * config.batch_size)
        self.n_neg = config.batch_size - self.n_pos

    def _u(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.g)

    def _noisy(self, x: torch.Tensor, hi: float) -> torch.Tensor:
        std = self._u(len(x), 0.0, hi)[:, None, None, None]
        return (x + std * torch.randn(x.shape, generator=self.g)).clamp(0, 1)

    def _trip(self, x: torch.Tensor) -> torch.Tensor:
        """Send a random ``round_trip`` fraction of the images through 16 px and back."""
        pick = torch.rand(len(x), generator=self.g) < self.config.round_trip
        if pick.any():
            x = x.clone()
            x[pick] = _round_trip(x[pick])
        return x

    def _real(self, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.randint(len(self.images), (n,), generator=self.g)
        x, targets = self.images[idx], {k: v[idx] for k, v in self.targets.items()}
        flip = torch.rand(n, generator=self.g) < 0.5                       # a mirror image is as real
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        targets = {k: torch.where(flip[:, None], v[:, _MIRROR], v) for k, v in targets.items()}
        return self._noisy(x, self.config.max_noise), targets

    def _negatives(self, n: int) -> torch.Tensor:
        kinds = len(self.NEGATIVES)
        counts = [n // kinds + (i < n % kinds) for i in range(kinds)]
        g, u, out = self.g, self._u, []
        m = counts[0]    # Gaussian noise of any mean and spread
        out.append(u(m, 0.1, 0.9)[:, None, None, None] + u(m, 0.02, 0.5)[:, None, None, None]
                   * torch.randn(m, 3, 32, 32, generator=g))
        m = counts[1]    # uniform noise over a random range
        lo, span = u(m, 0.0, 0.6), u(m, 0.1, 1.0)
        out.append(lo[:, None, None, None] + span[:, None, None, None] * torch.rand(m, 3, 32, 32, generator=g))
        m = counts[2]    # blank: a flat background (half of them ShapesWorld's own), with pixel noise
        bg = torch.where(torch.rand(m, 1, generator=g) < 0.5,
                         u(m, 0.04, 0.2)[:, None] + u(m * 3, -0.03, 0.03).view(m, 3), torch.rand(m, 3, generator=g))
        out.append(self._noisy(bg[:, :, None, None].expand(m, 3, 32, 32), self.config.max_noise))
        m = counts[3]    # a real scene mixed with noise
        a = u(m, 0.3, 1.0)[:, None, None, None]
        out.append((1 - a) * self._real(m)[0] + a * J.corrupt(self._real(m)[0], "noise", 1.0,
                                                                seed=int(torch.randint(2**31, (1,), generator=g))))
        m = counts[4]    # heavy blur (σ 2–4 px; the 16-px round trip blurs far less)
        out.append(J.gaussian_blur(self._real(m)[0], u(m, 2.0, 4.0)))
        m = counts[5]    # scrambled pixels
        out.append(J._scramble(self._real(m)[0], u(m, 0.2, 1.0).tolist(), g))
        m = counts[6]    # shuffled 4×4 patches (small enough to cut the shapes into pieces)
        out.append(J._shuffle_patches(self._real(m)[0], u(m, 0.5, 1.0).tolist(), g, patch=4))
        return torch.cat(out).clamp(0, 1)

    def batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Images (real first), the real images' cell targets, and the realness targets (1 real, 0 not)."""
        x, targets = self._real(self.n_pos)
        x = torch.cat([x, self._negatives(self.n_neg)])
        target = torch.cat([torch.ones(self.n_pos), torch.zeros(self.n_neg)])
        return self._trip(x), targets, target


def train_scene_judge(config: SceneJudgeConfig | None = None, desc: str = "training the scene judge"
                      ) -> tuple[SceneJudge, dict[str, list[float]], float]:
    """Train a scene judge on the CPU; return it, its loss history and the seconds it took."""
    from .training import train

    config = config if config is not None else SceneJudgeConfig()
    if not isinstance(config, SceneJudgeConfig):
        raise TypeError(f"config must be a SceneJudgeConfig, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    batches = _Batches(config)
    model = SceneJudge(config).to(memory_format=torch.channels_last)

    def loss_fn(step: int):
        x, targets, target = batches.batch()
        out = model(x)
        n = batches.n_pos
        cells = sum(F.cross_entropy(out[k][:n].flatten(0, 1), targets[k].flatten(), ignore_index=_IGNORE)
                    for k in CELL_OUTPUTS)
        real = F.binary_cross_entropy_with_logits(out["real"], target)
        return cells + real, {"cells": cells.item(), "realness": real.item()}

    history = train(model, loss_fn, config.steps, lr=config.lr, weight_decay=0.01, desc=desc)
    return model.eval(), history, time.perf_counter() - start


# -- evaluation -----------------------------------------------------------------------------------
#: The bars the shipped judge is held to (checked by the tests against the stored metrics).
BARS = {"scene_right": 0.99, "valid": 0.99, "noise_invalid": 0.99, "round_trip_scene_right": 0.98}


def _reading_metrics(model: SceneJudge, images: torch.Tensor, truth: dict[str, torch.Tensor]) -> dict[str, float]:
    pred = model.read_cells(images)
    occ = truth["occupied"].bool()
    cells_right = pred["occupied"] == occ                                                  # (N, 9)
    hit = {k: (pred[k] == truth[k]) | ~occ for k in ("colour", "kind", "size")}           # empty cells pass
    where = cells_right.all(1)
    out = {"cells": cells_right.float().mean().item(),
           "count": (pred["occupied"].sum(1) == occ.sum(1)).float().mean().item()}
    for k, v in hit.items():
        out[k] = v[occ].float().mean().item()                     # per shape
    out["scene_right"] = (where & hit["colour"].all(1) & hit["kind"].all(1) & hit["size"].all(1)).float().mean().item()
    out["scene_right_no_size"] = (where & hit["colour"].all(1) & hit["kind"].all(1)).float().mean().item()
    return out


def evaluate(model: SceneJudge, n: int = 1000, seed: int = 1000, world_seed: int = 0) -> dict[str, float]:
    """The judge's scores on fresh data (``seed`` is one that training does not use).

    For ShapesWorld's ``"test"`` and ``"holdout"`` splits (``n`` scenes of 1–3 shapes each, ShapesWorld's
    own pixel noise), as drawn and after the 16-px round trip (``{split}_16px_*``): ``scene_right``,
    the fraction of scenes read fully right (every cell's occupancy, and every shape's colour, kind
    and size); ``scene_right_no_size`` (the same without size); ``cells`` (per cell), ``count``, and
    per shape ``colour``, ``kind``, ``size``; and ``valid``, the fraction judged valid. Then the
    fraction judged valid of ``n`` Gaussian-noise, uniform-noise and blank images (lower is better).
    """
    model = _model(model)
    n = checks.integer(n, "n", minimum=1)
    seed = checks.integer(seed, "seed", minimum=0)
    world = ShapesWorld(max_shapes=3, seed=checks.integer(world_seed, "world_seed", minimum=0))
    metrics: dict[str, float] = {}
    for split in ("test", "holdout"):
        data = world.sample(n, split=split, seed=seed, captions=None)
        truth = cell_targets(data.shapes)
        for tag, x in (("", data.tensor()), ("16px_", _round_trip(data.tensor()))):
            metrics.update({f"{split}_{tag}{k}": v for k, v in _reading_metrics(model, x, truth).items()})
            metrics[f"{split}_{tag}valid"] = (model.validity(x) > 0.5).float().mean().item()
    for name, x in _invalid_images(n, seed).items():
        metrics[f"{name}_valid"] = (model.validity(x) > 0.5).float().mean().item()
    return metrics


def _invalid_images(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Gaussian noise N(0.5, 0.25²), uniform noise and blank ShapesWorld-like backgrounds (with pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    bg = 0.04 + 0.16 * torch.rand(n, 1, 1, 1, generator=g) + 0.06 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    return {"gaussian_noise": (0.5 + 0.25 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1),
            "uniform_noise": torch.rand(n, 3, 32, 32, generator=g),
            "blank": (bg + 0.03 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)}


def meets_bars(metrics: Mapping[str, float]) -> dict[str, bool]:
    """Which bars of :data:`BARS` ``metrics`` (from :func:`evaluate`) meet."""
    splits = ("test", "holdout")
    return {
        "scene_right": all(metrics[f"{s}_scene_right"] >= BARS["scene_right"] for s in splits),
        "round_trip_scene_right": all(metrics[f"{s}_16px_scene_right"] >= BARS["round_trip_scene_right"]
                                      for s in splits),
        "valid": all(metrics[f"{s}_{t}valid"] >= BARS["valid"] for s in splits for t in ("", "16px_")),
        "noise_invalid": all(1 - metrics[f"{k}_valid"] >= BARS["noise_invalid"]
                             for k in ("gaussian_noise", "uniform_noise", "blank")),
    }


# -- the shipped model ----------------------------------------------------------------------------
_LOADED: dict[str, tuple[SceneJudge, dict]] = {}


def weights_folder():
    from importlib.resources import files
    from pathlib import Path

    return Path(str(files("vlmlib") / "weights"))


def load_scene_judge(device: str | torch.device = "cpu", folder=None) -> tuple[SceneJudge, dict]:
    """The shipped scene judge, ``vlmlib/weights/scene-judge.{safetensors,json}`` (made by
    ``python -m tools.train_scene_judge``): ``(model, record)``, the record being the JSON (config,
    metrics, loss history). Kept in memory, so later calls are free. Raises ``FileNotFoundError``
    when the files are missing and ``ValueError`` when the weights fail their checksum."""
    import hashlib
    import json
    from pathlib import Path

    from safetensors.torch import load as load_safetensors

    from .settings import _device

    device = _device(device)
    folder = Path(folder) if folder is not None else weights_folder()
    memo = f"{folder.resolve()}@{device}"
    if memo in _LOADED:
        return _LOADED[memo]
    meta, weights_path = folder / f"{NAME}.json", folder / f"{NAME}.safetensors"
    if not meta.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no scene judge in {folder}: run `python -m tools.train_scene_judge`")
    record = json.loads(meta.read_text())
    weights = weights_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != record["weights_sha256"]:
        raise ValueError(f"{weights_path} fails its checksum: run `python -m tools.train_scene_judge` again")
    model = SceneJudge(SceneJudgeConfig(**record["config"]))
    model.load_state_dict(load_safetensors(weights))
    _LOADED[memo] = (model.eval().to(device), record)
    return _LOADED[memo]


# -- scenes: counts, relations, faithfulness ------------------------------------------------------
_ATTRS = {"colour": COLOUR_NAMES, "kind": KINDS, "size": SIZES, "position": POSITIONS}


def _as_scene(scene: Any, name: str = "scene") -> list[dict[str, str]]:
    """A scene as a list of dicts of names: from read_scenes' dicts or from Shape objects."""
    if isinstance(scene, (Shape, Mapping)):
        raise TypeError(f"{name} must be a list of shapes (one scene: a list of Shape or of read_scenes' dicts), "
                        f"got one {type(scene).__name__}; wrap it in a list")
    if not isinstance(scene, (list, tuple)):
        raise TypeError(f"{name} must be a list of shapes (Shape or read_scenes' dicts), got {type(scene).__name__}")
    out = []
    for i, s in enumerate(scene):
        if isinstance(s, Shape):
            out.append({k: getattr(s, k) for k in _ATTRS})
        elif isinstance(s, Mapping):
            missing = [k for k in _ATTRS if k not in s]
            if missing:
                raise ValueError(f"{name}[{i}] lacks {missing}; a shape has {list(_ATTRS)}")
            out.append({k: checks.choice(s[k], f"{name}[{i}][{k!r}]", v) for k, v in _ATTRS.items()})
        else:
            raise TypeError(f"{name}[{i}] must be a Shape or a dict of its attributes, got {type(s).__name__}")
    if len({s["position"] for s in out}) != len(out):
        raise ValueError(f"{name} has two shapes in one cell; ShapesWorld scenes have one shape per cell")
    return out


def _as_pair(pair: Any, name: str) -> tuple[str | None, str | None]:
    if isinstance(pair, (str, Shape)) or not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a (colour, kind) pair such as ('red', 'circle') (either may be None), "
                        f"got {pair!r}")
    colour, kind = pair
    if colour is None and kind is None:
        raise ValueError(f"{name} names neither a colour nor a kind")
    return (None if colour is None else checks.choice(colour, f"{name} colour", COLOUR_NAMES),
            None if kind is None else checks.choice(kind, f"{name} kind", KINDS))


def count(scene: Any) -> int:
    """How many shapes a scene holds."""
    return len(_as_scene(scene))


def find(scene: Any, colour: str | None = None, kind: str | None = None) -> list[dict[str, str]]:
    """The shapes of a scene of the given colour and/or kind (``None`` matches any)."""
    scene = _as_scene(scene)
    colour = None if colour is None else checks.choice(colour, "colour", COLOUR_NAMES)
    kind = None if kind is None else checks.choice(kind, "kind", KINDS)
    return [s for s in scene if colour in (None, s["colour"]) and kind in (None, s["kind"])]


def _relations(a: Mapping[str, str], b: Mapping[str, str]) -> list[str]:
    """shapesworld.relations of two shapes read as dicts (a Shape is drawn at each cell's centre)."""
    def shape(s):
        p = POSITIONS.index(s["position"])
        return Shape(s["colour"], s["kind"], s["size"], s["position"], (p % 3 + 0.5) * 32 / 3,
                     (p // 3 + 0.5) * 32 / 3, 1.0)
    return relations(shape(a), shape(b))


def relation_holds(scene: Any, a: Sequence[str | None], relation: str, b: Sequence[str | None]) -> bool:
    """Whether some shape matching ``a`` = (colour, kind) stands in ``relation`` (one of
    :data:`~vlmlib.shapesworld.RELATIONS`) to another shape matching ``b``; ``None`` matches any."""
    scene = _as_scene(scene)
    a, b = _as_pair(a, "a"), _as_pair(b, "b")
    relation = checks.choice(relation, "relation", RELATIONS)
    return any(relation in _relations(sa, sb)
               for sa in find(scene, *a) for sb in find(scene, *b) if sa is not sb)


def check_spec(spec: Any, name: str = "spec") -> dict:
    """A prompt's description, checked; see :func:`faithful`. Returns a normalised copy."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"{name} must be a dict describing a prompt, e.g. {{'colour': 'red', 'kind': 'circle'}} "
                        f"or {{'shapes': [('red', 'circle'), ('blue', 'square')], 'relation': 'above'}}, "
                        f"got {type(spec).__name__}")
    if "shapes" in spec or "relation" in spec:
        unknown = set(spec) - {"shapes", "relation"}
        if unknown or "shapes" not in spec or "relation" not in spec:
            raise ValueError(f"a two-shape {name} has exactly the keys 'shapes' and 'relation', got {sorted(spec)}")
        shapes = spec["shapes"]
        if not isinstance(shapes, (list, tuple)) or len(shapes) != 2:
            raise ValueError(f"{name}['shapes'] must be two (colour, kind) pairs, got {shapes!r}")
        return {"shapes": [_as_pair(p, f"{name}['shapes'][{i}]") for i, p in enumerate(shapes)],
                "relation": checks.choice(spec["relation"], f"{name}['relation']", RELATIONS)}
    unknown = set(spec) - set(_ATTRS)
    if unknown:
        raise ValueError(f"{name} has unknown keys {sorted(unknown)}; a one-shape spec has some of {list(_ATTRS)}, "
                         "a two-shape spec 'shapes' and 'relation'")
    if not spec:
        raise ValueError(f"{name} is empty: name at least one of {list(_ATTRS)}")
    return {k: checks.choice(v, f"{name}[{k!r}]", _ATTRS[k]) for k, v in spec.items()}


def faithful(scene: Any, spec: Any) -> bool:
    """Whether a scene shows what a prompt asked for.

    - one-shape spec, some of ``{"colour", "kind", "position", "size"}``: exactly one shape, with every
      given attribute (``{"colour": "red"}`` asks for one red shape of any kind, size and place);
    - two-shape spec ``{"shapes": [(colour, kind), (colour, kind)], "relation": phrase}``: exactly two
      shapes, one matching each pair, the first standing in ``relation`` to the second.
    """
    scene, spec = _as_scene(scene), check_spec(spec)
    if "shapes" in spec:
        if len(scene) != 2:
            return False
        (ca, ka), (cb, kb) = spec["shapes"]
        for sa, sb in (scene, scene[::-1]):
            if (ca in (None, sa["colour"]) and ka in (None, sa["kind"]) and cb in (None, sb["colour"])
                    and kb in (None, sb["kind"]) and spec["relation"] in _relations(sa, sb)):
                return True
        return False
    return len(scene) == 1 and all(scene[0][k] == v for k, v in spec.items())


def score_prompts(model: SceneJudge | None, images: Any, specs: Sequence[Any]) -> dict[str, float]:
    """Score generated images against the prompts (specs, see :func:`faithful`) they were made from.

    Returns ``"valid"`` (the fraction judged valid) and ``"faithful"`` (valid and faithful to its
    spec); for the one-shape specs (when there are any), ``"one_shape"`` (exactly one shape read) and,
    for each attribute that some spec names, its rate: the fraction of the images whose spec names
    it that show exactly one shape, with that attribute (e.g. ``"colour"``); for two-shape specs
    (when there are any), ``"two_shapes"`` (exactly two shapes read), ``"pairs"`` (exactly two, one of
    each named colour–kind pair) and ``"relation"`` (that, and the relation holds: faithful). Rates
    other than ``"faithful"`` do not ask for validity. ``model=None`` uses the shipped judge.
    """
    model = _model(model)
    images = J.check_images(images)
    if isinstance(specs, Mapping) or not isinstance(specs, (list, tuple)):
        raise TypeError(f"specs must be a list of dicts, one per image, got {type(specs).__name__}")
    if len(specs) != len(images):
        raise ValueError(f"specs must hold one spec per image ({len(images)}), got {len(specs)}")
    specs = [check_spec(s, f"specs[{i}]") for i, s in enumerate(specs)]
    scenes = model.read_scenes(images)
    valid = (model.validity(images) > 0.5).tolist()
    right = [faithful(sc, sp) for sc, sp in zip(scenes, specs)]
    out = {"valid": sum(valid) / len(valid), "faithful": sum(v and r for v, r in zip(valid, right)) / len(right)}

    def rate(hits: list[bool]) -> float:
        return sum(hits) / len(hits)

    one = [(sc, sp) for sc, sp in zip(scenes, specs) if "shapes" not in sp]
    if one:
        out["one_shape"] = rate([len(sc) == 1 for sc, _ in one])
        for k in _ATTRS:
            named = [(sc, sp) for sc, sp in one if k in sp]
            if named:
                out[k] = rate([len(sc) == 1 and sc[0][k] == sp[k] for sc, sp in named])
    two = [(sc, sp) for sc, sp in zip(scenes, specs) if "shapes" in sp]
    if two:
        out["two_shapes"] = rate([len(sc) == 2 for sc, _ in two])
        out["pairs"] = rate([_pairs(sc, sp["shapes"]) for sc, sp in two])
        out["relation"] = rate([faithful(sc, sp) for sc, sp in two])
    return out


#: How a two-shape sample can go, from worst to right (:func:`two_shape_outcome`).
TWO_SHAPE_OUTCOMES = ("no shape", "one shape", "three or more", "a colour or kind wrong",
                      "attributes swapped", "relation wrong", "fully right")


def two_shape_outcome(scene: Any, spec: Any) -> str:
    """What a scene shows for a two-shape spec, one of :data:`TWO_SHAPE_OUTCOMES`.

    With exactly two shapes: ``"attributes swapped"`` when the scene has the asked colours and the
    asked kinds but paired the other way ("a blue circle and a red square" for "a red circle ... a
    blue square": the attribute-binding failure); ``"a colour or kind wrong"`` for any other wrong
    pair; ``"relation wrong"`` when both pairs are right but the first does not stand in the asked
    relation to the second. Attributes left open (``None``) in the spec match anything.
    """
    scene, spec = _as_scene(scene), check_spec(spec)
    if "shapes" not in spec:
        raise ValueError("two_shape_outcome needs a two-shape spec ({'shapes': [...], 'relation': ...})")
    n = len(scene)
    if n != 2:
        return "no shape" if n == 0 else "one shape" if n == 1 else "three or more"
    if faithful(scene, spec):
        return "fully right"
    if _pairs(scene, spec["shapes"]):
        return "relation wrong"
    (ca, ka), (cb, kb) = spec["shapes"]

    def same(asked, read):                   # the multiset of asked values, open ones matching anything
        fixed = sorted(a for a in asked if a is not None)
        rest = list(read)
        for a in fixed:
            if a not in rest:
                return False
            rest.remove(a)
        return True

    colours, kinds = [s["colour"] for s in scene], [s["kind"] for s in scene]
    if same((ca, cb), colours) and same((ka, kb), kinds):
        return "attributes swapped"
    return "a colour or kind wrong"


def two_shape_outcomes(model: SceneJudge | None, images: Any, specs: Sequence[Any]) -> dict[str, float]:
    """The share of images in each of :data:`TWO_SHAPE_OUTCOMES` (read by the judge; validity is not
    asked here), for two-shape specs, one per image."""
    model = _model(model)
    images = J.check_images(images)
    if isinstance(specs, Mapping) or not isinstance(specs, (list, tuple)) or len(specs) != len(images):
        raise ValueError(f"specs must be a list of two-shape specs, one per image ({len(images)})")
    read = model.read_scenes(images)
    got = [two_shape_outcome(sc, sp) for sc, sp in zip(read, specs)]
    return {k: got.count(k) / len(got) for k in TWO_SHAPE_OUTCOMES}


def _pairs(scene: list[dict], pairs) -> bool:
    """Exactly two shapes, one matching each (colour, kind) pair (in either order)."""
    if len(scene) != 2:
        return False
    def match(s, pair):
        return pair[0] in (None, s["colour"]) and pair[1] in (None, s["kind"])
    return any(match(x, pairs[0]) and match(y, pairs[1]) for x, y in (scene, scene[::-1]))
