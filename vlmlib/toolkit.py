"""The image-generation toolkit: four families of generative models, tiny, on the same real data.

Introduced in chapter 4. The data are scikit-learn's 8×8 handwritten digits (1,797 images, grey
levels 0–16, shipped with the package). Each family has a model, a training function and a
sampler; every sampler counts the network evaluations it spends per sample:

- **GAN** (:class:`Generator`, :class:`Discriminator`, :func:`train_gan`, :func:`sample_gan`):
  one evaluation per sample;
- **autoregressive** (:class:`PixelTransformer` with ``causal=True``, :func:`train_autoregressive`,
  :func:`sample_autoregressive`): pixel by pixel over the 17 grey levels, 64 evaluations;
- **non-autoregressive masked** (``causal=False``, :func:`train_masked`, :func:`sample_masked`):
  MaskGIT's iterative parallel decoding with the cosine schedule :func:`masking_schedule`, one
  evaluation per step;
- **diffusion** (:class:`Denoiser`, :func:`train_diffusion`, :func:`sample_diffusion`): DDPM's
  ε-prediction, sampled with DDIM (η = 0) or DDPM-like (η = 1) steps, one evaluation per step.

The samples are judged by a small digit classifier (:func:`train_evaluator`): **quality** as the
share of samples it classifies confidently and as a Fréchet distance in its feature space to real
held-out digits (:func:`vlmlib.judge.fid`, the formula of chapter 5's FID), **diversity** as how
many of the ten digits appear and the entropy of the class histogram (:meth:`Evaluator.evaluate`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from .judge import fid
from .plotting import progress
from .training import train
from .vit import Block

SIDE = 8                 # the digits are 8×8
PIXELS = SIDE * SIDE     # 64 positions
LEVELS = 17              # grey levels 0, 1, ..., 16
CLASSES = 10

__all__ = [
    "SIDE", "PIXELS", "LEVELS", "CLASSES", "Digits", "load_digits_data", "levels_to_images",
    "images_to_levels", "Generated", "count_calls", "Generator", "Discriminator", "train_gan",
    "sample_gan", "PixelTransformer", "train_autoregressive", "sample_autoregressive",
    "masking_schedule", "train_masked", "sample_masked", "DiffusionSchedule", "Denoiser",
    "add_noise", "train_diffusion", "sample_diffusion", "DigitClassifier", "Evaluator",
    "train_evaluator",
]


# -- the data -----------------------------------------------------------------------------------
@dataclass
class Digits:
    """The 8×8 digits split into train and test: grey levels (N, 8, 8) in 0..16 and labels (N,)."""

    train_levels: torch.Tensor
    train_labels: torch.Tensor
    test_levels: torch.Tensor
    test_labels: torch.Tensor

    def images(self, split: str = "train") -> torch.Tensor:
        """The images of a split as floats in [0, 1], shape (N, 8, 8)."""
        split = checks.choice(split, "split", ("train", "test"))
        return levels_to_images(self.train_levels if split == "train" else self.test_levels)


def load_digits_data(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """scikit-learn's 1,797 handwritten digits, split (stratified by digit) into train and test."""
    test_fraction = checks.number(test_fraction, "test_fraction", 0.0, 1.0, low_open=True, high_open=True)
    seed = checks.integer(seed, "seed", minimum=0)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    levels = torch.from_numpy(data.images.astype(np.int64))           # (1797, 8, 8), 0..16
    labels = torch.from_numpy(data.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           random_state=seed, stratify=data.target)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Digits(levels[train_idx], labels[train_idx], levels[test_idx], labels[test_idx])


def levels_to_images(levels: torch.Tensor) -> torch.Tensor:
    """Grey levels 0..16 -> floats in [0, 1] (same shape)."""
    levels = _as_tensor(levels, "levels", "integer grey levels 0..16")
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise TypeError(f"levels must hold integer grey levels 0..16, got dtype {levels.dtype}")
    _check_range(levels, "levels")
    return levels.float() / (LEVELS - 1)


def images_to_levels(images: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1], shape (N, 8, 8) or (N, 64) -> the nearest grey level 0..16 (long, same shape)."""
    shape = images.shape if isinstance(images, (torch.Tensor, np.ndarray)) else None
    images = _check_images(images)
    return (images * (LEVELS - 1)).round().long().reshape(shape)


# -- checks of arguments (vlmlib.checks does the common ones) ------------------------------------
def _as_tensor(value, name: str, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of {what}, got {type(value).__name__}")
    return value


def _check_range(levels: torch.Tensor, name: str, top: int = LEVELS - 1) -> None:
    if levels.numel() and (levels.min() < 0 or levels.max() > top):
        raise ValueError(f"{name} must lie in 0..{top}, got values from {levels.min().item()} to {levels.max().item()}")


def _check_images(images, name: str = "images", values: bool = True) -> torch.Tensor:
    """Digit images of shape (N, 8, 8) or (N, 64) -> float32 (N, 8, 8).

    With ``values`` (at a function's entry) they must also be finite and in [0, 1]; float64 and
    uint8 images are converted (:func:`vlmlib.checks.images`). Without it (a module's forward, called
    at every training step) only the type and shape are checked, which costs nothing.
    """
    images = _as_tensor(images, name, "shape (N, 8, 8) with values in [0, 1]")
    if images.ndim == 2 and images.shape[1] == PIXELS:
        images = images.reshape(-1, SIDE, SIDE)
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or len(images) == 0:
        raise ValueError(f"{name} must have shape (N, 8, 8) or (N, 64) with N >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point() and images.dtype != torch.uint8:
        raise TypeError(f"{name} must be floats in [0, 1], got dtype {images.dtype}; "
                        "turn grey levels 0..16 into images with levels_to_images")
    if values:
        return checks.images(images[:, None], name, shape=(1, SIDE, SIDE), low=0.0, high=1.0)[:, 0]
    if images.dtype == torch.uint8:
        return images.float() / 255
    return images if images.dtype == torch.float32 else images.float()


def _check_levels(levels, name: str = "levels") -> torch.Tensor:
    """Integer grey levels 0..16 of shape (N, 8, 8) or (N, 64) -> (N, 64)."""
    levels = _as_tensor(levels, name, "integer grey levels 0..16")
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer grey levels 0..16, got dtype {levels.dtype}")
    if levels.ndim == 3 and levels.shape[1:] == (SIDE, SIDE):
        levels = levels.reshape(len(levels), PIXELS)
    if levels.ndim != 2 or levels.shape[1] != PIXELS or len(levels) == 0:
        raise ValueError(f"{name} must have shape (N, 8, 8) or (N, 64) with N >= 1, got {tuple(levels.shape)}")
    _check_range(levels, name)
    return levels.long()


def _positive(value, name: str) -> float:
    return checks.number(value, name, low=0.0, low_open=True)


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.manual_seed(int(torch.seed() % 2**31))
    else:
        g.manual_seed(checks.integer(seed, "seed", minimum=0))
    return g


# -- counting network evaluations ----------------------------------------------------------------
@dataclass
class Generated:
    """What a sampler returns: images (N, 8, 8) in [0, 1], network evaluations per sample, seconds."""

    images: torch.Tensor
    nfe: int
    seconds: float
    extra: dict = field(default_factory=dict)


@contextmanager
def count_calls(module: nn.Module) -> Iterator[dict]:
    """Count the forward calls of ``module`` inside the block: ``with count_calls(net) as c: ...``.

    Every call runs the network once on the whole batch, so ``c["calls"]`` is the number of
    network evaluations each sample needed.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    box = {"calls": 0}

    def hook(mod, args, output):
        box["calls"] += 1

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


# -- GAN ------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """An MLP from a latent vector z ~ N(0, I) to an 8×8 image in [0, 1]."""

    def __init__(self, latent: int = 32, hidden: int = 256):
        super().__init__()
        self.latent = checks.integer(latent, "latent", minimum=1)
        hidden = checks.integer(hidden, "hidden", minimum=1)
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, PIXELS))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = _as_tensor(z, "z", f"latent vectors (B, {self.latent})")
        if z.ndim != 2 or z.shape[1] != self.latent:
            raise ValueError(f"z must have shape (B, {self.latent}), got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"z must be floating point, got dtype {z.dtype}")
        z = z if z.dtype == torch.float32 else z.float()
        return torch.sigmoid(self.net(z)).reshape(-1, SIDE, SIDE)


class Discriminator(nn.Module):
    """An MLP from an 8×8 image in [0, 1] to one logit: real (positive) or generated (negative)."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        hidden = checks.integer(hidden, "hidden", minimum=1)
        self.net = nn.Sequential(nn.Linear(PIXELS, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = _check_images(images, values=False)          # called at every step: shape only
        return self.net(images.reshape(len(images), PIXELS) * 2 - 1)[:, 0]


def train_gan(images: torch.Tensor, steps: int, batch: int = 128, lr: float = 2e-4, latent: int = 32,
              hidden: int = 256, seed: int = 0, desc: str = "GAN") -> tuple[Generator, Discriminator, dict]:
    """Train a GAN with the non-saturating loss (Goodfellow et al. 2014) and Adam(β₁ = 0.5).

    Each step updates the discriminator once, then the generator once. Returns the generator, the
    discriminator and the history of both losses and of D's mean output on real and fake images.
    """
    images = _check_images(images)
    steps, batch = checks.integer(steps, "steps", minimum=1), checks.integer(batch, "batch", minimum=1)
    lr = _positive(lr, "lr")
    torch.manual_seed(checks.integer(seed, "seed", minimum=0))
    gen, disc = Generator(latent, hidden), Discriminator(hidden)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    history: dict[str, list[float]] = {"discriminator loss": [], "generator loss": [],
                                       "D(real)": [], "D(fake)": []}
    bar = progress(range(steps), desc=desc)
    for step in bar:
        real = images[torch.randint(len(images), (batch,))]
        fake = gen(torch.randn(batch, latent))
        d_real, d_fake = disc(real), disc(fake.detach())
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()   # -log D(x) - log(1 - D(G(z)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-disc(fake)).mean()                             # -log D(G(z))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if not (torch.isfinite(loss_d) and torch.isfinite(loss_g)):
            raise FloatingPointError(f"the GAN losses became {loss_d.item()}, {loss_g.item()} at step {step}")
        history["discriminator loss"].append(loss_d.item())
        history["generator loss"].append(loss_g.item())
        history["D(real)"].append(torch.sigmoid(d_real).mean().item())
        history["D(fake)"].append(torch.sigmoid(d_fake).mean().item())
        if step % 25 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(d=f"{loss_d.item():.2f}", g=f"{loss_g.item():.2f}")
    gen.eval()
    disc.eval()
    return gen, disc, history


@torch.no_grad()
def sample_gan(generator: Generator, n: int, seed: int | None = 0) -> Generated:
    """Draw ``n`` images: one generator evaluation per sample."""
    if not isinstance(generator, Generator):
        raise TypeError(f"generator must be a Generator, got {type(generator).__name__}")
    n = checks.integer(n, "n", minimum=1)
    generator.eval()
    start = time.perf_counter()
    z = torch.randn(n, generator.latent, generator=_generator(seed))
    with count_calls(generator) as calls:
        images = generator(z)
    return Generated(images, calls["calls"], time.perf_counter() - start)


# -- the pixel transformer: autoregressive (causal) or masked (bidirectional) ----------------------
class PixelTransformer(nn.Module):
    """A small transformer over the 64 pixels, each a token of 17 grey levels plus one special token.

    ``causal=True``: the autoregressive model. The special token is a start token; the input is
    the image shifted right by one, and ``logits[:, i]`` predicts pixel ``i`` from pixels ``< i``.
    ``causal=False``: the masked model. The special token is [MASK]; every position sees every other,
    and ``logits[:, i]`` predicts pixel ``i`` from the visible pixels.
    """

    def __init__(self, causal: bool, dim: int = 64, depth: int = 2, heads: int = 4, mlp_ratio: int = 2):
        super().__init__()
        if not isinstance(causal, (bool, np.bool_)):
            raise TypeError(f"causal must be True or False, got {causal!r}")
        causal = bool(causal)
        dim, depth, heads = checks.integer(dim, "dim", minimum=1), checks.integer(depth, "depth", minimum=1), checks.integer(heads, "heads", minimum=1)
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.causal, self.special = causal, LEVELS          # token id 17: start or [MASK]
        self.embed = nn.Embedding(LEVELS + 1, dim)
        self.pos = nn.Parameter(torch.randn(1, PIXELS, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, LEVELS)
        self.register_buffer("mask", torch.ones(PIXELS, PIXELS, dtype=torch.bool).tril(), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, 64) of ids 0..17 -> logits (B, 64, 17). For ``causal=True`` pass the pixels
        themselves: the shift right (start token first) happens here, and a prefix (B, L ≤ 64)
        gives the logits of its L pixels (they depend on nothing after them)."""
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.dtype == torch.bool:
            got = f"dtype {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise TypeError(f"tokens must be an integer tensor of grey levels 0..16 (17: [MASK] or start), got {got}")
        ok = tokens.ndim == 2 and (0 < tokens.shape[1] <= PIXELS if self.causal else tokens.shape[1] == PIXELS)
        if not ok:
            raise ValueError(f"tokens must have shape (B, {PIXELS}), got {tuple(tokens.shape)}")
        L = tokens.shape[1]
        if self.causal:
            start = torch.full_like(tokens[:, :1], self.special)
            tokens = torch.cat([start, tokens[:, :-1]], dim=1)
        try:                                                   # checked only when it fails: no cost per step
            z = self.embed(tokens) + self.pos[:, :L]
        except IndexError:
            _check_range(tokens, "tokens", top=LEVELS)
            raise
        for block in self.blocks:
            z = block(z, self.mask[:L, :L] if self.causal else None)
        return self.head(self.norm(z))


def _sample_logits(logits: torch.Tensor, temperature: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one level per row of ``logits`` (..., 17); return it and its probability."""
    probs = (logits / temperature).softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    choice = torch.multinomial(flat, 1, generator=g)
    return choice.reshape(probs.shape[:-1]), flat.gather(1, choice).reshape(probs.shape[:-1])


def _train_tokens(model: PixelTransformer, loss_fn, steps: int, lr: float, desc: str) -> dict:
    return train(model, loss_fn, steps, lr=lr, weight_decay=0.01, desc=desc)


def train_autoregressive(levels: torch.Tensor, steps: int, batch: int = 64, lr: float = 3e-3, dim: int = 64,
                         depth: int = 2, heads: int = 4, seed: int = 0,
                         desc: str = "autoregressive") -> tuple[PixelTransformer, dict]:
    """Train a causal pixel transformer by next-pixel cross-entropy (teacher forcing).

    The history's ``loss`` is in nats per pixel; ``bits per pixel`` is the same in bits.
    """
    levels = _check_levels(levels)
    steps, batch = checks.integer(steps, "steps", minimum=1), checks.integer(batch, "batch", minimum=1)
    lr = _positive(lr, "lr")
    torch.manual_seed(checks.integer(seed, "seed", minimum=0))
    model = PixelTransformer(True, dim, depth, heads)

    def loss_fn(step):
        x = levels[torch.randint(len(levels), (batch,))]
        loss = F.cross_entropy(model(x).reshape(-1, LEVELS), x.reshape(-1))
        return loss, {"bits per pixel": loss.detach() / math.log(2)}

    return model, _train_tokens(model, loss_fn, steps, lr, desc)


@torch.no_grad()
def sample_autoregressive(model: PixelTransformer, n: int, temperature: float = 1.0,
                          seed: int | None = 0) -> Generated:
    """Draw ``n`` images pixel by pixel in raster order: 64 network evaluations per sample.

    Evaluation i reads only the i pixels sampled so far (a causal model's logits for pixel i do not
    depend on later pixels), so it costs less as the prefix is shorter.
    """
    if not isinstance(model, PixelTransformer) or not model.causal:
        raise TypeError("model must be a PixelTransformer with causal=True")
    n, temperature = checks.integer(n, "n", minimum=1), _positive(temperature, "temperature")
    g = _generator(seed)
    model.eval()
    start = time.perf_counter()
    x = torch.zeros(n, PIXELS, dtype=torch.long)
    with count_calls(model) as calls:
        for i in range(PIXELS):
            logits = model(x[:, :i + 1])[:, i]          # pixel i depends on pixels < i only
            x[:, i] = _sample_logits(logits, temperature, g)[0]
    images = levels_to_images(x.reshape(n, SIDE, SIDE))
    return Generated(images, calls["calls"], time.perf_counter() - start)


def masking_schedule(n_tokens: int, steps: int) -> list[int]:
    """MaskGIT's cosine schedule: how many tokens are still masked after each of ``steps`` steps.

    After step t (1..T) a share cos(π/2 · t/T) of the N tokens stays masked, rounded down, and each
    step unmasks at least one token; after the last step none is masked. For N = 64, T = 8:
    [62, 59, 53, 45, 35, 24, 12, 0]. The paper (Chang et al. 2022) writes the count rounded up,
    ⌈γ(t/T) N⌉; its released decoding code rounds it down and clamps it so that every step decodes
    a token, and this function follows the code.
    """
    n_tokens = checks.integer(n_tokens, "n_tokens", minimum=1)
    steps = checks.integer(steps, "steps", minimum=1, maximum=n_tokens)
    counts, previous = [], n_tokens
    for t in range(1, steps + 1):
        masked = math.floor(n_tokens * math.cos(math.pi / 2 * t / steps) + 1e-9)
        masked = max(0, min(masked, previous - 1))
        counts.append(masked)
        previous = masked
    counts[-1] = 0
    return counts


def train_masked(levels: torch.Tensor, steps: int, batch: int = 64, lr: float = 3e-3, dim: int = 64,
                 depth: int = 2, heads: int = 4, seed: int = 0,
                 desc: str = "masked") -> tuple[PixelTransformer, dict]:
    """Train a bidirectional pixel transformer MaskGIT's way: for each image, draw r ~ U(0, 1),
    mask ⌈cos(π/2 · r) · 64⌉ random pixels (rounded up as in the paper, so at least one) and predict
    them (cross-entropy on the masked pixels)."""
    levels = _check_levels(levels)
    steps, batch = checks.integer(steps, "steps", minimum=1), checks.integer(batch, "batch", minimum=1)
    lr = _positive(lr, "lr")
    torch.manual_seed(checks.integer(seed, "seed", minimum=0))
    model = PixelTransformer(False, dim, depth, heads)

    def loss_fn(step):
        x = levels[torch.randint(len(levels), (batch,))]
        ratio = torch.cos(math.pi / 2 * torch.rand(batch, 1))
        n_masked = (ratio * PIXELS).ceil().clamp(min=1)
        rank = torch.rand(batch, PIXELS).argsort(1).argsort(1)      # a random order of the pixels
        masked = rank < n_masked
        logits = model(torch.where(masked, model.special, x))
        loss = F.cross_entropy(logits[masked], x[masked])
        return loss, {"masked share": masked.float().mean()}

    return model, _train_tokens(model, loss_fn, steps, lr, desc)


@torch.no_grad()
def sample_masked(model: PixelTransformer, n: int, steps: int = 8, temperature: float = 1.0,
                  choice_temperature: float = 4.5, seed: int | None = 0) -> Generated:
    """Draw ``n`` images by MaskGIT's iterative parallel decoding: one network evaluation per step.

    Start with every pixel masked. At each step, predict all pixels at once and sample a level for
    each masked one; keep the most confident samples and mask the rest again, so that as many stay
    masked as :func:`masking_schedule` says. The confidence is the sampled level's log-probability
    plus Gumbel noise scaled by ``choice_temperature · (1 − t/T)`` (more random choices early;
    4.5 is MaskGIT's default). ``extra["masked"]`` lists how many pixels were masked after each
    step and ``extra["states"]`` the tokens (N, 64) after each step, 17 standing for [MASK].
    """
    if not isinstance(model, PixelTransformer) or model.causal:
        raise TypeError("model must be a PixelTransformer with causal=False")
    n, temperature = checks.integer(n, "n", minimum=1), _positive(temperature, "temperature")
    steps = checks.integer(steps, "steps", minimum=1, maximum=PIXELS)
    choice_temperature = checks.number(choice_temperature, "choice_temperature", low=0.0)
    g = _generator(seed)
    model.eval()
    start = time.perf_counter()
    x = torch.full((n, PIXELS), model.special, dtype=torch.long)
    schedule, trace, states = masking_schedule(PIXELS, steps), [], []
    with count_calls(model) as calls:
        for t, keep_masked in enumerate(schedule, 1):
            still = x == model.special
            sampled, prob = _sample_logits(model(x), temperature, g)
            sampled = torch.where(still, sampled, x)
            u = torch.rand(n, PIXELS, generator=g).clamp(1e-20, 1 - 1e-7)
            gumbel = -torch.log(-torch.log(u))
            confidence = prob.clamp_min(1e-20).log() + choice_temperature * (1 - t / steps) * gumbel
            confidence = torch.where(still, confidence, torch.inf)          # decoded pixels stay
            lowest = confidence.argsort(1)[:, :keep_masked]
            remask = torch.zeros_like(still).scatter_(1, lowest, True)
            x = torch.where(remask, model.special, sampled)
            trace.append(int((x == model.special).sum(1).max()))
            states.append(x.clone())
    images = levels_to_images(x.reshape(n, SIDE, SIDE))
    return Generated(images, calls["calls"], time.perf_counter() - start, {"masked": trace, "states": states})


# -- diffusion ------------------------------------------------------------------------------------
class DiffusionSchedule:
    """DDPM's noise schedule: β linear from 1e-4 to 0.02 over T steps, ᾱ_t = Π_{s≤t} (1 − β_s).

    Index k (0..T−1) is the paper's t = k + 1, as in ``diffusers``.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.timesteps = checks.integer(timesteps, "timesteps", minimum=1)
        beta_start = checks.number(beta_start, "beta_start", 0.0, 1.0, low_open=True, high_open=True)
        beta_end = checks.number(beta_end, "beta_end", 0.0, 1.0, low_open=True, high_open=True)
        if not beta_start <= beta_end:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.betas = torch.linspace(beta_start, beta_end, self.timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The forward process in closed form: x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε.

    ``alpha_bar`` holds one ᾱ_t per image (shape (B,)) and broadcasts over the other dimensions.
    """
    x0, noise = _as_tensor(x0, "x0", "images (B, ...)"), _as_tensor(noise, "noise", "noise (B, ...)")
    alpha_bar = _as_tensor(alpha_bar, "alpha_bar", "one ᾱ_t per image (B,)")
    for name, value in (("x0", x0), ("noise", noise), ("alpha_bar", alpha_bar)):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {value.dtype}")
    if x0.ndim == 0 or x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape (B, ...)")
    if alpha_bar.shape != (len(x0),):
        raise ValueError(f"alpha_bar must have shape ({len(x0)},), one ᾱ_t per image, got {tuple(alpha_bar.shape)}")
    if not torch.isfinite(alpha_bar).all() or alpha_bar.min() < 0 or alpha_bar.max() > 1:
        raise ValueError(f"alpha_bar must lie in [0, 1], got values from {alpha_bar.min().item():.3g} "
                         f"to {alpha_bar.max().item():.3g}")
    return _add_noise(x0, noise, alpha_bar)


def _add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """:func:`add_noise` without the checks, for the training loop."""
    a = alpha_bar.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


class Denoiser(nn.Module):
    """ε_θ(x_t, t): an MLP on the 64 pixels with a sinusoidal time embedding added to each layer."""

    def __init__(self, hidden: int = 256, depth: int = 3, timesteps: int = 1000):
        super().__init__()
        self.hidden, self.timesteps = checks.integer(hidden, "hidden", minimum=1), checks.integer(timesteps, "timesteps", minimum=1)
        depth = checks.integer(depth, "depth", minimum=1)
        self.inp = nn.Linear(PIXELS, hidden)
        self.time = nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                                  nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, PIXELS))

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(10_000) * torch.arange(32) / 32)
        angles = t.float()[:, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, 64) noisy pixels in about [−1, 1], t (B,) step indices 0..T−1 -> predicted ε (B, 64)."""
        x = _as_tensor(x, "x", f"noisy pixels (B, {PIXELS})")
        t = _as_tensor(t, "t", "step indices (B,)")
        if x.ndim != 2 or x.shape[1] != PIXELS:
            raise ValueError(f"x must have shape (B, {PIXELS}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got dtype {x.dtype}")
        if t.shape != (len(x),):
            raise ValueError(f"t must have shape ({len(x)},), got {tuple(t.shape)}")
        x = x if x.dtype == torch.float32 else x.float()
        h, e = self.inp(x), self.time(self.embed_time(t))
        for layer in self.layers:
            h = h + layer(h + e)
        return self.out(h)


def train_diffusion(images: torch.Tensor, steps: int, batch: int = 128, lr: float = 2e-3, hidden: int = 256,
                    depth: int = 3, timesteps: int = 1000, seed: int = 0,
                    desc: str = "diffusion") -> tuple[Denoiser, dict]:
    """Train ε-prediction with DDPM's L_simple: ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖², t uniform.

    Images in [0, 1] are scaled to [−1, 1]. What is returned is an exponential moving average of
    the weights, as DDPM samples from one too. DDPM's decay was 0.9999 (Ho et al. 2020, App. B;
    ``ema_decay=0.9999`` in its released code), an average over about 10,000 steps: far too long a
    memory for a run of a few thousand steps, so the decay here is 0.995 (about 200 steps), warmed
    up as min(0.995, (1 + step)/(10 + step)).
    """
    images = _check_images(images)
    steps, batch = checks.integer(steps, "steps", minimum=1), checks.integer(batch, "batch", minimum=1)
    lr = _positive(lr, "lr")
    torch.manual_seed(checks.integer(seed, "seed", minimum=0))
    model = Denoiser(hidden, depth, timesteps)
    ema = Denoiser(hidden, depth, timesteps)
    ema.load_state_dict(model.state_dict())
    schedule = DiffusionSchedule(timesteps)
    data = images.reshape(len(images), PIXELS) * 2 - 1

    def loss_fn(step):
        x0 = data[torch.randint(len(data), (batch,))]
        t = torch.randint(timesteps, (batch,))
        noise = torch.randn_like(x0)
        xt = _add_noise(x0, noise, schedule.alphas_cumprod[t])
        return F.mse_loss(model(xt, t), noise)

    def after_step(step):
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)

    history = train(model, loss_fn, steps, lr=lr, weight_decay=0.0, desc=desc,
                    after_step=after_step)
    ema.eval()
    return ema, history


@torch.no_grad()
def sample_diffusion(model: Denoiser, n: int, steps: int = 50, eta: float = 0.0, seed: int | None = 0) -> Generated:
    """Draw ``n`` images from noise in ``steps`` denoising steps: one network evaluation per step.

    The steps are an evenly spaced subsequence of the T training steps that starts at the last one
    (``diffusers``' "trailing" spacing: T−1, T−1−T/steps, ...), each the DDIM update
    (Song et al. 2021) x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ²) ε_θ + σ z, with x̂₀ clipped to
    [−1, 1]; σ = 0 for ``eta=0`` (deterministic DDIM), and ``eta=1, steps=T`` is DDPM's ancestral
    sampling with σ² = β̃_t.
    """
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a Denoiser, got {type(model).__name__}")
    n = checks.integer(n, "n", minimum=1)
    steps = checks.integer(steps, "steps", minimum=1, maximum=model.timesteps)
    eta = checks.number(eta, "eta", 0.0, 1.0)
    g = _generator(seed)
    model.eval()
    start = time.perf_counter()
    abar = DiffusionSchedule(model.timesteps).alphas_cumprod
    T = model.timesteps                       # "trailing" spacing: the first step is t = T
    ts = [int(v) for v in (np.round(np.arange(T, 0, -T / steps)) - 1)[:steps]]
    x = torch.randn(n, PIXELS, generator=g)
    with count_calls(model) as calls:
        for i, t in enumerate(ts):
            a_t = abar[t].item()
            a_prev = abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
            eps = model(x, torch.full((n,), t, dtype=torch.long))
            x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)      # consistent with the clipped x̂₀
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(n, PIXELS, generator=g)
    images = ((x.clamp(-1, 1) + 1) / 2).reshape(n, SIDE, SIDE)
    return Generated(images, calls["calls"], time.perf_counter() - start)


# -- the evaluation -------------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """An MLP digit classifier; :meth:`features` is its last hidden layer (used for the Fréchet distance)."""

    def __init__(self, hidden: int = 128, features: int = 64):
        super().__init__()
        hidden, features = checks.integer(hidden, "hidden", minimum=1), checks.integer(features, "features", minimum=1)
        self.body = nn.Sequential(nn.Linear(PIXELS, hidden), nn.ReLU(), nn.Dropout(0.1),
                                  nn.Linear(hidden, features), nn.ReLU())
        self.head = nn.Linear(features, CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        images = _check_images(images, values=False)          # called at every step: shape only
        return self.body(images.reshape(len(images), PIXELS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class Evaluator:
    """A trained digit classifier and the real held-out digits it compares samples with."""

    classifier: DigitClassifier
    reference: torch.Tensor            # real held-out images (N, 8, 8)
    test_accuracy: float
    confident_at: float = 0.9
    min_share: float = 0.02

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor) -> dict[str, float]:
        """Quality and diversity of a set of samples (N, 8, 8) in [0, 1]:

        - ``confident``: share of samples whose top class probability is at least ``confident_at``;
        - ``mean max prob``: the mean top class probability;
        - ``frechet``: Fréchet distance to the real held-out digits in the classifier's features
          (:func:`vlmlib.judge.fid`);
        - ``coverage``: how many of the 10 digits get at least ``min_share`` of the confidently
          classified samples;
        - ``entropy``: entropy in bits of the histogram of confident classes (log₂ 10 ≈ 3.32 when
          all digits are equally frequent).
        """
        images = _check_images(images)
        if len(images) < 2:
            raise ValueError(f"images must hold at least 2 samples for the Fréchet distance, got {len(images)}")
        self.classifier.eval()
        probs = self.classifier(images).softmax(-1)
        top, label = probs.max(-1)
        confident = top >= self.confident_at
        counts = torch.bincount(label[confident], minlength=CLASSES).double()
        share = counts / counts.sum().clamp_min(1)
        entropy = max(0.0, -(share[share > 0] * share[share > 0].log2()).sum().item())
        covered = int((counts >= max(1.0, self.min_share * len(images))).sum())
        fd = fid(self.classifier.features(images), self.classifier.features(self.reference))
        return {"confident": confident.float().mean().item(), "mean max prob": top.mean().item(),
                "frechet": fd, "coverage": covered, "entropy": entropy,
                "histogram": counts.long().tolist()}


def train_evaluator(digits: Digits, steps: int = 1500, batch: int = 128, lr: float = 3e-3, seed: int = 0,
                    outlier_weight: float = 0.5, desc: str = "digit classifier") -> tuple[Evaluator, dict]:
    """Train the judge: a digit classifier on the real training digits, tested on the held-out ones.

    So that a confident verdict means "this looks like a digit", it also sees *outliers* (uniform
    noise, and real digits with their pixels shuffled) with a uniform target over the ten classes
    (outlier exposure, Hendrycks et al. 2019), weighted by ``outlier_weight``.
    """
    if not isinstance(digits, Digits):
        raise TypeError(f"digits must be a Digits (from load_digits_data), got {type(digits).__name__}")
    steps, batch = checks.integer(steps, "steps", minimum=1), checks.integer(batch, "batch", minimum=1)
    lr = _positive(lr, "lr")
    outlier_weight = checks.number(outlier_weight, "outlier_weight", low=0.0)
    torch.manual_seed(checks.integer(seed, "seed", minimum=0))
    model = DigitClassifier()
    x, y = digits.images("train"), digits.train_labels

    def loss_fn(step):
        i = torch.randint(len(x), (batch,))
        real = x[i] + 0.03 * torch.randn(batch, SIDE, SIDE)        # a little noise: samples are not exact
        logits = model(real.clamp(0, 1))
        loss = F.cross_entropy(logits, y[i])
        half = batch // 2
        noise = torch.rand(half, SIDE, SIDE) * torch.rand(half, 1, 1)
        flat = x[i[:half]].reshape(half, PIXELS)
        shuffled = flat.gather(1, torch.rand(half, PIXELS).argsort(1)).reshape(half, SIDE, SIDE)
        outliers = model(torch.cat([noise, shuffled]))
        loss = loss + outlier_weight * (-outliers.log_softmax(-1).mean())
        return loss, {"accuracy": (logits.argmax(-1) == y[i]).float().mean()}

    history = train(model, loss_fn, steps, lr=lr, desc=desc)
    with torch.no_grad():
        accuracy = (model(digits.images("test")).argmax(-1) == digits.test_labels).float().mean().item()
    return Evaluator(model, digits.images("test"), accuracy), history
