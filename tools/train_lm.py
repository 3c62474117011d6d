"""Train the course's small language model on ShapesWorld text only, and store it in the package.

    python -m tools.train_lm                 # writes vlmlib/weights/shapes-lm/ (about 9 minutes on one core)
    python -m tools.train_lm --verify-only   # re-measure the stored model's scores (what the tests repeat)

The model is ``vlmlib.lm.LMConfig()``'s ``LlamaForCausalLM``; ``record.json`` beside its weights holds
the config (which is also the recipe), the held-out perplexity, the accuracy of its greedy answers to
questions about described scenes, and the loss history.
"""

from __future__ import annotations

import argparse
import json

import torch

from vlmlib import lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-only", action="store_true", help="re-score the stored model, train nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)                 # the same arithmetic on every machine, and a shared CPU stays usable
    if args.verify_only:
        model, _, record = lm.load_lm()
        metrics = lm.evaluate(model)
        print(json.dumps({"stored": record["metrics"], "now": metrics}, indent=1))
        return
    config = lm.LMConfig()
    model, history, seconds = lm.train_lm(config)
    metrics = {"train_seconds": seconds, **lm.evaluate(model)}
    print(metrics)
    folder = lm.save_lm(model, config, metrics, {"loss": history["loss"]})
    print(f"saved to {folder}")


if __name__ == "__main__":
    main()
