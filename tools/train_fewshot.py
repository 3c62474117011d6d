"""Teach chapter 8's LLaVA to caption in a style shown in its prompt; store it and its scores.

    python -m tools.train_fewshot             # vlmlib/weights/llava-shapes-fewshot/ (about 15 min on one core)
    python -m tools.train_fewshot --rescore   # re-measure the stored check (what the tests repeat)

Starts from the chapter's model (``llava-shapes``, made by ``python -m tools.train_llava``) and
trains it on interleaved sequences (:func:`vlmlib.fewshot.interleaved_data`): 0 to 4 (image,
caption) examples and one more image, all captions in one of :data:`vlmlib.fewshot.TRAIN_STYLES`.
``record.json`` holds the recipe, the loss history and, before and after this training, how often a
caption of a new image follows a style after k = 0, 1, 2, 4 examples, for the styles never trained
(:data:`vlmlib.fewshot.HELD_OUT_STYLES`) and the trained ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from vlmlib import fewshot as F
from vlmlib import llava_training as LT

RECIPE = {"n_sequences": 30000, "steps": 2000, "batch_size": 16, "lr": 3e-4, "seed": 0}
SHOTS = (0, 1, 2, 4)
#: Three of the training styles, scored beside the held-out ones.
TRAINED_SHOWN = ("colour kind", "kind position", "size colour kind")
CHECK = {"style": "kind size", "shots": 2, "n": 32, "seed": 93}


def check(model) -> dict:
    """A quick re-measurement: one held-out style after two examples, on CHECK['n'] new images."""
    s = F.fewshot_scores(model, [CHECK["style"]], [CHECK["shots"]], n=CHECK["n"], seed=CHECK["seed"])
    return {**CHECK, **s[CHECK["style"]][CHECK["shots"]]}


def scores(model, n: int) -> dict:
    return {"held_out_styles": F.fewshot_scores(model, F.HELD_OUT_STYLES, SHOTS, n=n),
            "train_styles": F.fewshot_scores(model, TRAINED_SHOWN, SHOTS, n=n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder to write (default vlmlib/weights/llava-shapes-fewshot)")
    parser.add_argument("--rescore", action="store_true", help="re-measure the stored check, train nothing")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny data, two steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.out) if args.out else LT.llava_folder().with_name("llava-shapes-fewshot")
    if args.rescore:
        model, record = LT.load_llava(folder)
        print({"stored": record["check"], "now": check(model)})
        return
    recipe = dict(RECIPE, n_sequences=64, steps=2, batch_size=4) if args.quick else dict(RECIPE)
    n_eval = 8 if args.quick else 100
    base, base_record = LT.load_llava()
    start = time.perf_counter()
    before = scores(base, n_eval)
    print("before", json.dumps(before), flush=True)
    model = copy.deepcopy(base)
    images, convs, _, _ = F.interleaved_data(recipe["n_sequences"], seed=recipe["seed"])
    history, seconds = F.train_interleaved(model, images, convs, steps=recipe["steps"],
                                           batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"])
    after = scores(model, n_eval)
    print("after", json.dumps(after), flush=True)
    qa = LT.evaluate_llava(model, n=60 if args.quick else 300)
    record = {"recipe": recipe, "shots": list(SHOTS), "train_seconds": seconds, "before": before, "after": after,
              "accuracy_after": qa, "base_weights_sha256": base_record["weights_sha256"],
              "history": {"loss": history["loss"]}, "check": check(model),
              "seconds": time.perf_counter() - start}
    LT.save_llava(model, record, folder)
    print(f"saved {folder} in {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
