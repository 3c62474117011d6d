"""Train chapter 10's code model and store it in the package.

    python -m tools.train_codegen                 # writes vlmlib/weights/codegen-shapes/ (about 15 minutes on one busy core)
    python -m tools.train_codegen --verify-only   # re-measure the stored model (what the tests repeat)

The model is ``vlmlib.codegen.CodeGenConfig()``'s ``LlamaForCausalLM``, trained with
``vlmlib.codegen.CodeGenRecipe()`` on ``programs.dataset(n_train, "train", data_seed)``.
``record.json`` beside its weights holds the config, the recipe, the measured results (greedy pass@1
by execution on 300 problems of each split, per family; pass@k against the temperature on held-out
problems; chapter 6's pixels against code on held-out prompts), the training time, the loss history
and a few stored checks: descriptions with the programs the model wrote for them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vlmlib import codegen as C
from vlmlib import programs

#: The held-out sample that the tests score again (problems of programs.dataset(CHECK_N, "holdout", CHECK_SEED)).
CHECK_N, CHECK_SEED = 60, 4242


def check_sample(model, tok) -> dict:
    return C.evaluate(model, tok, n=CHECK_N, splits=("holdout",), seed=CHECK_SEED)["holdout"]


def stored_checks(model, tok) -> list[tuple[str, str]]:
    data = programs.dataset(10, "holdout", seed=CHECK_SEED)
    written = C.write_programs(model, tok, [e.description for e in data])
    return [(e.description, w[0]) for e, w in zip(data, written)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-only", action="store_true", help="re-score the stored model, train nothing")
    parser.add_argument("--no-pixels", action="store_true", help="skip chapter 6's pixels (diffusion sampling)")
    args = parser.parse_args()
    torch.set_num_threads(1)                 # the same arithmetic on every machine, and a shared CPU stays usable
    if args.verify_only:
        model, tok, record = C.load_shipped()
        now = {"pass1": C.evaluate(model, tok), "check": check_sample(model, tok),
               "checks_equal": [list(c) for c in stored_checks(model, tok)] == record["checks"]}
        print(json.dumps({"stored": {k: record["metrics"][k] for k in ("pass1", "check")}, "now": now}, indent=1))
        return
    config, recipe = C.CodeGenConfig(), C.CodeGenRecipe()
    model, history, seconds = C.train_codegen(config, recipe)
    tok = C.code_tokenizer()
    metrics = {"train_seconds": round(seconds, 1), "parameters": sum(p.numel() for p in model.parameters())}
    start = time.perf_counter()
    metrics["pass1"] = C.evaluate(model, tok, n=300)
    metrics["evaluate_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(metrics, indent=1))
    start = time.perf_counter()
    curve = C.pass_at_k_curve(model, tok)
    metrics["pass_at_k"] = {f"{t:g}": {str(k): v for k, v in row.items()} for t, row in curve.items()}
    metrics["pass_at_k_seconds"] = round(time.perf_counter() - start, 1)
    metrics["check"] = check_sample(model, tok)
    if not args.no_pixels:
        metrics["code_vs_pixels"] = C.code_vs_pixels(model=model, tokenizer=tok)
    print(json.dumps(metrics, indent=1))
    folder = C.save_shipped(model, config, recipe, metrics, {"loss": history["loss"]}, stored_checks(model, tok))
    print(f"saved to {folder}")


if __name__ == "__main__":
    main()
