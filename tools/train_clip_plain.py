"""Train chapter 2's CLIP without its data recipe, and store it in the repository.

    python -m tools.train_clip_plain                 # writes vlmlib/weights/clip-shapes-plain.*
    python -m tools.train_clip_plain --verify-only   # re-score the stored checkpoint (what the tests repeat)

Chapter 2 compares four models on held-out colour–kind pairs: {a supervised ViT, CLIP} x {plain
data, the chapter's data recipe (grey copies, hard negatives)}. This is the "CLIP, plain data" row:
chapter 2's model and recipe with ``p_grey=0`` and ``hard_negatives=1`` (random batches, no grey
copies), everything else equal. Training it costs as much as the chapter's own CLIP (about three
minutes on an idle 2-core CPU; the committed run took 1,222 s on one thread of that machine while
it was shared with other jobs), more than the chapter's time budget leaves, so under the CPU budget the
notebook loads it from here; under the GPU budget it trains its own (through the artifact cache).

The run goes through the artifact cache (``vlmlib.clip.build_clip``, name ``clip-shapes-plain``),
so it is the model the notebook would train itself; the JSON beside the weights holds the config,
the recipe, the zero-shot scores (held-out and seen pairs, 1,000 images each, seed 99) and the loss
history. ``--verify-only`` re-measures the scores from the stored weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlmlib import clip as C
from vlmlib.shapesworld import ShapesWorld

#: The package ships the checkpoint (Colab installs vlmlib from git and gets it with the package).
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "vlmlib" / "weights"
NAME = "clip-shapes-plain"


def plain_settings(budget: str = "cpu") -> tuple[C.CLIPConfig, C.Recipe]:
    """Chapter 2's CLIP and recipe for ``budget``, without grey copies and hard negatives."""
    config, recipe = C.default_settings(budget)
    return config, dataclasses.replace(recipe, p_grey=0.0, hard_negatives=1)


def score(model: C.CLIP, recipe: C.Recipe) -> dict[str, float]:
    """Zero-shot accuracy per attribute on 1,000 held-out-pair and 1,000 seen-pair images (as build_clip)."""
    world = ShapesWorld(seed=recipe.world_seed)
    out = {}
    for split in ("holdout", "test"):
        data = world.sample(1000, split=split, seed=99, captions=None)
        acc = C.zero_shot_accuracy(model, data.tensor(), data.labels)
        out.update({f"{split}_{k}": v for k, v in acc.items()})
    return out


def load(folder: Path | None = None) -> tuple[C.CLIP, dict]:
    """The stored model and its record; ``ValueError`` if the weights fail their checksum."""
    return C.load_shipped(NAME, folder=folder or CHECKPOINT_DIR)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="folder to write to (default: vlmlib/weights/)")
    parser.add_argument("--verify-only", action="store_true", help="re-score the stored checkpoint")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.out or CHECKPOINT_DIR)
    if args.verify_only:
        model, record = load(folder)
        again = score(model, C.Recipe(**record["recipe"]))
        for key, value in again.items():
            print(f"{key:<18} recorded {record['metrics'][key]:.4f}  now {value:.4f}")
        return
    config, recipe = plain_settings("cpu")
    model, artifact = C.build_clip(config, recipe, name=NAME)
    metrics = {**artifact.metrics, **score(model, recipe), "threads": torch.get_num_threads()}
    history = {k: v[::4] for k, v in artifact.history.items()}     # every 4th step keeps the JSON small
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{NAME}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    record = {"name": NAME, "config": config.to_dict(), "recipe": recipe.to_dict(), "metrics": metrics,
              "history": history, "history_every": 4,
              "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (folder / f"{NAME}.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    print(json.dumps(metrics, indent=1))
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
