"""Train chapter 11's vision-language-action policies and store them in the package.

    python -m tools.train_vla                      # writes vlmlib/weights/vla-grid/ (about 30 minutes on one core)
    python -m tools.train_vla --verify-only        # re-measure the stored policies' success rates (what the tests repeat)
    python -m tools.train_vla --only policy        # retrain the named policies only, keeping the others stored

Three policies (``vla.SHIPPED_SETUPS``): ``policy``, the chapter's (``vla.SHIPPED_CONFIG``: the grounding head,
and the episode's first image read beside the image now) trained with ``vla.SHIPPED_RECIPE`` (behaviour
cloning on the expert's demonstrations with the auxiliary grounding loss and mirrored examples, then two
rounds of DAgger); ``one_frame``, the same without the first image (``vla.ONE_FRAME_CONFIG``, the same
recipe); and the text-blind baseline (``vla.TEXT_BLIND_CONFIG``, ``vla.TEXT_BLIND_RECIPE``).
``record.json`` beside the weights holds, for each, the config, the recipe, the training time, the DAgger
statistics, the success rates of ``vla.evaluate`` on ``vla.EVAL_N`` episodes per split and family, and
the loss history.
"""

from __future__ import annotations

import argparse
import json

import torch

from vlmlib import vla


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-only", action="store_true", help="re-score the stored policies, train nothing")
    parser.add_argument("--only", nargs="+", choices=vla.SHIPPED_MODELS, default=list(vla.SHIPPED_MODELS),
                        help="train these policies only and keep the others stored (their weights and records)")
    args = parser.parse_args()
    torch.set_num_threads(1)                 # the same arithmetic on every machine, and a shared CPU stays usable
    if args.verify_only:
        for name in vla.SHIPPED_MODELS:
            model, record = vla.load_shipped(name)
            now = vla.evaluate(model, vla.EVAL_N, seed=vla.EVAL_SEED)
            print(name, json.dumps({"stored": record["metrics"], "now": now}, indent=1))
        return
    out = {}
    for name in vla.SHIPPED_MODELS:
        if name not in args.only:
            model, record = vla.load_shipped(name)
            out[name] = (model, vla.VLARecipe(**record["recipe"]), record["metrics"], record["history"])
    for name in args.only:
        config, recipe = vla.SHIPPED_SETUPS[name]
        model, history, info = vla.train_vla(config, recipe)
        metrics = vla._metrics(model, info, vla.EVAL_N)
        print(name, json.dumps(metrics))
        out[name] = (model, recipe, metrics, {k: history[k] for k in ("loss", "accuracy", "grounding") if k in history})
    print(f"saved to {vla.save_shipped(out)}")


if __name__ == "__main__":
    main()
