"""Train chapter 5's denoiser for longer than a notebook can, and store it in the repository.

    python -m tools.train_diffusion                 # the default recipe; writes vlmlib/weights/diffusion-shapes.*
    python -m tools.train_diffusion --steps 6000    # longer
    python -m tools.train_diffusion --verify-only   # re-score the stored checkpoint (what the tests repeat)
    python -m tools.train_diffusion --rescore       # re-score every recorded judge metric with today's judge

The default run, 3,000 steps, took 39 minutes on one thread of a 2-core Xeon (2.5 GHz).

The notebook trains the same model live for a few minutes and then loads this checkpoint for the
results that need more training; it says which result came from which. The JSON beside the weights
holds the config, the recipe, the loss history and the judge's scores of fixed-seed samples, which
``--verify-only`` re-measures; ``"judge"`` records the judge that scored them (its cache key and
its config). When the judge changes, ``--rescore`` measures all of them again with the new judge
(the training record, ``train_*``, ``steps_per_second``, ``threads`` and ``sample_seconds``, stays).
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
    parser.add_argument("--rescore", action="store_true",
                        help="re-measure every judge score of an existing checkpoint with the current judge")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.verify_only:
        print(json.dumps(add_verification(args.out), indent=1))
        return
    if args.rescore:
        print(json.dumps(rescore(args.out), indent=1))
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
    metrics.update(judge_scores(model))
    loss = history["loss"]
    every = max(1, len(loss) // 500)             # keep the JSON small: at most ~500 points
    path = D.save_checkpoint(model, recipe, metrics, {"loss": loss[::every], "loss_every": [every]},
                             args.out or CHECKPOINT_DIR)
    add_verification(args.out, rescored=True)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def judge_scores(model: D.Denoiser) -> dict:
    """The judge's scores that a training run records: ``D.evaluate`` of unguided and of guided samples."""
    metrics = D.evaluate(model)
    add_guided(metrics, model)
    return metrics


def rescore(folder=None) -> dict:
    """Score an existing checkpoint again with the current judge: every metric that the training run
    measured with the judge (see :func:`judge_scores`) and ``verify``; the timings of the training run stay."""
    folder = Path(folder or CHECKPOINT_DIR)
    model, record = D.load_checkpoint(folder)
    scores = judge_scores(model)
    scores.pop("sample_seconds")                         # a timing of the training run's machine, not a score
    record["metrics"].update(scores)
    meta = folder / f"{D.CHECKPOINT_NAME}.json"
    meta.write_text(json.dumps(record, indent=1, allow_nan=False))
    add_verification(folder, rescored=True)
    return D.load_checkpoint(folder)[1]["metrics"]


def judge_key() -> dict:
    """The judge that scores, as stored in the JSON (see vlmlib.judge.judge_identity)."""
    from vlmlib.judge import judge_identity

    return json.loads(json.dumps(judge_identity()))       # as stored: tuples become lists


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


def add_verification(folder=None, rescored: bool = False) -> dict:
    """Score the checkpoint on :data:`VERIFY` and store the result in its JSON as ``metrics.verify``.

    ``rescored``: every other judge metric was just measured with the current judge too; then its
    config is recorded as ``judge``. Otherwise a judge other than the recorded one gets a warning."""
    folder = Path(folder or CHECKPOINT_DIR)
    model, record = D.load_checkpoint(folder)
    verify = D.evaluate(model, **VERIFY)
    verify.pop("sample_seconds")
    record["metrics"]["verify"] = {**VERIFY, **verify, "fingerprint": fingerprint(model)}
    if rescored:
        record["judge"] = judge_key()                     # the judge that scored the metrics
    elif record.get("judge") != judge_key():
        print("warning: the checkpoint's other metrics were scored by another judge; "
              "run `python -m tools.train_diffusion --rescore`")
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
