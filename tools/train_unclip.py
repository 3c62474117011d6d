"""Train chapter 6's unCLIP decoder and store it in the package.

    python -m tools.train_unclip              # writes vlmlib/weights/unclip-decoder/ (about 20 minutes on one core)
    python -m tools.train_unclip --rescore    # re-measure the stored decoder's scores

The decoder (``vlmlib.unclip.Decoder``) draws a one-shape scene from chapter 2's CLIP image
embedding; the CLIP it reads is stored beside it. The prior that feeds it is cheap, and the
chapter trains it live. ``record.json`` holds the config, recipe, loss history and the
reconstruction scores measured by ``vlmlib.unclip.decoder_scores``.
"""

from __future__ import annotations

import argparse
import json

import torch

from vlmlib import clip as C
from vlmlib import unclip as U
from vlmlib.text2image import T2IConfig


CHECK_N = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--rescore", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = args.out or U.decoder_folder()
    if not args.rescore:
        clip_model = C.load_clip(budget="cpu", device="cpu", verbose=False)[0]
        config = T2IConfig(encoder="clip", text_dim=clip_model.config.embed_dim, pooled_dim=clip_model.config.embed_dim)
        recipe = U.DecoderRecipe() if args.steps is None else U.DecoderRecipe(steps=args.steps)
        model, history, seconds = U.train_decoder(clip_model, config, recipe)
        U.save_decoder(model, clip_model, recipe, {"train_seconds": seconds}, {"loss": history["loss"]}, folder)
        print(f"trained in {seconds:.0f} s, saved to {folder}")
    model, clip_model, record = U.load_decoder(folder)
    if hasattr(U, "decoder_scores"):
        metrics = {"train_seconds": record["metrics"].get("train_seconds"), **U.decoder_scores(model, clip_model),
                   "check": {"n": CHECK_N, **U.decoder_scores(model, clip_model, n=CHECK_N)}}   # the test repeats this
        recipe = U.DecoderRecipe(**record["recipe"])
        U.save_decoder(model, clip_model, recipe, metrics, record["history"], folder)
        print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
