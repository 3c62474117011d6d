"""Train chapter 9's tiny Whisper on spoken ShapesWorld sentences, and store it in the package.

    python -m tools.train_asr                 # writes vlmlib/weights/asr-whisper-tiny/ (about 20 minutes on one busy core)
    python -m tools.train_asr --verify-only   # re-measure the stored model's word error rates (what the tests repeat)

The model is ``vlmlib.asr.ASRConfig()``'s ``WhisperForConditionalGeneration``, trained with
``vlmlib.asr.SHIPPED_RECIPE`` on ``speech.spoken_sentences(n_train, "train", data_seed)``;
``record.json`` beside its weights holds the config, the recipe, the word error rates on the seen
voices ("test") and on held-out voices, the training time and the loss history.
"""

from __future__ import annotations

import argparse
import json

import torch

from vlmlib import asr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-only", action="store_true", help="re-score the stored model, train nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)                 # the same arithmetic on every machine, and a shared CPU stays usable
    if args.verify_only:
        model, record = asr.load_shipped_asr()
        print(json.dumps({"stored": record["metrics"], "now": asr.evaluate(model)}, indent=1))
        return
    config, r = asr.ASRConfig(), asr.SHIPPED_RECIPE
    mel, texts = asr.spoken_set(r["n_train"], "train", r["data_seed"], config.frames)
    model, history, seconds = asr.fit_asr(config, mel, texts, r["steps"], r["batch"], r["lr"], r["max_shift"], r["seed"])
    metrics = {"train_seconds": round(seconds, 1), **asr.evaluate(model)}
    print(metrics)
    folder = asr.save_asr(model, config, metrics, {"loss": history["loss"]})
    print(f"saved to {folder}")


if __name__ == "__main__":
    main()
