"""Train chapter 6's scene judge and store it in the repository.

    python -m tools.train_scene_judge                 # writes vlmlib/weights/scene-judge.*
    python -m tools.train_scene_judge --verify-only   # re-evaluate the stored weights

The scene judge (:mod:`vlmlib.scene_judge`) reads every shape of a scene, so that chapter 6 can
score its generated scenes for counts and relations. It trains on one CPU thread in about ten
minutes, more than chapter 6's time budget leaves, so it ships with the package as chapter 5's
denoiser does. The JSON beside the weights holds the config, the metrics of
:func:`vlmlib.scene_judge.evaluate` (1,000 fresh scenes of each of the test and holdout splits, as
drawn and after the 16-px round trip; noise and blank images), which bars they meet, the training
time and threads, the loss history and the weights' SHA-256. ``--verify-only`` re-measures the
metrics from the stored weights and compares them with the record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlmlib import scene_judge as S

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "vlmlib" / "weights"
HISTORY_EVERY = 10


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: SceneJudgeConfig's)")
    parser.add_argument("--out", default=None, help="folder to write to (default: vlmlib/weights/)")
    parser.add_argument("--verify-only", action="store_true", help="re-evaluate the stored weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(args.out or CHECKPOINT_DIR)
    if args.verify_only:
        model, record = S.load_scene_judge(folder=folder)
        again = S.evaluate(model)
        worst = 0.0
        for key, value in again.items():
            before = record["metrics"][key]
            worst = max(worst, abs(before - value))
            print(f"{key:<32} recorded {before:.4f}  now {value:.4f}")
        print(f"bars met: {S.meets_bars(again)}; largest difference {worst:.4f}")
        if worst > 1e-3:
            raise SystemExit("the re-measured metrics differ from the record")
        return
    config = S.SceneJudgeConfig() if args.steps is None else S.SceneJudgeConfig(steps=args.steps)
    model, history, seconds = S.train_scene_judge(config)
    metrics = {"train_seconds": seconds, "threads": torch.get_num_threads(), **S.evaluate(model)}
    bars = S.meets_bars(metrics)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{S.NAME}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    history = {k: [round(x, 5) for x in v[::HISTORY_EVERY]] for k, v in history.items()
               if all(math.isfinite(x) for x in v)}
    record = {"name": S.NAME, "config": config.to_dict(), "bars": S.BARS, "meets_bars": bars, "metrics": metrics,
              "history": history, "history_every": HISTORY_EVERY,
              "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (folder / f"{S.NAME}.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    print(json.dumps({"meets_bars": bars, **metrics}, indent=1))
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
