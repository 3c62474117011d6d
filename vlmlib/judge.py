"""The judge: a small classifier that scores images as ShapesWorld would.

Used from chapter 5 on to score generated images; it stands in for the Inception and CLIP scores of
the field. A small CNN reads an image of one shape (32×32, values in [0, 1]) and gives

- :meth:`Judge.read`: the shape's colour, kind, size and position (for prompt faithfulness);
- :meth:`Judge.validity`: the probability that the image is a valid ShapesWorld image. A classifier's
  maximum softmax probability is no such thing: off its data it is over-confident, and calls pure
  noise 100% "valid". So a separate *realness* output is trained with real images as positives and,
  as negatives, noise, blank images, scenes of several shapes and real images that were corrupted
  (mixed with noise, blurred, pixels scrambled, patches shuffled);
- :meth:`Judge.features`: its penultimate layer, from which :func:`fid` computes a ShapesWorld-FID.

:func:`score` puts these together for a batch of generated images; :func:`corrupt` is the family of
corruptions used in training and in the tests (amount 0 leaves an image unchanged, 1 destroys it).
The positives are drawn with anywhere from no pixel noise to more than ShapesWorld's own, and
mirrored: generators rarely reproduce the exact pixel noise, and that must not make a good shape
invalid. At inference the judge averages its logits over each image and its mirror image.

ShapesWorld draws a shape within ±2 px of its grid cell's centre, but generated and moving shapes
are rarely on that grid. So the positives are also moved by up to ``JudgeConfig.max_shift`` pixels
in x and y (:func:`shift_shapes`: whole shapes only, the background filled in), and
:func:`shift_tolerance` measures how well the judge reads the kind of a shape moved off its place.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from .cache import Artifact, cached
from .shapesworld import _SDF, ATTRIBUTES, COLOUR_NAMES, KINDS, Shape, ShapesData, ShapesWorld

CORRUPTIONS = ("noise", "blur", "scramble", "patches")
#: Blur's standard deviation in pixels at amount 1.
MAX_BLUR = 4.0
#: Pixels per side of the patches that the ``"patches"`` corruption shuffles.
PATCH = 8
#: Position classes of the mirror image: left and right swap, the middle column stays.
_MIRROR = [3 * (p // 3) + 2 - p % 3 for p in range(9)]
_NOISE_STD = 0.3             # the Gaussian noise that "noise" mixes in: N(0.5, 0.3²), clipped to [0, 1]


@dataclass
class JudgeConfig:
    """The judge's network and training recipe (together they key its cache entry)."""

    channels: tuple[int, ...] = (16, 32, 64)   # one stride-2 stage each: 32 -> 16 -> 8 -> 4 pixels
    stem: int = 16                # channels of a first 3×3 convolution at full resolution (0: none)
    pool: bool = True             # the feature layer also sees each channel's maximum over the 4×4 map
    feature_dim: int = 128        # the penultimate layer (FID features)
    steps: int = 1250             # 1000 before the judge learnt moved shapes
    batch_size: int = 128
    real_fraction: float = 0.5    # of each batch; the rest are negatives
    lr: float = 3e-3              # 6e-3 before; with moved shapes, it left the FID features saturated on heavy noise
    n_train: int = 8_000          # real training images (ShapesWorld split "all", so every combination)
    max_shift: int = 4            # real images are moved by up to this many pixels in x and y (0: never)
    seed: int = 0
    world_seed: int = 0

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if len(self.channels) != 3 or not all(isinstance(v, int) and v > 0 for v in self.channels):
            raise ValueError(f"JudgeConfig.channels must be three positive integers, got {self.channels!r}")
        for name in ("feature_dim", "steps", "batch_size", "n_train"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"JudgeConfig.{name} must be a positive integer, got {value!r}")
        if self.batch_size < 16:
            raise ValueError(f"JudgeConfig.batch_size must be at least 16, got {self.batch_size}")
        if not 0 < self.real_fraction < 1:
            raise ValueError(f"JudgeConfig.real_fraction must lie strictly between 0 and 1, got {self.real_fraction!r}")
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise ValueError(f"JudgeConfig.lr must be a positive number, got {self.lr!r}")
        self.max_shift = checks.integer(self.max_shift, "JudgeConfig.max_shift", minimum=0, maximum=8)
        self.stem = checks.integer(self.stem, "JudgeConfig.stem", minimum=0)
        if not isinstance(self.pool, bool):
            raise TypeError(f"JudgeConfig.pool must be True or False, got {self.pool!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# -- checking inputs ------------------------------------------------------------------------------
def check_images(images: Any, what: str = "images") -> torch.Tensor:
    """Check that ``images`` is a batch (N, 3, 32, 32) of finite values in [0, 1]; return it as float32.

    A thin wrapper of :func:`vlmlib.checks.images`: NumPy arrays, float64 and uint8 images (divided
    by 255) are converted; images in the model space [-1, 1] are an error with a hint.
    """
    try:
        return checks.images(images, what, shape=(3, 32, 32), low=0.0, high=1.0)
    except ValueError as error:
        if "values in" in str(error) and "255" not in str(error):
            raise ValueError(f"{error}; rescale them (e.g. (x + 1) / 2 from [-1, 1]) and clamp first") from None
        raise


def _check_amount(amount: Any) -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount <= 1:
        raise ValueError(f"amount must be a number in [0, 1], got {amount!r}")
    return float(amount)


# -- corruptions ----------------------------------------------------------------------------------
def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Blur each image with a Gaussian of standard deviation ``sigma`` pixels (a number or one per image).

    Each axis is multiplied by a Gaussian matrix whose rows are renormalised at the border, so a flat
    image stays flat: ``K @ x @ Kᵀ``.
    """
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"gaussian_blur expects square images, got {h}×{w}")
    sigma = torch.as_tensor(sigma, dtype=images.dtype, device=images.device).expand(n).clamp_min(1e-3)
    t = torch.arange(h, dtype=images.dtype, device=images.device)
    k = torch.exp(-(t[:, None] - t[None]) ** 2 / (2 * sigma[:, None, None] ** 2))      # (N, H, H)
    k = (k / k.sum(-1, keepdim=True))[:, None]                                        # (N, 1, H, H)
    return k @ images @ k.transpose(-1, -2)


def _gaussian_noise(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return (0.5 + _NOISE_STD * torch.randn(*shape, generator=generator)).clamp(0, 1)


def _scramble(images: torch.Tensor, fractions: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """Permute a fraction of each image's pixels among themselves (all channels alike)."""
    out = images.clone()
    n, c, h, w = images.shape
    flat = out.view(n, c, h * w)
    for i, f in enumerate(fractions):
        m = round(float(f) * h * w)
        if m > 1:
            idx = torch.randperm(h * w, generator=generator)[:m]
            flat[i, :, idx] = flat[i, :, idx[torch.randperm(m, generator=generator)]]
    return out


def _shuffle_patches(images: torch.Tensor, fractions: Sequence[float], generator: torch.Generator,
                     patch: int = PATCH) -> torch.Tensor:
    """Shuffle a fraction of each image's ``patch``×``patch`` patches among themselves."""
    n, c, h, w = images.shape
    rows, cols = h // patch, w // patch
    tiles = images.reshape(n, c, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, -1)
    tiles = tiles.clone()
    for i, f in enumerate(fractions):
        m = round(float(f) * rows * cols)
        if m > 1:
            idx = torch.randperm(rows * cols, generator=generator)[:m]
            tiles[i, idx] = tiles[i, idx[torch.randperm(m, generator=generator)]]
    tiles = tiles.reshape(n, rows, cols, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(n, c, h, w)


def corrupt(images: torch.Tensor, kind: str, amount: float, seed: int = 0) -> torch.Tensor:
    """Corrupt images by ``amount`` in [0, 1]: 0 returns them unchanged, 1 destroys them.

    ``kind`` is one of :data:`CORRUPTIONS`:

    - ``"noise"``: ``(1 - amount)·x + amount·n`` with Gaussian noise n ~ N(0.5, 0.3²) clipped to [0, 1];
    - ``"blur"``: a Gaussian blur of standard deviation ``amount · MAX_BLUR`` pixels;
    - ``"scramble"``: a fraction ``amount`` of the pixels is permuted;
    - ``"patches"``: a fraction ``amount`` of the 8×8 patches is shuffled.
    """
    images = check_images(images)
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {list(CORRUPTIONS)}")
    amount = _check_amount(amount)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if amount == 0:
        return images.clone()
    g = torch.Generator().manual_seed(int(seed))
    x = images.detach().float().cpu()
    if kind == "noise":
        out = (1 - amount) * x + amount * _gaussian_noise(x.shape, g)
    elif kind == "blur":
        out = gaussian_blur(x, amount * MAX_BLUR)
    elif kind == "scramble":
        out = _scramble(x, [amount] * len(x), g)
    else:
        out = _shuffle_patches(x, [amount] * len(x), g)
    return out.clamp(0, 1).to(images.device, images.dtype)


# -- moving whole shapes --------------------------------------------------------------------------
#: The eight directions of :func:`shift_shapes`, as (dx, dy) signs: the four axes and the four diagonals.
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))


def shape_mask(images: torch.Tensor) -> torch.Tensor:
    """The pixels (N, H, W) that differ from the background in clean renders (ShapesWorld with ``noise=0``).

    The background of a clean render is flat and covers most of the image, so its colour is each
    channel's median; a pixel belongs to the shape if any channel differs from it.
    """
    background = images.flatten(2).median(-1).values[:, :, None, None]
    return (images - background).abs().amax(1) > 1e-6


def footprint_box(shapes: Sequence[Sequence[Shape]], size: int = 32, pad: int = 12) -> torch.Tensor:
    """(N, 4): the first and last column and row (x0, x1, y0, y1) that the first shape of each scene
    covers, in image pixels, computed from its geometry, so beyond the image too (ShapesWorld cuts a
    large shape drawn near an edge: then x0 or y0 < 0, or x1 or y1 > size - 1)."""
    grid = np.arange(-pad, size + pad, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    boxes = []
    for scene in shapes:
        s = scene[0]
        cover = _SDF[s.kind](xx - np.float32(s.x), yy - np.float32(s.y), np.float32(s.radius)) + 0.5 > 0
        cols, rows = np.nonzero(cover.any(0))[0] - pad, np.nonzero(cover.any(1))[0] - pad
        boxes.append((cols[0], cols[-1], rows[0], rows[-1]))
    return torch.tensor(np.array(boxes, dtype=np.int64).reshape(-1, 4))


def _inside(box: torch.Tensor, dx: torch.Tensor | int, dy: torch.Tensor | int, size: int) -> torch.Tensor:
    """Whether each shape, moved by (dx, dy), lies wholly inside the image."""
    x0, x1, y0, y1 = box.unbind(1)
    return (x0 + dx >= 0) & (x1 + dx <= size - 1) & (y0 + dy >= 0) & (y1 + dy <= size - 1)


def _translate(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Roll each image by its own (dx, dy) pixels (x right, y down). What leaves one edge comes in at the
    other, so where only background crosses the edges this is a move with the background filled in."""
    n, c, h, w = images.shape
    rows = (torch.arange(h)[None] - dy[:, None]) % h                      # (N, H): source row of each row
    cols = (torch.arange(w)[None] - dx[:, None]) % w
    out = images[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]   # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def shift_shapes(data: ShapesData, shift: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move the shape of each image by ``shift`` pixels in a random direction in which it stays whole.

    ``data`` is a ShapesWorld sample without pixel noise (``ShapesWorld(noise=0).sample(...)``), one
    shape per image. A shape is *whole* when every pixel that it covers lies inside the image
    (:func:`footprint_box`); ShapesWorld cuts about a quarter of its shapes (large ones in edge
    cells), and those are left where they are. For each whole shape, a direction is drawn among
    the eight of :data:`DIRECTIONS` (x, y or both change by ``shift``, either sign) in which it
    stays whole, and the image is rolled: only background crosses the edges, so the background is
    filled in and the shape keeps every pixel. Returns ``(moved, offsets, whole)``: the images
    (N, 3, H, W), the offsets (N, 2) as (dx, dy) in pixels, and which shapes are whole after the
    move (N,); a shape that no direction keeps whole stays put with ``whole`` False. Add pixel
    noise afterwards if the images should look like ShapesWorld's.
    """
    if not isinstance(data, ShapesData):
        raise TypeError(f"data must be a ShapesData (ShapesWorld(noise=0).sample(...)), got {type(data).__name__}")
    shift = checks.integer(shift, "shift", minimum=0, maximum=16)
    seed = checks.integer(seed, "seed", minimum=0)
    images, size = data.tensor(), data.images.shape[1]
    box = footprint_box(data.shapes, size)
    area = (box[:, 1] - box[:, 0] + 1) * (box[:, 3] - box[:, 2] + 1)
    if (shape_mask(images).sum((1, 2)) > area).any() or (data.labels["count"] > 1).any():
        raise ValueError("shift_shapes needs images of one shape without pixel noise: "
                         "draw them with ShapesWorld(noise=0, max_shapes=1)")
    n, dirs = len(images), torch.tensor(DIRECTIONS)
    ok = torch.stack([_inside(box, shift * sx, shift * sy, size) for sx, sy in DIRECTIONS], 1)    # (N, 8)
    ok &= _inside(box, 0, 0, size)[:, None]                           # a cut shape cannot be made whole
    g = torch.Generator().manual_seed(seed)
    pick = torch.where(ok, torch.rand(n, len(DIRECTIONS), generator=g), -1.0).argmax(1)
    whole = ok.any(1)
    offsets = torch.where(whole[:, None], shift * dirs[pick], 0)
    return _translate(images, offsets[:, 0], offsets[:, 1]), offsets, whole


def shift_tolerance(model: "Judge", shifts: Sequence[int] = (0, 1, 2, 3, 4), n: int = 1000, seed: int = 2000,
                    world_seed: int = 0, attribute: str = "kind") -> dict[int, float]:
    """How well the judge reads shapes moved off the places where ShapesWorld draws them.

    For each shift s: ``n`` ShapesWorld images of every colour–kind pair (split ``"all"``, sample
    seed ``seed``, which training does not use) are rendered without pixel noise; each shape is
    moved by s pixels with :func:`shift_shapes` (in a random one of the eight directions in which it
    stays whole: x, y or both change by s), ShapesWorld's pixel noise (std 0.03) is added, and the
    judge reads the images. Returns ``{s: accuracy}``: the fraction of the whole shapes whose
    ``attribute`` (by default the kind) the judge reads right. Shapes that an edge cuts where
    ShapesWorld draws them (about a quarter) are left out, at every s, 0 included. For
    ``"position"``, the right answer is the grid cell that holds the moved shape's centre
    (ShapesWorld's own rule, :func:`~vlmlib.shapesworld.position_name`); a shape moved by 4 px can
    cross into the next cell, where it is near the border between two cells.
    """
    if not isinstance(model, Judge):
        raise TypeError(f"model must be a Judge, got {type(model).__name__}")
    attribute = checks.choice(attribute, "attribute", ATTRIBUTES)
    n = checks.integer(n, "n", minimum=1)
    shifts = [checks.integer(s, "shifts[]", minimum=0, maximum=16) for s in shifts]
    world = ShapesWorld(noise=0.0, seed=world_seed)
    data = world.sample(n, split="all", seed=seed, captions=None)
    labels = data.label_tensors()[attribute]
    centres = torch.tensor([[s[0].x, s[0].y] for s in data.shapes])
    out = {}
    for i, s in enumerate(shifts):
        moved, offsets, whole = shift_shapes(data, s, seed=seed + i)
        noise = 0.03 * torch.randn(moved.shape, generator=torch.Generator().manual_seed(seed + i))
        moved = (moved + noise).clamp(0, 1)
        truth = _cell(centres + offsets) if attribute == "position" else labels
        pred = model.read(moved[whole])[attribute]
        out[s] = (pred == truth[whole]).float().mean().item()
    return out


def _cell(centres: torch.Tensor, size: int = 32) -> torch.Tensor:
    """The grid cell (index into POSITIONS) that holds each centre (N, 2) in pixels (as position_name)."""
    col, row = (3 * centres / size).floor().long().clamp(0, 2).unbind(1)
    return 3 * row + col


# -- the network ----------------------------------------------------------------------------------
class Judge(nn.Module):
    """A small CNN: a full-resolution stem, three stride-2 stages (32 → 16 → 8 → 4 pixels), a feature
    layer, five heads. The feature layer reads the 4×4 map both as it lies (where things are) and as
    each channel's maximum over it (what is there, wherever it is). (Without the stem and the
    maximum, a judge trained on moved shapes mixed up small circles and squares, and triangles and
    crosses: a first stride-2 stage sees a small shape's outline only coarsely.)

    Two coordinate channels (x and y in [-1, 1]) are added to the image so that position is easy
    to read. The heads: one per attribute of :data:`~vlmlib.shapesworld.ATTRIBUTES` and a realness logit.
    """

    def __init__(self, config: JudgeConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else JudgeConfig()
        if not isinstance(c, JudgeConfig):
            raise TypeError(f"config must be a JudgeConfig, got {type(c).__name__}")
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)     # (1, 2, 32, 32)

        layers, cin = [], 5                                    # RGB and the two coordinate channels
        if c.stem:                                             # full resolution: tells a small circle from a square
            layers += [nn.Conv2d(cin, c.stem, 3, padding=1, bias=False), nn.BatchNorm2d(c.stem), nn.ReLU(inplace=True)]
            cin = c.stem
        for cout in c.channels:                                # downsampling from then on keeps a CPU step fast
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
            cin = cout
        self.body = nn.Sequential(*layers)                                                  # (N, C, 4, 4)
        self.fc = nn.Sequential(nn.Linear(cin * (17 if c.pool else 16), c.feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(c.feature_dim, len(v)) for name, v in ATTRIBUTES.items()})
        self.real = nn.Linear(c.feature_dim, 1)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.cat([images, self.coords.expand(len(images), -1, -1, -1)], dim=1)
        x = x.contiguous(memory_format=torch.channels_last)             # about 1.5× faster convolutions on CPUs
        h = self.body(x)                                                                    # (N, C, 4, 4)
        if self.config.pool:                          # the same evidence wherever the shape lies
            return self.fc(torch.cat([h.flatten(1), h.amax((2, 3))], 1))
        return self.fc(h.flatten(1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits: attribute -> (N, classes), and ``"real"`` -> (N,). No input checks (used in training)."""
        h = self._features(images)
        out = {name: head(h) for name, head in self.heads.items()}
        out["real"] = self.real(h)[:, 0]
        return out

    @torch.no_grad()
    def _run(self, images: torch.Tensor, fn, batch_size: int = 500) -> Any:
        images = check_images(images)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            outs = [fn(images[i:i + batch_size].to(device, torch.float32).clamp(0, 1))
                    for i in range(0, len(images), batch_size)]
        finally:
            self.train(was_training)
        if isinstance(outs[0], dict):
            return {k: torch.cat([o[k] for o in outs]).to(images.device) for k in outs[0]}
        return torch.cat(outs).to(images.device)

    def _both_ways(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits averaged over the image and its mirror image (left and right swapped back for position)."""
        out, mirror = self.forward(x), self.forward(x.flip(-1))
        mirror["position"] = mirror["position"][:, _MIRROR]
        return {k: (v + mirror[k]) / 2 for k, v in out.items()}

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Checked, batched, no-gradient logits, averaged over the image and its mirror image."""
        return self._run(images, self._both_ways)

    def read(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The predicted attributes: ``"colour"``, ``"kind"``, ``"size"``, ``"position"`` -> (N,) class indices."""
        return self._run(images, lambda x: {k: v.argmax(-1) for k, v in self._both_ways(x).items() if k != "real"})

    def validity(self, images: torch.Tensor) -> torch.Tensor:
        """The probability (N,) that each image is a valid ShapesWorld image (one shape, undamaged)."""
        return self._run(images, lambda x: torch.sigmoid(self._both_ways(x)["real"]))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (N, feature_dim), from which :func:`fid` is computed."""
        return self._run(images, self._features)


# -- training -------------------------------------------------------------------------------------
class _Batches:
    """Training batches: real images (lightly varied) and, as negatives, eight kinds of invalid image."""

    NEGATIVES = ("gaussian noise", "uniform noise", "blank", "noise mix", "blur", "scramble", "patches",
                 "several shapes")

    def __init__(self, config: JudgeConfig):
        world = ShapesWorld(noise=0.0, seed=config.world_seed)             # clean renders; noise is added per draw
        data = world.sample(config.n_train, split="all", seed=config.seed, captions=None)
        self.images = data.tensor()
        self.labels = data.label_tensors()
        self.max_shift = config.max_shift
        if self.max_shift:                          # where each shape lies, to move it and name its new cell
            self.box = footprint_box(data.shapes)
            self.centres = torch.tensor([[s[0].x, s[0].y] for s in data.shapes])
        many = ShapesWorld(max_shapes=4, noise=0.0, seed=config.world_seed)
        multi = many.sample(max(500, config.n_train // 8), split="all", seed=config.seed, captions=None)
        self.multi = multi.tensor()[torch.from_numpy(multi.labels["count"] >= 2)]
        self.g = torch.Generator().manual_seed(config.seed)
        self.bank = torch.randn(512, 3, 32, 32, generator=self.g)   # Gaussian noise, reused with flips and shifts
        self.n_neg = config.batch_size - round(config.real_fraction * config.batch_size)
        self.n_pos = config.batch_size - self.n_neg

    def _u(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.g)

    def _randn(self, n: int) -> torch.Tensor:
        """n images of standard Gaussian noise (drawn from a bank: fresh draws cost more than the network)."""
        x = self.bank[torch.randint(len(self.bank), (n,), generator=self.g)]
        x = x * (torch.randint(2, (n, 1, 1, 1), generator=self.g) * 2 - 1)
        dy, dx = torch.randint(32, (2,), generator=self.g).tolist()
        return x.roll((dy, dx), dims=(2, 3))

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel noise of a random strength, from none to more than ShapesWorld's own (0.03)."""
        std = self._u(len(x), 0.0, 0.05)[:, None, None, None]
        return (x + std * self._randn(len(x))).clamp(0, 1)

    def _real(self, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.randint(len(self.images), (n,), generator=self.g)
        x, labels = self.images[idx], {k: v[idx] for k, v in self.labels.items()}
        flip = torch.rand(n, generator=self.g) < 0.5                     # a mirror image is as real: left <-> right
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        p = labels["position"]
        labels["position"] = torch.where(flip, torch.tensor(_MIRROR)[p], p)
        if self.max_shift:
            x, labels["position"] = self._shift(x, idx, flip)
        return self._noisy(x), labels

    def _shift(self, x: torch.Tensor, idx: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move each (possibly mirrored) shape by up to max_shift pixels in x and y, uniformly among the moves
        that keep it whole (a shape that an edge cuts is not moved across that edge's axis). Its position
        becomes the cell that holds its centre."""
        size, m = x.shape[-1], self.max_shift
        x0, x1, y0, y1 = self.box[idx].unbind(1)
        x0, x1 = torch.where(flip, size - 1 - x1, x0), torch.where(flip, size - 1 - x0, x1)
        cx, cy = self.centres[idx].unbind(1)
        cx = torch.where(flip, size - cx, cx)

        def draw(lo, hi, first, last):
            lo, hi = lo.clamp(min=-m), hi.clamp(max=m)
            d = lo + (torch.rand(len(lo), generator=self.g) * (hi - lo + 1)).floor().long()
            return torch.where((first >= 0) & (last <= size - 1), d, 0)      # cut by an edge: no move
        dx = draw(-x0, size - 1 - x1, x0, x1)
        dy = draw(-y0, size - 1 - y1, y0, y1)
        return _translate(x, dx, dy), _cell(torch.stack([cx + dx, cy + dy], 1), size)

    def _negatives(self, n: int) -> torch.Tensor:
        kinds = len(self.NEGATIVES)
        counts = [n // kinds + (i < n % kinds) for i in range(kinds)]
        g, u, out = self.g, self._u, []
        m = counts[0]    # Gaussian noise of any mean and spread
        out.append((u(m, 0.1, 0.9)[:, None, None, None] + u(m, 0.02, 0.5)[:, None, None, None] * self._randn(m))
                   .clamp(0, 1))
        m = counts[1]    # uniform noise over a random range
        lo, span = u(m, 0.0, 0.6), u(m, 0.1, 1.0)
        out.append((lo[:, None, None, None] + span[:, None, None, None] * torch.rand(m, 3, 32, 32, generator=g))
                   .clamp(0, 1))
        m = counts[2]    # blank: a flat background with no shape (half of them ShapesWorld's own backgrounds)
        bg = torch.where(torch.rand(m, 1, generator=g) < 0.5, u(m, 0.04, 0.2)[:, None] + u(m * 3, -0.03, 0.03)
                         .view(m, 3), torch.rand(m, 3, generator=g))
        out.append(self._noisy(bg[:, :, None, None].expand(m, 3, 32, 32)))
        m = counts[3]    # a real image mixed with noise
        a = u(m, 0.25, 1.0)[:, None, None, None]
        out.append((1 - a) * self._real(m)[0] + a * (0.5 + _NOISE_STD * self._randn(m)).clamp(0, 1))
        m = counts[4]    # heavy blur
        out.append(self._noisy(gaussian_blur(self._real(m)[0], u(m, 0.3, 1.0) * MAX_BLUR)))
        m = counts[5]    # scrambled pixels
        out.append(_scramble(self._real(m)[0], u(m, 0.15, 1.0).tolist(), g))
        m = counts[6]    # shuffled 4×4 patches (small enough to always cut the shape into pieces)
        out.append(_shuffle_patches(self._real(m)[0], u(m, 0.5, 1.0).tolist(), g, patch=4))
        m = counts[7]    # two to four shapes
        out.append(self._noisy(self.multi[torch.randint(len(self.multi), (m,), generator=g)]))
        return torch.cat(out).clamp(0, 1)

    def batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Images (real first), the real images' labels, and the realness targets (1 real, 0 not)."""
        x, labels = self._real(self.n_pos)
        neg = self._negatives(self.n_neg)
        target = torch.cat([torch.ones(self.n_pos), torch.zeros(self.n_neg)])
        return torch.cat([x, neg]), labels, target


def train_judge(config: JudgeConfig | None = None, desc: str = "training the judge"
                ) -> tuple[Judge, dict[str, list[float]], float]:
    """Train a judge on the CPU (so that it is the same everywhere); return it, its history and the seconds."""
    from .training import train

    config = config if config is not None else JudgeConfig()
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    batches = _Batches(config)
    model = Judge(config).to(memory_format=torch.channels_last)

    def loss_fn(step: int):
        x, labels, target = batches.batch()
        out = model(x)
        n = len(labels["colour"])
        attr = sum(F.cross_entropy(out[k][:n], labels[k]) for k in ATTRIBUTES)
        real = F.binary_cross_entropy_with_logits(out["real"], target)
        return attr + real, {"attributes": attr.item(), "realness": real.item()}

    history = train(model, loss_fn, config.steps, lr=config.lr, weight_decay=0.01, desc=desc)
    return model.eval(), history, time.perf_counter() - start


def evaluate(model: Judge, n: int = 1000, seed: int = 1000, world_seed: int = 0) -> dict[str, float]:
    """Accuracy per attribute on real test and holdout images, the valid fraction of real images and noise,
    and ``kind_shift_{s}px``: the kind accuracy on whole shapes moved by s = 0..4 pixels (:func:`shift_tolerance`)."""
    world = ShapesWorld(seed=world_seed)
    metrics: dict[str, float] = {}
    for split in ("test", "holdout"):
        data = world.sample(n, split=split, seed=seed, captions=None)
        x = data.tensor()
        pred = model.read(x)
        for k in ATTRIBUTES:
            metrics[f"{split}_{k}"] = (pred[k] == torch.from_numpy(data.labels[k])).float().mean().item()
        metrics[f"{split}_valid"] = (model.validity(x) > 0.5).float().mean().item()
    g = torch.Generator().manual_seed(seed)
    noise = {"gaussian": (0.5 + 0.25 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1),
             "uniform": torch.rand(n, 3, 32, 32, generator=g)}
    for name, x in noise.items():
        metrics[f"{name}_noise_valid"] = (model.validity(x) > 0.5).float().mean().item()
    for s, acc in shift_tolerance(model, n=n, world_seed=world_seed).items():
        metrics[f"kind_shift_{s}px"] = acc
    return metrics


_LOADED: dict[str, tuple[Judge, Artifact]] = {}


def judge_identity(config: JudgeConfig | None = None) -> dict:
    """Which judge scores: ``{"config_key": ..., "config": ...}`` (the key :func:`load_judge` caches it
    under, and its :class:`JudgeConfig`). Recorded beside stored scores, so a score made by another
    judge is recognised as such."""
    from .cache import config_key

    config = config if config is not None else JudgeConfig()
    if not isinstance(config, JudgeConfig):
        raise TypeError(f"config must be a JudgeConfig, got {type(config).__name__}")
    return {"config_key": config_key({"model": config.to_dict()}), "config": config.to_dict()}


def load_judge(device: str | torch.device | None = None, verbose: bool = True,
               config: JudgeConfig | None = None) -> tuple[Judge, Artifact]:
    """The course's judge (trained on first use, in a few minutes on one CPU core, then cached).

    Returns ``(model, artifact)``; ``artifact.metrics`` holds its accuracy and validity measured
    when it was trained. The model is kept in memory, so later calls in the same process are free.
    """
    config = config if config is not None else JudgeConfig()
    if not isinstance(config, JudgeConfig):
        raise TypeError(f"config must be a JudgeConfig, got {type(config).__name__}")
    if device is None:
        from .settings import current

        device = current().device
    device = torch.device(device)
    key = {"model": config.to_dict()}
    memo = f"{sorted(key['model'].items())}@{device}"
    if memo in _LOADED:
        return _LOADED[memo]

    def build() -> Artifact:
        model, history, seconds = train_judge(config)
        metrics = {"train_seconds": seconds, **evaluate(model, world_seed=config.world_seed)}
        if verbose:
            print("judge: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return Artifact("judge", key, {k: v.cpu() for k, v in model.state_dict().items()}, metrics, history)

    art = cached("judge", key, build, verbose=verbose)
    model = Judge(config)
    model.load_state_dict(art.state_dict)
    model = model.eval().to(device)
    _LOADED[memo] = (model, art)
    return model, art


# -- scores ---------------------------------------------------------------------------------------
def _as_features(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a tensor or array of shape (N, D), got {type(x).__name__}")
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{what} must have shape (N, D) with N >= 2, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    return x.astype(np.float64)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding -> 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid(feats_a: Any, feats_b: Any) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    ``|μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½)``, with tr (Σa Σb)^½ = tr (Σa^½ Σb Σa^½)^½ computed from
    symmetric eigen-decompositions (stable, and symmetric in a and b up to rounding).
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_b @ root), 0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return max(value, 0.0)


_REFERENCE: dict[str, torch.Tensor] = {}
REFERENCE_SEED = 4242


def reference_images(n: int = 1000) -> torch.Tensor:
    """``n`` real images of ShapesWorld's test split (seed :data:`REFERENCE_SEED`), kept in memory."""
    key = f"test-{n}"
    if key not in _REFERENCE:
        _REFERENCE[key] = ShapesWorld().sample(n, split="test", seed=REFERENCE_SEED, captions=None).tensor()
    return _REFERENCE[key]


def score(images: torch.Tensor, reference: torch.Tensor | None = None,
          labels: Mapping[str, Any] | None = None, model: Judge | None = None) -> dict[str, float]:
    """Score a set of (generated) images with the judge.

    Returns ``"valid"`` (the fraction judged valid), ``"fid"`` (against ``reference`` real images,
    by default 1000 real test images), ``"coverage"`` (the fraction of the 24 colour × kind pairs that
    at least one valid image shows: a diversity measure) and, when ``labels`` maps attributes to the
    intended classes (N,), the accuracy of each of those attributes (prompt faithfulness) and
    ``"faithful"``: the fraction of images that are valid and right on every given attribute.
    ``model`` defaults to :func:`load_judge`'s judge on the CPU.
    """
    images = check_images(images)
    if len(images) < 2:
        raise ValueError("score needs at least 2 images (to fit the FID's Gaussian)")
    if labels is not None:                                  # checked before any work is done
        if not isinstance(labels, Mapping) or not labels:
            raise TypeError("labels must be a dict mapping attribute names to class indices (N,)")
        for k in labels:
            if k not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {k!r}; expected some of {list(ATTRIBUTES)}")
        labels = {k: checks.labels(v, f"labels[{k!r}]", classes=len(ATTRIBUTES[k]), length=len(images)).cpu()
                  for k, v in labels.items()}
    if model is None:
        model = load_judge(device="cpu", verbose=False)[0]
    reference = reference_images() if reference is None else check_images(reference, "reference")
    valid = model.validity(images).cpu() > 0.5
    pred = {k: v.cpu() for k, v in model.read(images).items()}
    combos = pred["colour"] * len(KINDS) + pred["kind"]
    out = {"valid": valid.float().mean().item(),
           "fid": fid(model.features(images), model.features(reference)),
           "coverage": len(torch.unique(combos[valid])) / (len(COLOUR_NAMES) * len(KINDS))}
    if labels is not None:
        right = valid.clone()
        for k, v in labels.items():
            hit = pred[k] == v
            out[k] = hit.float().mean().item()
            right &= hit
        out["faithful"] = right.float().mean().item()
    return out
