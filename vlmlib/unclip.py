"""DALL-E 2 (unCLIP) in miniature: a prior from CLIP text embeddings to CLIP image embeddings, and a
decoder that draws an image from a CLIP image embedding.

Introduced in chapter 6. unCLIP (Ramesh et al., 2022) factorises text to image through CLIP's
image embedding z_i: P(x | y) = P(x | z_i, y) · P(z_i | y). Here

- the **prior** P(z_i | y) is a diffusion model over the embedding vector: a small causal transformer
  reads [the CLIP text embedding z_t, the timestep, the noised z_i, a query] and predicts the clean
  z_i directly (the paper's choice, with an MSE loss; the paper's sequence also starts with the
  caption's tokens, left out here). At sampling, two candidates are drawn and the one
  with the larger z_i · z_t is kept (as in the paper). It is compared with two simple baselines: a
  regression from z_t to z_i, and no prior at all (z_t fed to the decoder in place of z_i);
- the **decoder** P(x | z_i) is a ``diffusers`` ``UNet2DConditionModel`` whose condition is z_i,
  projected into four extra context tokens for cross-attention and added to the timestep
  embedding, as in the paper (which also gives the decoder the caption; this one reads z_i alone).
  z_i is zeroed 10% of the time in training, so classifier-free guidance works.

Because the decoder reads an image embedding, it can make **variations** of an image (encode it
with CLIP, decode several times) and **interpolate** between two images (slerp their embeddings),
which a model conditioned on text alone cannot do. The embeddings are chapter 2's CLIP's; its
weights are stored with the decoder, so the shipped decoder always reads the embeddings it was
trained on. The 64-dimensional embedding is diffused as a (B, 64, 1, 1) tensor, so chapter 5's DDIM
step applies unchanged, scaled by √64 so its entries have unit variance like an image's pixels.

The priors' training and the seeded decoding can go through the artifact cache, keyed by everything
that determines the result: :func:`build_prior`, :func:`build_regression_prior`,
:func:`decode_cached` and :func:`generate_cached`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from . import diffusion as D
from .cache import Artifact, cached
from .text2image import T2IConfig, _own_random_state, build_cond_unet, scenes

#: Extra context tokens made from the CLIP image embedding (the paper uses four).
CONTEXT_TOKENS = 4
#: The shipped decoder (and the CLIP it reads): ``vlmlib/weights/unclip-decoder``.
DECODER_NAME = "unclip-decoder"


# -- CLIP embeddings --------------------------------------------------------------------------------
@torch.no_grad()
def image_embeddings(clip_model, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Unit-length CLIP image embeddings (N, E) of images (N, 3, 32, 32) in [0, 1]."""
    return torch.cat([clip_model.encode_image(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def text_embeddings(clip_model, prompts: Sequence[str]) -> torch.Tensor:
    """Unit-length CLIP text embeddings (N, E) of prompts."""
    from .clip import embed_texts

    return embed_texts(clip_model, list(prompts))


def slerp(a: torch.Tensor, b: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors a and b (…, E) at fraction w (0: a, 1: b)."""
    w = torch.as_tensor(w, dtype=a.dtype)
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.arccos(cos)
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)


# -- the decoder ------------------------------------------------------------------------------------
class Decoder(nn.Module):
    """``model(x_t, t, z_i)``: the denoiser conditioned on a CLIP image embedding z_i (B, E); z_i = 0 is
    "no condition"."""

    def __init__(self, config: T2IConfig, embed_dim: int = 64):
        super().__init__()
        if not isinstance(config, T2IConfig):
            raise TypeError(f"config must be a T2IConfig, got {type(config).__name__}")
        self.config, self.embed_dim = config, checks.integer(embed_dim, "embed_dim", minimum=1)
        # z_i is standardised per dimension (statistics of the training embeddings): CLIP's unit
        # vectors differ most by colour, and position or kind move them only a little
        self.register_buffer("z_mean", torch.zeros(embed_dim))
        self.register_buffer("z_std", torch.ones(embed_dim))
        self.to_tokens = nn.Linear(embed_dim, CONTEXT_TOKENS * config.cross_attention_dim)
        self.unet = build_cond_unet(config, config.cross_attention_dim, embed_dim)
        self.schedule = config.make_schedule()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        D._check_images(x_t, "x_t")
        if not isinstance(z, torch.Tensor) or z.shape != (len(x_t), self.embed_dim):
            raise ValueError(f"z must be the CLIP image embeddings ({len(x_t)}, {self.embed_dim}), "
                             f"got {tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        t = D._check_t(t, len(x_t), c.T)
        given = (z != 0).any(-1, keepdim=True)                 # z = 0 stays 0: "no condition"
        z = (z - self.z_mean) / self.z_std * given
        context = self.to_tokens(z).view(len(z), CONTEXT_TOKENS, c.cross_attention_dim)
        return self.unet(x_t, t, encoder_hidden_states=context, class_labels=z).sample


@dataclass
class DecoderRecipe:
    """How the decoder is trained (one-shape scenes of the ``train`` split)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: float = 0.05
    ema_decay: float = 0.995
    n_train: int = 20_000
    cond_dropout: float = 0.1            # z_i zeroed this often (the paper: 10%)
    min_snr_gamma: float = 5.0           # the x₀ error weighted by clamp(SNR, 1, 5), as text2image.T2IRecipe
    snr_floor: float = 1.0
    seed: int = 0
    world_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def train_decoder(clip_model, config: T2IConfig, recipe: DecoderRecipe, desc: str = "training the decoder"):
    """Train the decoder on one-shape scenes and their CLIP image embeddings; ``(EMA model, history, seconds)``."""
    torch.manual_seed(recipe.seed)
    images32, _ = scenes(recipe.n_train, "one", "train", recipe.seed, recipe.world_seed)
    z_all = image_embeddings(clip_model, images32)
    images = D.to_model_space(images32, config.image_size)
    model = Decoder(config, z_all.shape[1])
    model.z_mean.copy_(z_all.mean(0))
    model.z_std.copy_(z_all.std(0).clamp(min=1e-4))
    g = torch.Generator().manual_seed(recipe.seed)

    def batch(step: int):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=g)
        z = z_all[idx] * (torch.rand(recipe.batch_size, 1, generator=g) >= recipe.cond_dropout)
        return images[idx], z

    state, history, seconds = D.fit(model, batch, recipe.steps, recipe.lr, recipe.warmup, recipe.ema_decay, g,
                                    recipe.min_snr_gamma, desc, snr_floor=recipe.snr_floor)
    ema_model = Decoder(config, z_all.shape[1])
    ema_model.load_state_dict(state)
    return ema_model.eval(), history, seconds


@torch.no_grad()
def decode(model: Decoder, z: torch.Tensor, guidance: float = 3.0, steps: int = 20,
           generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
           threshold: str = "static", show_progress: bool = False) -> torch.Tensor:
    """Images (N, 3, 32, 32) drawn by the decoder from image embeddings z (N, E), with guidance w
    (ε̃ = ε(x, 0) + w·(ε(x, z) − ε(x, 0))). ``noise`` fixes the starting x_T (N, 3, S, S)."""
    if not isinstance(model, Decoder):
        raise TypeError(f"model must be a Decoder, got {type(model).__name__}")
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != model.embed_dim:
        raise ValueError(f"z must be image embeddings (N, {model.embed_dim})")
    guidance = checks.number(guidance, "guidance", low=0.0)
    c = model.config
    shape = (len(z), 3, c.image_size, c.image_size)
    if noise is None:
        noise = torch.randn(shape, generator=generator)
    elif noise.shape != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    null = torch.zeros_like(z)

    def predict(x, tt):
        if guidance == 1:
            return model(x, tt, z)
        out_u, out_c = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([null, z])).chunk(2)
        return D.guide(out_u, out_c, guidance)

    return D.denoise_loop(predict, noise, model.schedule, c.prediction_type, steps, "ddim", generator=generator,
                          threshold=threshold, desc="decoding", show_progress=show_progress)


# -- the priors -------------------------------------------------------------------------------------
@dataclass
class PriorConfig:
    """The diffusion prior: a small transformer over four tokens, and its training."""

    embed_dim: int = 64
    width: int = 96
    depth: int = 2
    heads: int = 4
    T: int = 1000
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    n_train: int = 20_000
    seed: int = 0
    world_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class DiffusionPrior(nn.Module):
    """Predicts the clean image embedding from [z_t, timestep, noised z_i, query] (the paper's layout,
    with a causal mask so the query reads everything before it)."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        c = self.config = config
        self.text_in = nn.Linear(c.embed_dim, c.width)
        self.noisy_in = nn.Linear(c.embed_dim, c.width)
        self.time_embed = nn.Embedding(c.T, c.width)
        self.query = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        self.pos = nn.Parameter(torch.zeros(1, 4, c.width))
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, c.embed_dim))
        self.register_buffer("causal", torch.triu(torch.ones(4, 4, dtype=torch.bool), 1), persistent=False)
        self.schedule = D.make_schedule("cosine", c.T)
        self.scale = math.sqrt(c.embed_dim)      # unit vectors -> entries of unit variance

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z_text: torch.Tensor) -> torch.Tensor:
        """x_t: noised scaled embeddings (B, E); t (B,); z_text (B, E) unit text embeddings -> x̂₀ (B, E)."""
        tokens = torch.stack([self.text_in(z_text), self.time_embed(t), self.noisy_in(x_t)], 1)
        h = torch.cat([tokens, self.query.expand(len(x_t), -1, -1)], 1) + self.pos
        return self.out(self.blocks(h, mask=self.causal)[:, -1])


def prior_training_pairs(clip_model, n: int, seed: int = 0, world_seed: int = 0):
    """(text embeddings, image embeddings) of n one-shape scenes, each captioned in one of several
    ways, some naming only a few attributes ("a red shape")."""
    from .text2image import training_captions

    images, shapes = scenes(n, "one", "train", seed, world_seed)
    texts = training_captions(shapes, np.random.default_rng([seed, 8]))
    return text_embeddings(clip_model, texts), image_embeddings(clip_model, images), texts


def train_prior(clip_model, config: PriorConfig | None = None, data=None, desc: str = "training the prior"):
    """Train the diffusion prior (x₀-prediction, MSE, t uniform); ``(model, history, seconds)``."""
    from .training import train

    config = config if config is not None else PriorConfig()
    torch.manual_seed(config.seed)
    zt, zi, _ = data if data is not None else prior_training_pairs(clip_model, config.n_train, config.seed,
                                                                  config.world_seed)
    model = DiffusionPrior(config)
    ab = model.schedule.alpha_bar
    g = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()

    def loss_fn(step: int):
        idx = torch.randint(len(zi), (config.batch_size,), generator=g)
        x0 = zi[idx] * model.scale
        t = torch.randint(config.T, (config.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ab[t][:, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(model(x_t, t, zt[idx]), x0)

    history = train(model, loss_fn, config.steps, lr=config.lr, weight_decay=0.01, desc=desc)
    return model.eval(), history, time.perf_counter() - start


@torch.no_grad()
def sample_prior(prior: DiffusionPrior, z_text: torch.Tensor, steps: int = 25, candidates: int = 2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Image embeddings (N, E), unit length, for text embeddings (N, E): DDIM over the scaled vector
    (as a (N, E, 1, 1) tensor for chapter 5's step), ``candidates`` draws each, the one with the
    largest z_i · z_t kept."""
    if not isinstance(prior, DiffusionPrior):
        raise TypeError(f"prior must be a DiffusionPrior, got {type(prior).__name__}")
    candidates = checks.integer(candidates, "candidates", minimum=1)
    n, e = z_text.shape
    zt = z_text.repeat(candidates, 1)
    x = torch.randn((len(zt), e, 1, 1), generator=generator)
    sched = prior.schedule
    ts = D.timesteps_for(steps, sched.T)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x0 = prior(x[:, :, 0, 0], torch.full((len(zt),), t), zt)
        x0 = (F.normalize(x0, dim=-1) * prior.scale)[:, :, None, None]        # back onto the sphere
        _, eps = D.to_x0_eps(x0, t, x, sched.alpha_bar, "sample")
        x = D.ddim_step(eps, t, x, sched, t_prev=t_prev, x0=x0)
    z = F.normalize(x[:, :, 0, 0], dim=-1).view(candidates, n, e)
    best = (z * z_text[None]).sum(-1).argmax(0)                                # (n,)
    return z[best, torch.arange(n)]


class RegressionPrior(nn.Module):
    """The baseline: an MLP from z_t to z_i, trained to maximise their cosine similarity (one answer per text)."""

    def __init__(self, embed_dim: int = 64, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                 nn.Linear(width, embed_dim))

    def forward(self, z_text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(z_text), dim=-1)


def train_regression_prior(data, steps: int = 800, seed: int = 0, desc: str = "training the regression prior"):
    from .training import train

    zt, zi, _ = data
    torch.manual_seed(seed)
    model = RegressionPrior(zt.shape[1])
    g = torch.Generator().manual_seed(seed)

    def loss_fn(step: int):
        idx = torch.randint(len(zi), (256,), generator=g)
        return (1 - (model(zt[idx]) * zi[idx]).sum(-1)).mean()

    history = train(model, loss_fn, steps, lr=1e-3, weight_decay=0.01, desc=desc)
    return model.eval(), history


# -- the shipped decoder ----------------------------------------------------------------------------
def decoder_folder() -> Path:
    from importlib.resources import files

    return Path(str(files("vlmlib") / "weights")) / DECODER_NAME


def save_decoder(model: Decoder, clip_model, recipe: DecoderRecipe, metrics: dict, history: dict,
                 folder: Path | str | None = None) -> Path:
    """``unet/`` with ``save_pretrained`` (float16), ``decoder.safetensors`` (the token projection and the embedding statistics),
    ``clip.safetensors`` (the CLIP whose embeddings it reads) and ``record.json``."""
    import copy

    from safetensors.torch import save_file

    folder = Path(folder) if folder is not None else decoder_folder()
    folder.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model.unet).to(torch.float16).save_pretrained(folder / "unet")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("unet.")},
              str(folder / "decoder.safetensors"))
    save_file({k: v.detach().contiguous() for k, v in clip_model.state_dict().items()}, str(folder / "clip.safetensors"))
    record = {"config": model.config.to_dict(), "embed_dim": model.embed_dim, "clip_config": clip_model.config.to_dict(),
              "recipe": recipe.to_dict(), "metrics": metrics, "history": history}
    record["files"] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "record.json"}
    (folder / "record.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return folder


def load_decoder(folder: Path | str | None = None):
    """The shipped decoder and its CLIP: ``(decoder, clip_model, record)``; files are checksum-checked."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from .clip import CLIP, CLIPConfig

    folder = Path(folder) if folder is not None else decoder_folder()
    if not (folder / "record.json").is_file():
        raise FileNotFoundError(f"no unCLIP decoder in {folder}: run `python -m tools.train_unclip`")
    record = json.loads((folder / "record.json").read_text())
    for name, sha in record["files"].items():
        if not (folder / name).is_file() or hashlib.sha256((folder / name).read_bytes()).hexdigest() != sha:
            raise ValueError(f"{folder / name} is missing or fails its checksum")
    model = Decoder(T2IConfig(**record["config"]), record["embed_dim"])
    model.unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32, low_cpu_mem_usage=False)
    missing, unexpected = model.load_state_dict(load_file(str(folder / "decoder.safetensors")), strict=False)
    if unexpected or any(not k.startswith("unet.") for k in missing):
        raise ValueError(f"{folder / 'decoder.safetensors'} does not fit the decoder: {unexpected or missing}")
    clip_model = CLIP(CLIPConfig(**record["clip_config"]))
    clip_model.load_state_dict(load_file(str(folder / "clip.safetensors")))
    return model.eval(), clip_model.eval(), record


# -- text to image through the prior, and scores ----------------------------------------------------
@torch.no_grad()
def generate(prompts: Sequence[str], prior, decoder: Decoder, clip_model, guidance: float = 3.0, steps: int = 20,
             seed: int = 0, show_progress: bool = False) -> torch.Tensor:
    """unCLIP: prompt -> CLIP text embedding -> image embedding -> image.

    ``prior`` is a :class:`DiffusionPrior` (sampled, two candidates), a :class:`RegressionPrior`
    (one answer per text), or ``None`` (the text embedding itself is given to the decoder).
    """
    prompts = [prompts] if isinstance(prompts, str) else checks.text_list(prompts, "prompts")
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    zt = text_embeddings(clip_model, prompts)
    if prior is None:
        z = zt
    elif isinstance(prior, DiffusionPrior):
        z = sample_prior(prior, zt, generator=g)
    elif isinstance(prior, RegressionPrior):
        z = prior(zt)
    else:
        raise TypeError(f"prior must be a DiffusionPrior, a RegressionPrior or None, got {type(prior).__name__}")
    return decode(decoder, z, guidance, steps, generator=g, show_progress=show_progress)


def decoder_scores(decoder: Decoder, clip_model, n: int = 200, guidance: float = 3.0, seed: int = 5000) -> dict:
    """How faithfully the decoder redraws real one-shape scenes from their CLIP image embeddings: the
    scene judge's colour, kind and position agreement with the original (seen and held-out pairs)."""
    from . import scene_judge as SJ

    judge = SJ.load_scene_judge()[0]
    out = {}
    for split in ("test", "holdout"):
        images, shapes = scenes(n, "one", split, seed)
        drawn = decode(decoder, image_embeddings(clip_model, images), guidance,
                       generator=torch.Generator().manual_seed(seed))
        specs = [{"colour": s[0].colour, "kind": s[0].kind, "position": s[0].position} for s in shapes]
        s = SJ.score_prompts(judge, drawn, specs)
        out[f"redraw_{split}"] = s["faithful"]
        out[f"redraw_{split}_valid"] = s["valid"]
    return out


# -- through the artifact cache ---------------------------------------------------------------------
#: Bumped whenever training a prior, :func:`sample_prior`, :func:`decode` or :func:`generate` changes
#: what it makes, so that cached priors and images are made again.
CACHE_VERSION = 1


def _tensor_sha256(x: torch.Tensor) -> str:
    """The SHA-256 of a tensor's dtype, shape and values (what a set of images was drawn from)."""
    x = x.detach().cpu().contiguous()
    return hashlib.sha256(f"{x.dtype}:{tuple(x.shape)}:".encode() + x.numpy().tobytes()).hexdigest()


def _clip_key(clip_model) -> dict:
    if not isinstance(clip_model, nn.Module):
        raise TypeError(f"clip_model must be chapter 2's CLIP, got {type(clip_model).__name__}")
    return {"weights_sha256": D.weights_sha256(clip_model), "device": next(clip_model.parameters()).device.type}


def build_prior(clip_model, config: PriorConfig | None = None, verbose: bool = True) -> tuple[DiffusionPrior, Artifact]:
    """The diffusion prior that :func:`train_prior` trains for ``config`` on ``clip_model``'s
    embeddings of :func:`prior_training_pairs`: from the artifact cache, or trained now and stored.

    Keyed by the config, the SHA-256 of the CLIP's weights, its device type and :data:`CACHE_VERSION`;
    the metrics hold ``train_seconds`` (measured when it was trained), the history the loss. The
    global random state is left as it was, whether the prior is trained or loaded.
    """
    config = config if config is not None else PriorConfig()
    if not isinstance(config, PriorConfig):
        raise TypeError(f"config must be a PriorConfig, got {type(config).__name__}")
    key = {"prior": config.to_dict(), "clip": _clip_key(clip_model), "version": CACHE_VERSION}

    def build() -> Artifact:
        model, history, seconds = train_prior(clip_model, config)
        return Artifact("unclip-prior", key, dict(model.state_dict()), {"train_seconds": seconds},
                        {"loss": history["loss"]})

    with _own_random_state(torch.device("cpu")):
        art = cached("unclip-prior", key, build, verbose=verbose)
        prior = DiffusionPrior(config)
    prior.load_state_dict(art.state_dict)
    return prior.eval(), art


def build_regression_prior(clip_model, steps: int = 800, n_train: int = 20_000, seed: int = 0, world_seed: int = 0,
                           verbose: bool = True) -> tuple[RegressionPrior, Artifact]:
    """The regression prior that :func:`train_regression_prior` trains for ``steps`` (and ``seed``)
    on :func:`prior_training_pairs` ``(clip_model, n_train, seed, world_seed)``: from the artifact
    cache, or trained now and stored; keyed as :func:`build_prior` (``train_seconds``: the training
    alone, as :func:`train_prior` times it)."""
    steps = checks.integer(steps, "steps", minimum=1)
    n_train = checks.integer(n_train, "n_train", minimum=1)
    seed = checks.integer(seed, "seed", minimum=0)
    world_seed = checks.integer(world_seed, "world_seed", minimum=0)
    key = {"steps": steps, "n_train": n_train, "seed": seed, "world_seed": world_seed, "clip": _clip_key(clip_model),
           "version": CACHE_VERSION}

    def build() -> Artifact:
        data = prior_training_pairs(clip_model, n_train, seed, world_seed)
        start = time.perf_counter()
        model, history = train_regression_prior(data, steps, seed)
        return Artifact("unclip-regression-prior", key, dict(model.state_dict()),
                        {"train_seconds": time.perf_counter() - start}, {"loss": history["loss"]})

    with _own_random_state(torch.device("cpu")):
        art = cached("unclip-regression-prior", key, build, verbose=verbose)
        width, embed_dim = art.state_dict["net.0.weight"].shape
        model = RegressionPrior(embed_dim, width)
    model.load_state_dict(art.state_dict)
    return model.eval(), art


def _decoder_key(decoder: Decoder) -> dict:
    if not isinstance(decoder, Decoder):
        raise TypeError(f"decoder must be a Decoder, got {type(decoder).__name__}")
    return {"config": decoder.config.to_dict(), "embed_dim": decoder.embed_dim,
            "weights_sha256": D.weights_sha256(decoder), "device": next(decoder.parameters()).device.type}


def decode_cached(model: Decoder, z: torch.Tensor, guidance: float = 3.0, steps: int = 20, seed: int | None = None,
                  noise: torch.Tensor | None = None, threshold: str = "static", verbose: bool = True) -> dict:
    """:func:`decode` through the artifact cache (as :func:`vlmlib.diffusion.sample_cached`), with its
    starting noise drawn from ``seed`` or given as ``noise`` (exactly one of the two).

    Keyed by the decoder's config and the SHA-256 of its weights, that of ``z`` (and of ``noise``), the
    guidance, the steps, the threshold, the seed, the device type and :data:`CACHE_VERSION`. Returns
    ``{"images": (N, 3, 32, 32), "seconds": decoding time when they were drawn, "from_cache": bool}``.
    """
    key = {"decoder": _decoder_key(model)}
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != model.embed_dim:
        raise ValueError(f"z must be image embeddings (N, {model.embed_dim})")
    if (seed is None) == (noise is None):
        raise ValueError("give a seed or the noise (exactly one): cached images are drawn from a known noise")
    if seed is not None:
        seed = checks.integer(seed, "seed", minimum=0)
    elif not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a tensor, got {type(noise).__name__}")
    key.update({"z_sha256": _tensor_sha256(z), "guidance": checks.number(guidance, "guidance", low=0.0),
                "steps": checks.integer(steps, "steps", minimum=1, maximum=model.config.T),
                "threshold": checks.choice(threshold, "threshold", D.THRESHOLDS), "seed": seed,
                "noise_sha256": None if noise is None else _tensor_sha256(noise), "version": CACHE_VERSION,
                "sampler_version": D.SAMPLER_VERSION})
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return D.cached_images("unclip-samples", key,
                           lambda: decode(model, z, key["guidance"], key["steps"], generator, noise, key["threshold"]),
                           verbose, f"{len(z)} images decoded")


def generate_cached(prompts: Sequence[str], prior, decoder: Decoder, clip_model, guidance: float = 3.0,
                    steps: int = 20, seed: int = 0, verbose: bool = True) -> dict:
    """:func:`generate` through the artifact cache: keyed by the prompts, the prior's kind and the
    SHA-256 of its weights, the decoder's and the CLIP's (:func:`decode_cached`), the guidance, the
    steps, the seed and :data:`CACHE_VERSION`. Returns ``{"images", "seconds", "from_cache"}``."""
    prompts = [prompts] if isinstance(prompts, str) else checks.text_list(prompts, "prompts")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    if prior is None:
        prior_key = None
    elif isinstance(prior, (DiffusionPrior, RegressionPrior)):
        prior_key = {"kind": type(prior).__name__, "weights_sha256": D.weights_sha256(prior),
                     "config": prior.config.to_dict() if isinstance(prior, DiffusionPrior) else None}
    else:
        raise TypeError(f"prior must be a DiffusionPrior, a RegressionPrior or None, got {type(prior).__name__}")
    key = {"prompts": prompts, "prior": prior_key, "decoder": _decoder_key(decoder), "clip": _clip_key(clip_model),
           "guidance": checks.number(guidance, "guidance", low=0.0),
           "steps": checks.integer(steps, "steps", minimum=1, maximum=decoder.config.T),
           "seed": checks.integer(seed, "seed", minimum=0), "version": CACHE_VERSION,
           "sampler_version": D.SAMPLER_VERSION}
    return D.cached_images("unclip-samples", key,
                           lambda: generate(prompts, prior, decoder, clip_model, key["guidance"], key["steps"], seed),
                           verbose, f"{len(prompts)} images through unCLIP")
