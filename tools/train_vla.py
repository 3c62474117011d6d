"""Train chapter 11's vision-language-action policy and its text-blind baseline, and store them in the package.

    python -m tools.train_vla                 # writes vlmlib/weights/vla-grid/ (about 15 minutes on one busy core: 12 for the policy)
    python -m tools.train_vla --verify-only   # re-measure the stored policies' success rates (what the tests repeat)
    python -m tools.train_vla --policy-only   # retrain the policy only, keeping the stored text-blind baseline

The policy is ``vla.SHIPPED_CONFIG`` (with the grounding head) trained with ``vla.SHIPPED_RECIPE`` (behaviour
cloning on the expert's demonstrations with the auxiliary grounding loss and mirrored examples, then two rounds of DAgger); the baseline is ``VLAConfig(text_blind=True)``
trained with ``vla.TEXT_BLIND_RECIPE``. ``record.json`` beside the weights holds, for each, the config,
the recipe, the training time, the DAgger statistics, the success rates of ``vla.evaluate`` on
``vla.EVAL_N`` episodes per split and family, and the loss history.
"""

from __future__ import annotations

import argparse
import json

import torch

from vlmlib import vla


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-only", action="store_true", help="re-score the stored policies, train nothing")
    parser.add_argument("--policy-only", action="store_true",
                        help="train the policy only and keep the stored text-blind baseline (its weights and record)")
    args = parser.parse_args()
    torch.set_num_threads(1)                 # the same arithmetic on every machine, and a shared CPU stays usable
    if args.verify_only:
        for name in vla.SHIPPED_MODELS:
            model, record = vla.load_shipped(name)
            now = vla.evaluate(model, vla.EVAL_N, seed=vla.EVAL_SEED)
            print(name, json.dumps({"stored": record["metrics"], "now": now}, indent=1))
        return
    out = {}
    if args.policy_only:
        blind, record = vla.load_shipped("text_blind")
        out["text_blind"] = (blind, vla.VLARecipe(**record["recipe"]), record["metrics"], record["history"])
    for name, config, recipe in (("policy", vla.SHIPPED_CONFIG, vla.SHIPPED_RECIPE),
                                 ("text_blind", vla.VLAConfig(text_blind=True), vla.TEXT_BLIND_RECIPE)):
        if name in out:
            continue
        model, history, info = vla.train_vla(config, recipe)
        metrics = vla._metrics(model, info, vla.EVAL_N)
        print(name, json.dumps(metrics))
        out[name] = (model, recipe, metrics, {k: history[k] for k in ("loss", "accuracy", "grounding") if k in history})
    print(f"saved to {vla.save_shipped(out)}")


if __name__ == "__main__":
    main()
