"""Train chapter 8's LLaVA and the runs it is compared with; store the models and every score.

    python -m tools.train_llava              # vlmlib/weights/llava-shapes{,-dpo}/ (about an hour on one core)
    python -m tools.train_llava --jobs 2     # the same, the comparison runs in a second process
    python -m tools.train_llava --rescore    # re-measure the stored models' checks (what the tests repeat)
    python -m tools.train_llava --ceiling-only --jobs 2  # add the ceiling run and the curves (about 20 minutes)

Every run starts from chapter 2's CLIP taught crowded scenes (``vlmlib.scene_clip.load_scene_clip``:
its vision tower, frozen) and the shipped text-only language model, with ``LlavaRecipe()``:

- **the chapter's model** (``llava-shapes``): stage 1 (projector only, image–caption pairs), then
  stage 2 (projector and LM, one question per image); its plain captions are scored after stage 1;
- **its preference-tuned copy** (``llava-shapes-dpo``): DPO on faithful / hallucinated descriptions,
  against the stage-2 model as the frozen reference, with stage 2's own loss mixed into every step
  (``LlavaRecipe.dpo_mix_weight``; the same DPO without it is scored too, not kept);
- **the comparisons**, scored and not kept: the blind LM (stage 2 without images), stage 1 only,
  stage 2 only (no stage 1), and a linear projector (stages 1 and 2);
- **the ceiling**, scored and not kept: the same recipe trained with nothing held out, asked the
  bar questions on held-out-pair images; it and the chapter's model are measured along stage 2
  (``--ceiling-only`` adds both to the stored records).

``record.json`` beside the weights holds the recipe, the tower's (its scene recipe and what it
measured: the shape-token probe and the twin accuracy of chapter 2's CLIP and of the taught one),
each run's accuracy per question type on test images (colour–kind pairs seen in training) and
held-out-pair images, the hallucination rates before and after DPO, the loss histories, and a small ``check`` that the tests re-measure.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from vlmlib import lm
from vlmlib import llava_training as LT
from vlmlib import scene_clip as SC

CHECK_N = 64


def check(model) -> dict:
    """A quick re-measurement: accuracy on CHECK_N held-out-pair questions (greedy, deterministic)."""
    images, _, items, _ = LT.instruction_data(CHECK_N, split="holdout", seed=91)
    return {"n": CHECK_N, "accuracy": LT.accuracy_by_type(model, images, items)["all"]}


def preference_tuning(model, recipe, n_describe: int, n_eval: int, data: dict | None = None):
    """DPO on a copy of ``model`` (the frozen reference is another copy): ``(scores, tuned, history)``,
    the scores holding hallucination before and after and the answers' accuracy after. With
    ``recipe.dpo_mix_weight`` > 0, stage 2's loss on its own data (``data["instructions"]``, made if
    not given) is mixed into every step, and the same DPO without it is scored too (``without_mix``:
    what the mixing prevents), its model not kept."""
    before = LT.describe_scores(model, n=n_describe)
    images, prompts, chosen, rejected, _ = LT.preference_data(recipe.n_pairs, seed=recipe.seed + 3)
    mix = None
    if recipe.dpo_mix_weight:
        mix = (data or training_data(recipe))["instructions"][:2]

    def tune(mix_data):
        reference, tuned = copy.deepcopy(model).eval(), copy.deepcopy(model)
        history, seconds = LT.train_dpo(tuned, reference, images, prompts, chosen, rejected, steps=recipe.dpo_steps,
                                        lr=recipe.dpo_lr, beta=recipe.dpo_beta, seed=recipe.seed,
                                        sft_weight=recipe.dpo_sft_weight, mix_data=mix_data,
                                        mix_weight=recipe.dpo_mix_weight if mix_data else 0.0)
        scores = {"seconds": seconds, "describe_after": LT.describe_scores(tuned, n=n_describe),
                  "accuracy_after": LT.evaluate_llava(tuned, n=n_eval)}
        return scores, tuned, history

    scores, tuned, history = tune(mix)
    dpo = {"describe_before": before, **scores}
    if mix is not None:
        dpo["without_mix"] = tune(None)[0]
    print("DPO", json.dumps(dpo), flush=True)
    kept = {"dpo_loss": history["loss"], "dpo_margin": history["margin"]}
    if "mix_loss" in history:
        kept["dpo_mix_loss"] = history["mix_loss"]
    return dpo, tuned, kept


COMPARISONS = [("blind LM (stage 2, no images)", {"stages": (2,), "blind": True}),
               ("stage 1 only", {"stages": (1,)}),
               ("stage 2 only", {"stages": (2,)}),
               ("linear projector, stages 1 + 2", {"stages": (1, 2), "projector": "linear"})]


def parts():
    """The vision tower's CLIP (chapter 2's, taught scenes: ``vlmlib.scene_clip``) and its artifact."""
    return SC.load_scene_clip(budget="cpu", device="cpu", verbose=False)


def training_data(recipe, split: str = "train") -> dict:
    """Both stages' data. ``split="all"`` draws scenes of every colour–kind pair, held-out pairs included."""
    return {"captions": LT.caption_data(recipe.n_captions, split=split, seed=recipe.seed),
            "instructions": LT.instruction_data(recipe.n_instructions, split=split, seed=recipe.seed + 1)}


#: Along stage 2, every CURVE_EVERY steps, CURVE_PER_TYPE questions of each bar type per split.
CURVE_EVERY, CURVE_PER_TYPE = 250, 100


def curve_hook(model, every: int = CURVE_EVERY, per_type: int = CURVE_PER_TYPE):
    """An ``after_step`` for :func:`vlmlib.llava_training.train_llava` that measures ``model`` every
    ``every`` steps of stage 2 (``evaluate_by_type``, ``per_type`` questions of each bar type on test
    and held-out-pair images), and the list of rows it fills. It draws no random numbers from
    torch, so the model trains exactly as it would without it."""
    rows: list[dict] = []

    def hook(stage: int, step: int) -> None:
        if stage != 2 or (step + 1) % every:
            return
        was_training = model.training
        model.eval()
        rows.append({"step": step + 1, **LT.evaluate_by_type(model, per_type=per_type)})
        model.train(was_training)

    return hook, rows


def ceiling_run(recipe, per_type: int = 150, every: int = CURVE_EVERY, curve_per_type: int = CURVE_PER_TYPE) -> dict:
    """The chapter's recipe trained on scenes of **every** colour–kind pair (the ``all`` split), then
    asked ``per_type`` questions of each bar type on test and held-out-pair images: what the model
    reaches on those images when nothing is held out, so the held-out gap can be told apart from
    what this model and budget cannot do on any pair. Measured along stage 2 too. Scored, not kept."""
    torch.set_num_threads(1)
    model = LT.build_llava(parts()[0], lm.load_lm()[0], recipe.projector, seed=recipe.seed)
    hook, curve = curve_hook(model, every, curve_per_type)
    _, seconds = LT.train_llava(model, recipe, (1, 2), data=training_data(recipe, split="all"), after_step=hook)
    scores = {"split": "all", "seconds": seconds, "per_type": per_type,
              "by_type": LT.evaluate_by_type(model, per_type=per_type), "curve": curve}
    print("ceiling", json.dumps(scores), flush=True)
    return scores


def chapter_curve(recipe, shipped, every: int = CURVE_EVERY, per_type: int = CURVE_PER_TYPE) -> dict:
    """The chapter's model trained again by ``recipe``, measured along stage 2; ``same_weights`` says
    whether it ends bit for bit equal to ``shipped`` (the measuring changes nothing)."""
    torch.set_num_threads(1)
    model = LT.build_llava(parts()[0], lm.load_lm()[0], recipe.projector, seed=recipe.seed)
    hook, curve = curve_hook(model, every, per_type)
    LT.train_llava(model, recipe, (1, 2), data=training_data(recipe), after_step=hook)
    theirs = shipped.state_dict()
    same = all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    print("curve", json.dumps({"same_weights": same, "curve": curve}), flush=True)
    return {"every": every, "per_type": per_type, "rows": curve, "same_weights": same}


def train_run(tower, recipe, stages, data, n_eval, projector=None, blind=False, keep=None, n_captions=200,
              curve: list | None = None):
    """A fresh model (the tower, the shipped LM, a new projector) trained by ``stages`` of ``recipe``:
    ``(model, scores)``. With ``keep``, the loss histories go there and stage 1's captions are scored;
    with ``curve`` (a list), the rows of :func:`curve_hook` go there."""
    model = LT.build_llava(tower, lm.load_lm()[0], projector or recipe.projector, seed=recipe.seed)
    hook, rows = curve_hook(model) if curve is not None else (None, [])
    scores = {}
    for stage in stages:
        histories, seconds = LT.train_llava(model, recipe, (stage,), blind=blind, data=data, after_step=hook)
        scores[f"stage{stage}_seconds"] = seconds
        if stage == 1 and keep is not None:
            images, shapes = LT.caption_data(n_captions, split="test", seed=80)[::2]
            scores["captions_after_stage1"] = LT.caption_scores(LT.captions(model, images), shapes)
            keep["histories"] = histories
        elif keep is not None:
            keep["histories"].update(histories)
    scores["accuracy"] = LT.evaluate_llava(model, n=n_eval, blind=blind)
    if curve is not None:
        curve.extend(rows)
    return model, scores


def compare_run(name, recipe, n_eval, stages, projector=None, blind=False, data=None) -> dict:
    """One comparison run's scores (in this process, or in a worker that loads the parts itself)."""
    torch.set_num_threads(1)
    scores = train_run(parts()[0], recipe, stages, data or training_data(recipe), n_eval, projector, blind)[1]
    print(name, json.dumps(scores), flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for llava-shapes (the DPO copy goes beside it)")
    parser.add_argument("--rescore", action="store_true", help="re-measure the stored checks, train nothing")
    parser.add_argument("--no-compare", action="store_true", help="skip the comparison runs")
    parser.add_argument("--stage2-steps", type=int, default=None, help="override the recipe (for trials)")
    parser.add_argument("--dpo-only", action="store_true",
                        help="redo only the preference tuning, from the stored model, with the current recipe's "
                             "DPO settings (the stored runs are kept)")
    parser.add_argument("--ceiling-only", action="store_true",
                        help="train and score only the ceiling run (nothing held out) and the chapter's model "
                             "again, both measured along stage 2, and add them to the stored records (the models "
                             "are kept)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes: with 2 or more, the comparison runs go to workers, one thread each")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: tiny data, two steps per stage, small scoring sets")
    args = parser.parse_args()
    torch.set_num_threads(1)                 # the same arithmetic on every machine, and a shared CPU stays usable
    main_folder = Path(args.out) if args.out else LT.llava_folder()
    dpo_folder = main_folder.with_name(main_folder.name + "-dpo")
    if args.rescore:
        for folder in (main_folder, dpo_folder):
            model, record = LT.load_llava(folder)
            print(folder.name, {"stored": record["check"], "now": check(model)})
        return
    if args.ceiling_only:
        shipped, stored = LT.load_llava(main_folder)
        sizes = dict(n_captions=64, n_instructions=64, stage1_steps=2, stage2_steps=4, batch_size=8) \
            if args.quick else {}
        recipe = LT.LlavaRecipe(**{**stored["recipe"], **sizes})
        every, per_type, curve_per_type = (2, 4, 2) if args.quick else (CURVE_EVERY, 150, CURVE_PER_TYPE)
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            ceiling = pool.submit(ceiling_run, recipe, per_type, every, curve_per_type) if args.jobs > 1 else None
            curve = chapter_curve(recipe, shipped, every, curve_per_type)
            ceiling = ceiling.result() if ceiling else ceiling_run(recipe, per_type, every, curve_per_type)
        for folder in (main_folder, dpo_folder):         # the weights are not touched
            path = folder / "record.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "ceiling": ceiling, "curve": curve},
                                       indent=1, allow_nan=False))
        print(f"added the ceiling and the curve to {main_folder} and {dpo_folder}")
        return
    if args.dpo_only:
        model, stored = LT.load_llava(main_folder)
        recipe = LT.LlavaRecipe(**{**stored["recipe"], **{k: v for k, v in LT.LlavaRecipe().to_dict().items()
                                                         if k.startswith("dpo_")}})
        n_describe, n_eval = (8, 12) if args.quick else (200, 300)
        dpo, tuned, dpo_history = preference_tuning(model, recipe, n_describe, n_eval)
        common = {"recipe": recipe.to_dict(), "tower": stored.get("tower"), "runs": stored["runs"], "dpo": dpo,
                  "seconds": stored["seconds"], **{k: stored[k] for k in ("ceiling", "curve") if k in stored}}
        LT.save_llava(model, {**common, "check": stored["check"], "history": stored["history"]}, main_folder)
        LT.save_llava(tuned, {**common, "check": check(tuned), "history": dpo_history}, dpo_folder)
        print(f"saved {dpo_folder}")
        return
    sizes = dict(n_captions=64, n_instructions=64, stage1_steps=2, stage2_steps=2, batch_size=8, n_pairs=16,
                 dpo_steps=2) if args.quick else {}
    if args.stage2_steps:
        sizes["stage2_steps"] = args.stage2_steps
    recipe = LT.LlavaRecipe(**sizes)
    n_eval, n_describe, n_captions = (12, 8, 8) if args.quick else (300, 200, 200)
    runs, start = {}, time.perf_counter()
    comparisons = [] if args.no_compare else COMPARISONS
    pool = ProcessPoolExecutor(max_workers=args.jobs - 1, mp_context=multiprocessing.get_context("spawn")) \
        if args.jobs > 1 and comparisons else None
    futures = {name: pool.submit(compare_run, name, recipe, n_eval, **kw) for name, kw in comparisons} if pool else {}
    ceiling_future = pool.submit(ceiling_run, recipe, 4 if args.quick else 150) if pool else None
    tower, tower_art = parts()
    data = training_data(recipe)
    kept: dict = {}
    rows: list = []
    model, runs["stages 1 + 2"] = train_run(tower, recipe, (1, 2), data, n_eval, keep=kept, n_captions=n_captions,
                                            curve=rows)
    print("stages 1 + 2", json.dumps(runs["stages 1 + 2"]), flush=True)
    dpo, tuned, dpo_history = preference_tuning(model, recipe, n_describe, n_eval, data)   # while the workers run
    ceiling = None
    for name, kw in comparisons:
        runs[name] = futures[name].result() if pool else compare_run(name, recipe, n_eval, data=data, **kw)
    if comparisons:
        ceiling = ceiling_future.result() if pool else ceiling_run(recipe, 4 if args.quick else 150)
    if pool:
        pool.shutdown()
    common = {"recipe": recipe.to_dict(), "tower": {"name": SC.NAME, "recipe": tower_art.config["recipe"],
                                                      "metrics": tower_art.metrics},
              "runs": runs, "dpo": dpo, "seconds": time.perf_counter() - start}
    # measured as the shipped model trained, so it ends with the shipped weights
    common["curve"] = {"every": CURVE_EVERY, "per_type": CURVE_PER_TYPE, "rows": rows, "same_weights": True}
    if ceiling is not None:
        common["ceiling"] = ceiling
    LT.save_llava(model, {**common, "check": check(model), "history": kept["histories"]}, main_folder)
    LT.save_llava(tuned, {**common, "check": check(tuned), "history": dpo_history}, dpo_folder)
    print(f"saved {main_folder} and {dpo_folder} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
