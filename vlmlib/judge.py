"""The judge: a small classifier that scores images as ShapesWorld would.

Used from chapter 4 on to score generated images; it stands in for the Inception and CLIP scores of
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
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import Artifact, cached
from .shapesworld import ATTRIBUTES, COLOUR_NAMES, KINDS, ShapesWorld

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
    feature_dim: int = 128        # the penultimate layer (FID features)
    steps: int = 1000
    batch_size: int = 128
    real_fraction: float = 0.5    # of each batch; the rest are negatives
    lr: float = 6e-3
    n_train: int = 8_000          # real training images (ShapesWorld split "all", so every combination)
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

    def to_dict(self) -> dict:
        return asdict(self)


# -- checking inputs ------------------------------------------------------------------------------
def check_images(images: Any, what: str = "images") -> torch.Tensor:
    """Check that ``images`` is a float tensor (N, 3, 32, 32) of finite values in [0, 1]; return it."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (N, 3, 32, 32), got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"{what} must be floating point with values in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise ValueError(f"{what} must have shape (N, 3, 32, 32), got {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError(f"{what} is empty")
    if not torch.isfinite(images).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{what} must have values in [0, 1], got [{lo:.3g}, {hi:.3g}]; "
                         "rescale them (e.g. (x + 1) / 2) and clamp first")
    return images


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


# -- the network ----------------------------------------------------------------------------------
class Judge(nn.Module):
    """A small CNN: three stride-2 stages (32 → 16 → 8 → 4 pixels), a feature layer, five heads.

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
        for cout in c.channels:                                # downsampling at once keeps a CPU step fast
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
            cin = cout
        self.body = nn.Sequential(*layers)                                                  # (N, C, 4, 4)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(cin * 16, c.feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(c.feature_dim, len(v)) for name, v in ATTRIBUTES.items()})
        self.real = nn.Linear(c.feature_dim, 1)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.cat([images, self.coords.expand(len(images), -1, -1, -1)], dim=1)
        x = x.contiguous(memory_format=torch.channels_last)             # about 1.5× faster convolutions on CPUs
        return self.fc(self.body(x))

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
        return self._noisy(x), labels

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
    """Accuracy per attribute on real test and holdout images, and the valid fraction of real images and noise."""
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
    return metrics


_LOADED: dict[str, tuple[Judge, Artifact]] = {}


def load_judge(device: str | torch.device | None = None, verbose: bool = True,
               config: JudgeConfig | None = None) -> tuple[Judge, Artifact]:
    """The course's judge (trained on first use, in under a minute on one CPU core, then cached).

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
    if model is None:
        model = load_judge(device="cpu", verbose=False)[0]
    reference = reference_images() if reference is None else check_images(reference, "reference")
    if len(images) < 2:
        raise ValueError("score needs at least 2 images (to fit the FID's Gaussian)")
    valid = model.validity(images).cpu() > 0.5
    pred = {k: v.cpu() for k, v in model.read(images).items()}
    combos = pred["colour"] * len(KINDS) + pred["kind"]
    out = {"valid": valid.float().mean().item(),
           "fid": fid(model.features(images), model.features(reference)),
           "coverage": len(torch.unique(combos[valid])) / (len(COLOUR_NAMES) * len(KINDS))}
    if labels is not None:
        if not isinstance(labels, Mapping) or not labels:
            raise TypeError("labels must be a dict mapping attribute names to class indices (N,)")
        right = valid.clone()
        for k, v in labels.items():
            if k not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {k!r}; expected some of {list(ATTRIBUTES)}")
            v = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).cpu().long()
            if v.shape != (len(images),):
                raise ValueError(f"labels[{k!r}] must have shape ({len(images)},), got {tuple(v.shape)}")
            hit = pred[k] == v
            out[k] = hit.float().mean().item()
            right &= hit
        out["faithful"] = right.float().mean().item()
    return out
