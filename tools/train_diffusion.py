"""Train chapter 5's denoiser for longer than a notebook can, and store it in the repository.

    python -m tools.train_diffusion                 # the default recipe; writes vlmlib/weights/diffusion-shapes.*
    python -m tools.train_diffusion --steps 6000    # longer
    python -m tools.train_diffusion --verify-only   # re-score the stored checkpoint (what the tests repeat)

The default run, 3,000 steps, took 39 minutes on one thread of a 2-core Xeon (2.5 GHz).

The notebook trains the same model live for a few minutes and then loads this checkpoint for the
results that need more training; it says which result came from which. The JSON beside the weights
holds the config, the recipe, the loss history and the judge's scores of fixed-seed samples, which
``--verify-only`` re-measures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vlmlib import diffusion as D

#: The package ships the checkpoint (Colab installs vlmlib from git and gets it with the package).
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "vlmlib" / "weights"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--prediction-type", choices=D.PREDICTION_TYPES, default=None,
                        help="what the UNet predicts (default: the recipe's)")
    parser.add_argument("--label-embedding", choices=D.LABEL_EMBEDDINGS, default=None,
                        help="how labels are embedded (default: the config's)")
    parser.add_argument("--min-snr-gamma", type=float, default=None, help="Min-SNR-γ loss weighting (0: off)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="folder to write to (default: vlmlib/weights/)")
    parser.add_argument("--verify-only", action="store_true",
                        help="only (re)compute the small check that the tests repeat, for an existing checkpoint")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.verify_only:
        print(json.dumps(add_verification(args.out), indent=1))
        return
    config, recipe = checkpoint_settings()
    if args.steps:
        recipe.steps = args.steps
    if args.prediction_type:
        config.prediction_type = args.prediction_type
    if args.label_embedding:
        config.label_embedding = args.label_embedding
    if args.min_snr_gamma is not None:
        recipe.min_snr_gamma = args.min_snr_gamma
    model, _, history, seconds = D.train_diffusion(config, recipe, desc="training the denoiser (checkpoint)")
    metrics = {"train_seconds": seconds, "train_steps": len(history["loss"]),
               "steps_per_second": history["steps_per_second"][0], "threads": torch.get_num_threads()}
    metrics.update(D.evaluate(model))
    add_guided(metrics, model)
    loss = history["loss"]
    every = max(1, len(loss) // 500)             # keep the JSON small: at most ~500 points
    path = D.save_checkpoint(model, recipe, metrics, {"loss": loss[::every], "loss_every": [every]},
                             args.out or CHECKPOINT_DIR)
    add_verification(args.out)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


#: The classifier-free guidance scale at which the chapter also reports its conditional bars.
GUIDANCE = 2.0


def add_guided(metrics: dict, model: D.Denoiser) -> None:
    """Score labelled samples again with classifier-free guidance; store them as ``metrics["guided"]``."""
    guided = D.evaluate(model, guidance=GUIDANCE)
    metrics["guided"] = {"guidance": GUIDANCE, **{k: v for k, v in guided.items() if k.startswith("cond_")}}


#: A small, fixed-seed evaluation that the tests repeat in a few seconds.
VERIFY = {"n": 96, "steps": 10, "seed": 1}


def fingerprint(model: D.Denoiser) -> list[float]:
    """Per-channel mean and std of 16 fixed-seed samples: equal wherever the weights and sampler are."""
    images = D.sample(model, 16, steps=10, generator=torch.Generator().manual_seed(2), show_progress=False)
    return [round(v, 6) for v in torch.cat([images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))]).tolist()]


def add_verification(folder=None) -> dict:
    """Score the checkpoint on :data:`VERIFY` and store the result in its JSON as ``metrics.verify``."""
    folder = Path(folder or CHECKPOINT_DIR)
    model, record = D.load_checkpoint(folder)
    verify = D.evaluate(model, **VERIFY)
    verify.pop("sample_seconds")
    record["metrics"]["verify"] = {**VERIFY, **verify, "fingerprint": fingerprint(model)}
    meta = folder / f"{D.CHECKPOINT_NAME}.json"
    meta.write_text(json.dumps(record, indent=1, allow_nan=False))
    return record["metrics"]["verify"]


def checkpoint_settings() -> tuple[D.DiffusionConfig, D.Recipe]:
    """The checkpoint's model: the notebook's, trained longer."""
    config, recipe = D.default_settings("cpu")
    recipe.steps = 3000
    return config, recipe


if __name__ == "__main__":
    main()
