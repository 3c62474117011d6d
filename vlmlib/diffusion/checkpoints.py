"""Chapter 5's trained denoiser: its settings, its scores, the cache and the shipped checkpoint.

:func:`default_settings` (config and recipe per budget), :func:`evaluate` (judged samples),
:func:`build_diffusion` and :func:`load_diffusion` (trained once, then cached), and the checkpoint
that ships with the package (:func:`save_checkpoint`, :func:`load_checkpoint`, :func:`checkpoint_folder`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from .. import checks
from ..cache import Artifact, cached
from ..shapesworld import KINDS
from .models import NUM_CLASSES, Denoiser, DiffusionConfig
from .sampling import sample
from .training import Recipe, train_diffusion


def default_settings(budget: str = "cpu") -> tuple[DiffusionConfig, Recipe]:
    """The configuration and recipe of chapter 5's denoiser for a budget (``"cpu"`` or ``"gpu"``)."""
    budget = checks.choice(budget, "budget", ("cpu", "gpu"))
    if budget == "gpu":
        return (DiffusionConfig(image_size=32, channels=(64, 128, 128), num_classes=NUM_CLASSES),
                Recipe(steps=4000, batch_size=128, n_train=50_000, min_snr_gamma=5.0))
    if budget != "cpu":
        raise ValueError(f"budget must be 'cpu' or 'gpu', got {budget!r}")
    return (DiffusionConfig(image_size=32, channels=(16, 32, 64, 64), num_classes=NUM_CLASSES),
            Recipe(min_snr_gamma=5.0))


def evaluate(model: Denoiser, n: int = 240, steps: int = 20, sampler: str = "ddim", seed: int = 0,
             guidance: float = 1.0) -> dict[str, float]:
    """Judge ``n`` samples (fixed seed, so the numbers can be re-checked).

    ``valid`` and ``fid`` of unconditional samples; for a conditional model also ``cond_valid``,
    ``cond_colour`` and ``cond_kind`` (the fraction with the requested attribute) and ``cond_faithful``
    (valid and right on both), with the labels cycling through every colour–kind pair, sampled
    with classifier-free ``guidance``.
    """
    from .. import judge

    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a Denoiser, got {type(model).__name__}")
    n = checks.integer(n, "n", minimum=2)
    seed = checks.integer(seed, "seed", minimum=0)
    g = torch.Generator().manual_seed(seed)
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    images = sample(model, n, steps, sampler, generator=g, show_progress=False)
    metrics["sample_seconds"] = time.perf_counter() - start
    s = judge.score(images)
    metrics.update({"valid": s["valid"], "fid": s["fid"], "coverage": s["coverage"]})
    if model.config.num_classes:
        idx = torch.arange(n) % NUM_CLASSES
        images = sample(model, n, steps, sampler, labels=idx, generator=g, show_progress=False,
                        guidance=guidance)
        s = judge.score(images, labels={"colour": idx // len(KINDS), "kind": idx % len(KINDS)})
        metrics.update({"cond_valid": s["valid"], "cond_fid": s["fid"], "cond_colour": s["colour"],
                        "cond_kind": s["kind"], "cond_faithful": s["faithful"]})
    return {k: float(v) for k, v in metrics.items()}


def build_diffusion(config: DiffusionConfig, recipe: Recipe, name: str = "diffusion-shapes",
                    device: str | torch.device = "cpu", verbose: bool = True) -> tuple[Denoiser, Artifact]:
    """The trained denoiser (EMA weights) for ``config`` and ``recipe``: from the cache, or trained now."""
    key = {"model": config.to_dict(), "recipe": recipe.to_dict()}

    def build() -> Artifact:
        model, _, history, seconds = train_diffusion(config, recipe, device)
        metrics = {"train_seconds": seconds, "steps_per_second": history["steps_per_second"][0]}
        try:
            metrics.update(evaluate(model))
        except ImportError:       # the judge is not available: store the model without its scores
            pass
        history = {"loss": history["loss"]}
        return Artifact(name, key, {k: v.cpu() for k, v in model.state_dict().items()}, metrics, history)

    art = cached(name, key, build, verbose=verbose)
    model = Denoiser(config)
    model.load_state_dict(art.state_dict)
    model.eval()
    return model.to(device), art


#: The file name (without suffix) of a checkpoint written by ``python -m tools.train_diffusion``.
CHECKPOINT_NAME = "diffusion-shapes"


def checkpoint_folder() -> Path:
    """Where the package keeps chapter 5's checkpoint (``vlmlib/weights``; it ships with the package)."""
    from importlib.resources import files

    return Path(str(files("vlmlib") / "weights"))


def save_checkpoint(model: Denoiser, recipe: Recipe, metrics: dict, history: dict,
                    folder: Path | str) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (config, recipe, metrics, SHA-256 of the weights)."""
    from safetensors.torch import save_file

    if not isinstance(model, Denoiser) or not isinstance(recipe, Recipe):
        raise TypeError("save_checkpoint needs a Denoiser and its Recipe")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{CHECKPOINT_NAME}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    record = {"config": model.config.to_dict(), "recipe": recipe.to_dict(), "metrics": metrics,
              "history": history, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (folder / f"{CHECKPOINT_NAME}.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return weights


def load_checkpoint(folder: Path | str | None = None, device: str | torch.device = "cpu") -> tuple[Denoiser, dict]:
    """The checkpoint written by ``python -m tools.train_diffusion``: ``(model, record)``.

    ``folder`` defaults to the one that ships with the package (:func:`checkpoint_folder`). Raises
    ``FileNotFoundError`` if it is missing and ``ValueError`` if its weights fail their checksum.
    """
    from safetensors.torch import load_file

    folder = checkpoint_folder() if folder is None else Path(folder)
    weights, meta = folder / f"{CHECKPOINT_NAME}.safetensors", folder / f"{CHECKPOINT_NAME}.json"
    if not weights.exists() or not meta.exists():
        raise FileNotFoundError(f"no diffusion checkpoint in {folder}: run `python -m tools.train_diffusion`")
    record = json.loads(meta.read_text())
    if hashlib.sha256(weights.read_bytes()).hexdigest() != record["weights_sha256"]:
        raise ValueError(f"{weights} fails its checksum: run `python -m tools.train_diffusion` again")
    model = Denoiser(DiffusionConfig(**record["config"]))
    model.load_state_dict(load_file(str(weights)))
    return model.eval().to(device), record


def load_diffusion(budget: str | None = None, device: str | torch.device | None = None,
                   verbose: bool = True) -> tuple[Denoiser, Artifact]:
    """Chapter 5's trained, label-conditioned denoiser (trained on first use, then cached)."""
    from ..settings import current

    settings = current()
    budget = budget or settings.budget
    device = device if device is not None else settings.device
    config, recipe = default_settings(budget)
    return build_diffusion(config, recipe, device=device, verbose=verbose)
