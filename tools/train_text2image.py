"""Train chapter 6's text-to-image models and store them in the package, the diffusers way.

    python -m tools.train_text2image --encoder clip     # writes vlmlib/weights/t2i-clip/
    python -m tools.train_text2image --encoder lm       # writes vlmlib/weights/t2i-lm/
    python -m tools.train_text2image --encoder lm --small   # writes vlmlib/weights/t2i-lm-small/
    python -m tools.train_text2image --encoder clip --rescore   # re-measure a stored model's scores
    python -m tools.train_text2image --encoder clip --no-pooled --out <folder>   # cross-attention only
    python -m tools.train_text2image --encoder clip --layout-only   # add the layout-first two-shape scores

Each is a ``UNet2DConditionModel`` (``vlmlib.text2image.T2IConfig``) trained with
``T2IRecipe()`` on one- and two-shape scenes, conditioned on a frozen text encoder: chapter 2's CLIP
text tower or the text-only language model. Each shipped model was trained in two parts, the
same for all three so that the chapter compares like with like: ``T2IRecipe()`` (2,000 steps),
then ``--resume <its folder> --steps 2700`` (4,700 steps in all; ``record.json``'s ``parts`` lists
them). That took one to two hours per model on one CPU thread, far more than the chapter's budget,
so the chapter loads these and trains a short run of its own to show the loop. ``record.json``
beside the weights holds the config, recipe, the loss history and the scores that
``vlmlib.text2image.benchmark`` measures with the scene judge.
"""

from __future__ import annotations

import argparse
import json

import torch

from vlmlib import text2image as T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=T.ENCODERS, required=True)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (for trials)")
    parser.add_argument("--small", action="store_true", help="the smaller UNet (t2i-lm-small)")
    parser.add_argument("--out", default=None, help="folder (default: the shipped one)")
    parser.add_argument("--rescore", action="store_true", help="re-measure the stored model's scores")
    parser.add_argument("--sweep", default=None, help="guidance scales, e.g. 1,2,3,5 (default: the full sweep)")
    parser.add_argument("--no-thresholding", action="store_true", help="skip static/dynamic at high w")
    parser.add_argument("--resume", default=None, help="a saved pipeline to continue training from")
    parser.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    parser.add_argument("--time-limit", type=float, default=None, help="stop (and save) after this many seconds")
    parser.add_argument("--no-score", action="store_true", help="train and save only")
    parser.add_argument("--two-shape-fraction", type=float, default=None,
                        help="override the recipe's share of two-shape scenes")
    parser.add_argument("--seed", type=int, default=None, help="override the recipe's seed (data and batches)")
    parser.add_argument("--layout-only", action="store_true",
                        help="score the stored model's two-shape prompts drawn layout first, and store that alone")
    parser.add_argument("--no-pooled", action="store_true",
                        help="condition by cross-attention only (no pooled vector added to the timestep embedding)")
    args = parser.parse_args()
    torch.set_num_threads(1)                 # the same arithmetic on every machine, and a shared CPU stays usable
    folder = args.out or T.shipped_folder(f"t2i-{args.encoder}" + ("-small" if args.small else ""))
    if args.layout_only:
        pipe = T.TextToImagePipeline.from_pretrained(folder)
        metrics = dict(pipe.record["metrics"])
        metrics["layout"] = T.layout_scores(pipe, metrics["best_guidance"])
        pipe.save_pretrained(folder, metrics=metrics)
        print(json.dumps(metrics["layout"], indent=1))
        return
    if not args.rescore:
        given = (("steps", args.steps), ("lr", args.lr), ("seed", args.seed),
                 ("two_shape_fraction", args.two_shape_fraction))
        overrides = {k: v for k, v in given if v is not None}
        recipe = T.T2IRecipe(**overrides)
        if args.resume:                     # the saved run's model, config and encoder
            before = T.TextToImagePipeline.from_pretrained(args.resume)
            init, config, encoder = before.unet, before.unet.config, before.text_encoder
        else:
            before = init = None
            encoder = T.load_text_encoder(args.encoder)
            config = T.T2IConfig(encoder=args.encoder, text_dim=encoder.dim,
                                 pooled_dim=0 if args.no_pooled else encoder.pooled_dim,
                                 **({"channels": T.SMALL_CHANNELS} if args.small else {}))
        model, history, seconds = T.train_text2image(config, recipe, encoder, init=init,
                                                     time_limit=args.time_limit)
        pipe = T.TextToImagePipeline(model, encoder)
        loss = history["loss"]
        if before is not None:          # one record for the whole run: earlier parts first
            pipe.record["parts"] = before.record.get("parts", []) + [
                {"recipe": before.record.get("recipe"), "steps": len(before.record.get("history", {}).get("loss", [])),
                 "train_seconds": before.record.get("metrics", {}).get("train_seconds")}]
            loss = before.record.get("history", {}).get("loss", []) + loss
            seconds += before.record.get("metrics", {}).get("train_seconds") or 0.0
        pipe.save_pretrained(folder, metrics={"train_seconds": seconds}, history={"loss": loss}, recipe=recipe)
        print(f"trained {len(history['loss'])} steps in {seconds:.0f} s (all parts), saved to {folder}")
        if args.no_score:
            return
    pipe = T.TextToImagePipeline.from_pretrained(folder)
    sweep = T.GUIDANCE_SWEEP if args.sweep is None else tuple(float(w) for w in args.sweep.split(","))
    scores = T.benchmark(pipe, sweep=sweep, thresholding=not args.no_thresholding, clip_model=clip_for_scores())
    metrics = {"train_seconds": pipe.record.get("metrics", {}).get("train_seconds"), **scores}
    pipe.save_pretrained(folder, metrics=metrics)
    print(json.dumps(metrics, indent=1))


def clip_for_scores():
    """Chapter 2's CLIP, for the CLIP score: the copy stored with the unCLIP decoder when there is one."""
    from vlmlib import clip as C
    from vlmlib import unclip as U

    try:
        return U.load_decoder()[1]
    except FileNotFoundError:
        return C.load_clip(budget="cpu", device="cpu", verbose=False)[0]


if __name__ == "__main__":
    main()
