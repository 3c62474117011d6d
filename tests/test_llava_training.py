"""Chapter 8's training stages and answer measurement, on tiny random models (fast)."""

import pytest
import torch

from test_llava import IMAGE_ID, _snapshot, _same, _tiny_clip, _tiny_lm
from vlmlib import llava_training as LT
from vlmlib.instructions import QUESTION_TYPES
from vlmlib.llava import LlavaModel, apply_template


@pytest.fixture()
def model():
    torch.manual_seed(1)
    return LlavaModel(_tiny_clip(), _tiny_lm(), IMAGE_ID, projector="linear")


def test_data_has_one_conversation_per_image_and_every_type():
    images, convs, items, shapes = LT.instruction_data(400, seed=3)
    assert len(images) == len(convs) == len(items) == len(shapes) and images.shape[1:] == (3, 32, 32)
    assert {i.type for i in items} == set(QUESTION_TYPES)
    images, convs, items, _ = LT.instruction_data(50, seed=3, types=["count"])
    assert {i.type for i in items} == {"count"}
    images, convs, _ = LT.caption_data(8, seed=1)
    assert len(images) == len(convs) == 8
    with pytest.raises(ValueError, match="types"):
        LT.instruction_data(5, types=["colours"])


def test_stage_1_moves_only_the_projector_and_stage_2_never_the_vision_tower(model):
    images, convs, _ = LT.caption_data(16, seed=1)
    before = {name: _snapshot(getattr(model, name)) for name in ("vision_tower", "language_model", "projector")}
    history, _ = LT.train_stage(model, LT.StageRecipe(stage=1, steps=2, batch_size=4), images, convs)
    assert len(history["loss"]) == 2
    assert _same(before["vision_tower"], model.vision_tower) and _same(before["language_model"], model.language_model)
    assert not _same(before["projector"], model.projector)
    images, convs, items, _ = LT.instruction_data(16, seed=2)
    before = {name: _snapshot(getattr(model, name)) for name in ("vision_tower", "language_model", "projector")}
    LT.train_stage(model, LT.StageRecipe(stage=2, steps=2, batch_size=4), images, convs)
    assert _same(before["vision_tower"], model.vision_tower)
    assert not _same(before["language_model"], model.language_model) and not _same(before["projector"], model.projector)


def test_the_blind_model_trains_and_answers_without_images(model):
    images, convs, items, _ = LT.instruction_data(12, seed=2)
    LT.train_stage(model, LT.StageRecipe(stage=2, steps=1, batch_size=4), images, convs, blind=True)
    acc = LT.accuracy_by_type(model, None, items, max_new_tokens=4)
    assert set(acc) <= set(QUESTION_TYPES) | {"all"} and all(0 <= v <= 1 for v in acc.values())
    seen = LT.accuracy_by_type(model, images, items, max_new_tokens=4)
    assert 0 <= seen["all"] <= 1
    assert len(LT.answers(model, images[:3], [i.question for i in items[:3]], max_new_tokens=3)) == 3


def test_accuracy_counts_exact_answers(model, monkeypatch):
    _, _, items, _ = LT.instruction_data(30, seed=4)
    monkeypatch.setattr(LT, "answers", lambda m, im, qs, n: [i.answer for i in items])
    assert LT.accuracy_by_type(model, None, items)["all"] == 1.0
    monkeypatch.setattr(LT, "answers", lambda m, im, qs, n: ["no idea"] * len(items))
    assert LT.accuracy_by_type(model, None, items)["all"] == 0.0


def test_bad_arguments_are_clear_errors(model):
    images, convs, items, _ = LT.instruction_data(4, seed=2)
    with pytest.raises(ValueError, match="StageRecipe.stage"):
        LT.StageRecipe(stage=3)
    with pytest.raises(ValueError, match="one image per conversation"):
        LT.train_stage(model, LT.StageRecipe(steps=1), images[:2], convs)
    with pytest.raises(TypeError, match="Instructions"):
        LT.accuracy_by_type(model, images, ["what colour is the circle?"])
    with pytest.raises(ValueError, match="one image per question"):
        LT.answers(model, images[:1], ["a", "b"])


def test_dpo_raises_the_chosen_answer_against_the_reference(model):
    import copy

    images, prompts, chosen, rejected, shapes = LT.preference_data(8, seed=6)
    assert all(c != r for c, r in zip(chosen, rejected))
    reference = copy.deepcopy(model)
    history, _ = LT.train_dpo(model, reference, images, prompts, chosen, rejected, steps=6, batch_size=4,
                              lr=3e-3, beta=0.5)
    assert history["margin"][0] == pytest.approx(0.0, abs=1e-5)       # the model starts as the reference
    assert history["margin"][-1] > 0 and history["loss"][-1] < history["loss"][0]
    assert _same(_snapshot(reference.language_model), reference.language_model)
    with pytest.raises(ValueError, match="one entry per pair"):
        LT.train_dpo(model, reference, images, prompts[:2], chosen, rejected)


def test_dpo_with_an_sft_term_adds_the_chosen_answers_mean_token_loss(model):
    """sft_weight adds weight × (the chosen answers' next-token loss): the first step's loss (policy =
    reference, so the DPO part is log 2) equals log 2 + weight × the LM's own loss on the chosen."""
    import copy
    import math

    images, prompts, chosen, rejected, _ = LT.preference_data(4, seed=7)
    model.eval()
    history, _ = LT.train_dpo(copy.deepcopy(model), copy.deepcopy(model), images, prompts, chosen, rejected,
                              steps=1, batch_size=4, lr=1e-9, sft_weight=2.0, seed=0)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(4, (4,), generator=g)                  # the rows train_dpo's first batch draws
    rows = apply_template([LT.conversation(prompts[i], chosen[i]) for i in idx.tolist()], model.n_patches)
    with torch.no_grad():
        nll = model(images[idx], rows["input_ids"], rows["attention_mask"], labels=rows["labels"]).loss.item()
    assert history["loss"][0] == pytest.approx(math.log(2) + 2.0 * nll, rel=1e-4)
    with pytest.raises(ValueError, match="sft_weight"):
        LT.train_dpo(model, copy.deepcopy(model), images, prompts, chosen, rejected, steps=1, sft_weight=-1)


def test_dpo_mixed_with_stage_2_adds_its_loss_on_a_batch_of_instruction_data(model):
    """mix_weight adds weight × stage 2's loss on a batch of the mixed data: at the first step (policy
    = reference, so the DPO part is log 2) the loss is log 2 + weight × the model's own loss there."""
    import copy
    import math

    images, prompts, chosen, rejected, _ = LT.preference_data(4, seed=7)
    mix_images, mix_convs, _, _ = LT.instruction_data(6, seed=8)
    model.eval()
    history, _ = LT.train_dpo(copy.deepcopy(model), copy.deepcopy(model), images, prompts, chosen, rejected,
                              steps=1, batch_size=4, lr=1e-9, seed=0, mix_data=(mix_images, mix_convs),
                              mix_weight=0.5)
    g = torch.Generator().manual_seed(0)
    torch.randint(4, (4,), generator=g)                          # the preference batch comes first
    j = torch.randint(6, (4,), generator=g)                      # then the mixed batch
    rows = apply_template([mix_convs[i] for i in j.tolist()], model.n_patches)
    with torch.no_grad():
        nll = model(mix_images[j], rows["input_ids"], rows["attention_mask"], labels=rows["labels"]).loss.item()
    assert history["mix_loss"][0] == pytest.approx(nll, rel=1e-4)
    assert history["loss"][0] == pytest.approx(math.log(2) + 0.5 * nll, rel=1e-4)
    with pytest.raises(ValueError, match="needs mix_data"):
        LT.train_dpo(model, copy.deepcopy(model), images, prompts, chosen, rejected, steps=1, mix_weight=1.0)
    with pytest.raises(ValueError, match="mix_weight"):
        LT.train_dpo(model, copy.deepcopy(model), images, prompts, chosen, rejected, steps=1,
                     mix_data=(mix_images, mix_convs), mix_weight=float("nan"))
    with pytest.raises(TypeError, match="pair"):
        LT.train_dpo(model, copy.deepcopy(model), images, prompts, chosen, rejected, steps=1, mix_data=mix_images)
    with pytest.raises(ValueError, match="one image per conversation"):
        LT.train_dpo(model, copy.deepcopy(model), images, prompts, chosen, rejected, steps=1,
                     mix_data=(mix_images[:2], mix_convs), mix_weight=1.0)


def test_the_tools_preference_tuning_scores_dpo_with_and_without_the_mix(model):
    """tools.train_llava's DPO step: the tuned copy (stage 2's loss mixed in), its scores, and the same
    DPO without the mix scored beside it; the model it starts from is left as it was."""
    from tools.train_llava import preference_tuning

    recipe = LT.LlavaRecipe(n_pairs=8, dpo_steps=2, batch_size=4, dpo_mix_weight=1.0)
    data = {"instructions": LT.instruction_data(8, seed=4)}
    before = _snapshot(model)
    dpo, tuned, history = preference_tuning(model, recipe, n_describe=4, n_eval=4, data=data)
    assert _same(before, model) and tuned is not model
    assert set(dpo) == {"describe_before", "seconds", "describe_after", "accuracy_after", "without_mix"}
    assert set(dpo["without_mix"]) == {"seconds", "describe_after", "accuracy_after"}
    assert len(history["dpo_loss"]) == len(history["dpo_mix_loss"]) == 2
    plain = LT.LlavaRecipe(n_pairs=8, dpo_steps=2, batch_size=4, dpo_mix_weight=0.0)
    dpo, _, history = preference_tuning(model, plain, n_describe=4, n_eval=4)
    assert "without_mix" not in dpo and "dpo_mix_loss" not in history


def test_a_saved_model_loads_with_the_same_answers_and_checks_its_checksum(model, tmp_path):
    images, convs, items, _ = LT.instruction_data(8, seed=5)
    LT.train_stage(model, LT.StageRecipe(stage=2, steps=2, batch_size=4), images, convs)
    folder = LT.save_llava(model, {"metrics": {"note": 1}}, tmp_path / "llava")
    again, record = LT.load_llava(folder)
    assert record["metrics"] == {"note": 1} and record["projector"] == "linear"
    batch = apply_template(convs[:2], model.n_patches)
    with torch.no_grad():
        assert torch.equal(model.eval()(images[:2], batch["input_ids"], batch["attention_mask"]).logits,
                           again(images[:2], batch["input_ids"], batch["attention_mask"]).logits)
    assert LT.answers(model, images[:3], [i.question for i in items[:3]], 4) == \
        LT.answers(again, images[:3], [i.question for i in items[:3]], 4)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="checksum"):
        LT.load_llava(folder)
    with pytest.raises(FileNotFoundError, match="train_llava"):
        LT.load_llava(tmp_path / "nowhere")


def test_plain_captions_and_their_scores(model):
    images, convs, shapes = LT.caption_data(6, seed=2)
    said = LT.captions(model, images, max_new_tokens=5)
    assert len(said) == 6 and all(isinstance(s, str) for s in said)
    from vlmlib.shapesworld import caption
    perfect = LT.caption_scores([caption(s, "full") for s in shapes], shapes)
    assert perfect["exact"] == 1.0 and perfect["chair_i"] == 0.0 and perfect["recall"] == 1.0
    wrong = LT.caption_scores(["a large red circle at the top"] * 6, shapes)
    assert wrong["exact"] < 1.0
    with pytest.raises(ValueError, match="images"):
        LT.captions(model, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="one scene"):
        LT.caption_scores(["a red circle"] * 2, shapes)
    with pytest.raises(ValueError, match="min_shapes"):
        LT.describe_scores(model, n=2, min_shapes=4)


def test_the_recipe_runs_its_stages_and_is_checked():
    from test_llava import _tiny_clip, _tiny_lm
    recipe = LT.LlavaRecipe(stage1_steps=2, stage2_steps=0, batch_size=4, n_captions=8, n_instructions=8)
    model = LT.build_llava(_tiny_clip(), _tiny_lm(), "linear")
    histories, seconds = LT.train_llava(model, recipe)
    assert list(histories) == ["stage1"] and len(histories["stage1"]) == 2 and seconds > 0
    assert recipe.stage(2).stage == 2 and recipe.stage(1).lr == recipe.stage1_lr
    scores = LT.evaluate_llava(model, n=6)
    assert set(scores) == {"test", "holdout"} and 0 <= scores["test"]["all"] <= 1
    with pytest.raises(ValueError, match="projector"):
        LT.LlavaRecipe(projector="conv")
    with pytest.raises(ValueError, match="stage2_steps"):
        LT.LlavaRecipe(stage2_steps=-1)
    with pytest.raises(TypeError, match="LlavaRecipe"):
        LT.train_llava(model, {"steps": 3})
    with pytest.raises(TypeError, match="stages"):
        LT.train_llava(model, recipe, stages=1)


def test_evaluate_by_type_asks_the_same_number_of_each_type(model, monkeypatch):
    asked = []
    real = LT.accuracy_by_type

    def spy(m, images, items, *args):
        asked.append((len(images), [i.type for i in items]))
        return real(m, images, items, *args)

    monkeypatch.setattr(LT, "accuracy_by_type", spy)
    scores = LT.evaluate_by_type(model, per_type=5, types=("colour", "relation"))
    assert set(scores) == {"test", "holdout"} and set(scores["test"]) == {"colour", "relation"}
    assert [n for n, _ in asked] == [5] * 4 and all(set(t) == {t[0]} for _, t in asked)
    assert [t[0] for _, t in asked] == ["colour", "relation"] * 2
    assert all(0 <= v <= 1 for split in scores.values() for v in split.values())
    asked.clear()                           # one or two scenes often hold no two shapes to relate: drawn again
    for per_type in (1, 2):
        LT.evaluate_by_type(model, per_type=per_type, types=("relation",), splits=("test",))
    assert [n for n, _ in asked] == [1, 2]
    with pytest.raises(ValueError, match="types"):
        LT.evaluate_by_type(model, types=("colour", "smell"))
    with pytest.raises(TypeError, match="types must be a non-empty list"):
        LT.evaluate_by_type(model, types="colour")
    with pytest.raises(ValueError, match="per_type"):
        LT.evaluate_by_type(model, per_type=0)
    with pytest.raises(ValueError, match="splits"):
        LT.evaluate_by_type(model, per_type=2, splits=("validation",))


def test_dialogues_ask_several_questions_and_learn_every_answer(model):
    images, convs, items, shapes = LT.dialogue_data(6, turns=3, seed=4)
    assert len(images) == len(convs) == len(items) == 6
    assert all(1 <= len(chosen) <= 3 and len({i.type for i in chosen}) == len(chosen) for chosen in items)
    batch = apply_template(convs, model.n_patches)
    from vlmlib.llava import llava_tokenizer
    eos = llava_tokenizer().eos_token_id              # every answer ends with [EOS], which is learnt too
    learnt_eos = ((batch["labels"] == eos).sum(1)).tolist()
    assert learnt_eos == [len(chosen) for chosen in items]
    assert int((batch["input_ids"][0] == IMAGE_ID).sum()) == model.n_patches          # the image once
    history, _ = LT.train_stage(model, LT.StageRecipe(stage=2, steps=1, batch_size=2), images, convs)
    assert len(history["loss"]) == 1


def _shipped(name):
    folder = LT.llava_folder().with_name(name)
    if not (folder / "record.json").exists():
        pytest.skip(f"{name} is not shipped")
    return folder


@pytest.mark.parametrize("name", ["llava-shapes", "llava-shapes-dpo"])
def test_the_shipped_models_answer_their_recorded_check(name):
    """Re-ask the check's held-out questions (greedy, so deterministic up to float rounding)."""
    from tools.train_llava import check

    torch.set_num_threads(1)
    model, record = LT.load_llava(_shipped(name))
    now = check(model)
    assert now["n"] == record["check"]["n"]
    assert abs(now["accuracy"] - record["check"]["accuracy"]) <= 2 / now["n"], (now, record["check"])


def test_the_shipped_record_holds_every_comparison_and_the_blind_lm_is_far_below():
    """Issue 12's table: every run scored per question type on both splits; looking at the image pays."""
    record = LT.load_llava(_shipped("llava-shapes"))[1]
    runs = record["runs"]
    assert set(runs) == {"stages 1 + 2", "blind LM (stage 2, no images)", "stage 1 only", "stage 2 only",
                         "linear projector, stages 1 + 2"}
    for scores in runs.values():
        for split in ("test", "holdout"):
            acc = scores["accuracy"][split]
            assert {"colour", "kind", "position", "count", "all"} <= set(acc) and all(0 <= v <= 1 for v in acc.values())
    model_all = runs["stages 1 + 2"]["accuracy"]["test"]["all"]
    assert model_all - runs["blind LM (stage 2, no images)"]["accuracy"]["test"]["all"] >= 0.10
    assert 0 <= runs["stages 1 + 2"]["captions_after_stage1"]["chair_i"] <= 1
    dpo = record["dpo"]
    assert {"describe_before", "describe_after", "accuracy_after"} <= set(dpo)
    assert LT.load_llava(_shipped("llava-shapes-dpo"))[1]["dpo"] == dpo


def test_the_shipped_record_holds_the_ceiling_and_a_curve_that_ends_at_the_shipped_model():
    """Chapter 8's ceiling (nothing held out) and the curves along stage 2; the chapter's curve ends
    where the shipped model is: its last point is re-measured here."""
    torch.set_num_threads(1)
    model, record = LT.load_llava(_shipped("llava-shapes"))
    ceiling, curve, steps = record["ceiling"], record["curve"], record["recipe"]["stage2_steps"]
    assert ceiling["split"] == "all" and set(ceiling["by_type"]) == {"test", "holdout"}
    for rows in (ceiling["curve"], curve["rows"]):
        assert [r["step"] for r in rows] == list(range(curve["every"], steps + 1, curve["every"]))
        assert all(set(r[split]) == set(LT.BAR_TYPES) for r in rows for split in ("test", "holdout"))
    assert curve["same_weights"] is True
    now = LT.evaluate_by_type(model, per_type=curve["per_type"])
    for split in ("test", "holdout"):
        for t, value in now[split].items():
            assert abs(value - curve["rows"][-1][split][t]) <= 2 / curve["per_type"], (split, t, value)


def test_the_shipped_fewshot_model_repeats_its_check_and_starts_from_the_chapters_model():
    from tools.train_fewshot import check
    from vlmlib import fewshot as F

    torch.set_num_threads(1)
    model, record = LT.load_llava(_shipped("llava-shapes-fewshot"))
    assert record["base_weights_sha256"] == LT.load_llava(_shipped("llava-shapes"))[1]["weights_sha256"]
    now = check(model)
    for key in ("follows", "exact"):
        assert abs(now[key] - record["check"][key]) <= 2 / now["n"], (key, now, record["check"])
    for when in ("before", "after"):
        assert set(record[when]["held_out_styles"]) == set(F.HELD_OUT_STYLES)


def test_the_trial_mixes_text_only_and_grey_batches_into_stage_2(model):
    """tools.llava_trials (the chapter's development runs): text-only conversations name held-out
    pairs and have no image; grey copies are grey and their questions name no colour; a mixed
    stage 2 trains the projector and the LM and never the vision tower."""
    from tools import llava_trials as trials
    from vlmlib.shapesworld import COLOUR_NAMES, HELD_OUT

    texts = trials.text_conversations(300, seed=1)
    words = [m["content"][0]["text"] for c in texts for m in c if m["role"] == "user"]
    assert all(len(c[0]["content"]) == 1 for c in texts)                  # no image in any of them
    assert any(f"{c} {k}" in w for w in words for c, k in HELD_OUT)
    grey, convs = trials.grey_conversations(40, seed=1)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    questions = [c[0]["content"][-1]["text"] for c in convs]
    assert not any(colour in q.split() for q in questions for colour in COLOUR_NAMES)
    images, instr = LT.instruction_data(16, seed=2)[:2]
    recipe = LT.LlavaRecipe(stage2_steps=4, batch_size=4)
    tower, lm_before = _snapshot(model.vision_tower), _snapshot(model.language_model)
    history = trials.mixed_stage2(model, recipe, images, instr, [(0.4, None, texts[:16]), (0.4, grey, convs)])
    assert len(history["loss"]) == 4 and all(torch.isfinite(torch.tensor(history["loss"])))
    assert _same(tower, model.vision_tower) and not _same(lm_before, model.language_model)
    with pytest.raises(ValueError, match="add up"):
        trials.mixed_stage2(model, recipe, images, instr, [(0.7, None, texts), (0.6, grey, convs)])


def test_answer_probabilities_multiply_the_next_token_probabilities_one_step_at_a_time(model):
    """The one-pass score equals feeding the prompt and then the answer's tokens one at a time, each
    time reading the next token's probability, and it counts the end of the answer too."""
    from vlmlib.llava import conversation, llava_tokenizer

    tok = llava_tokenizer()
    images, _, items, _ = LT.instruction_data(6, seed=5)
    questions = [i.question for i in items]
    answers = [i.answer for i in items[:3]] + ["red", "two", "no"]
    got = LT.answer_probabilities(model, images, questions, answers, batch_size=4)
    assert got.shape == (6,) and bool(((got > 0) & (got < 1)).all())
    model.eval()
    for k in range(6):
        prompt = apply_template([conversation(questions[k])], model.n_patches, add_generation_prompt=True)
        ids = prompt["input_ids"]
        want = 1.0
        for t in tok(" " + answers[k], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]:
            with torch.no_grad():
                p = model(images[k:k + 1], ids).logits[0, -1].softmax(-1)
            want *= float(p[t])
            ids = torch.cat([ids, torch.tensor([[t]])], 1)
        assert got[k].item() == pytest.approx(want, rel=1e-4)
    blind = LT.answer_probabilities(model, None, questions[:2], answers[:2])
    assert blind.shape == (2,)
    with pytest.raises(ValueError, match="one candidate answer per question"):
        LT.answer_probabilities(model, images, questions, answers[:2])
    with pytest.raises(ValueError, match="images"):
        LT.answer_probabilities(model, images[:2], questions, answers)
    with pytest.raises(TypeError, match="model"):
        LT.answer_probabilities("model", images, questions, answers)


def test_the_ceilings_data_holds_held_out_pairs_and_the_chapters_data_none():
    from tools.train_llava import training_data
    from vlmlib.shapesworld import HELD_OUT

    recipe = LT.LlavaRecipe(n_captions=60, n_instructions=60)
    for split, expected in (("train", False), ("all", True)):
        data = training_data(recipe, split=split)
        for shapes in (data["captions"][2], data["instructions"][3]):
            assert any((s.colour, s.kind) in HELD_OUT for scene in shapes for s in scene) is expected, split


def test_the_ceiling_run_trains_on_every_pair_and_asks_each_bar_type(monkeypatch):
    """tools.train_llava's ceiling: the recipe trained on the ``all`` split, scored per bar type on
    test and held-out-pair images (tiny parts stand in for the shipped tower and LM)."""
    import tools.train_llava as TL
    from vlmlib.shapesworld import HELD_OUT

    monkeypatch.setattr(TL, "parts", lambda: (_tiny_clip(), None))
    monkeypatch.setattr(TL.lm, "load_lm", lambda: (_tiny_lm(), None))
    seen = {}
    train = LT.train_llava

    def spy(model, recipe, stages, data=None, **kw):
        seen["stages"], seen["data"] = stages, data
        return train(model, recipe, stages, data=data, **kw)

    monkeypatch.setattr(TL.LT, "train_llava", spy)
    recipe = LT.LlavaRecipe(projector="linear", n_captions=24, n_instructions=24, stage1_steps=1, stage2_steps=1,
                            batch_size=4)
    scores = TL.ceiling_run(recipe, per_type=2)
    assert seen["stages"] == (1, 2)
    assert any((s.colour, s.kind) in HELD_OUT for scene in seen["data"]["instructions"][3] for s in scene)
    assert scores["split"] == "all" and scores["per_type"] == 2 and scores["seconds"] > 0
    assert set(scores["by_type"]) == {"test", "holdout"}
    assert all(set(v) == set(LT.BAR_TYPES) and all(0 <= a <= 1 for a in v.values())
               for v in scores["by_type"].values())


def test_measuring_along_training_leaves_the_training_unchanged(monkeypatch):
    """tools.train_llava's curve: the hook measures every few steps of stage 2 only, and a model
    trained with it ends bit for bit equal to one trained without it."""
    import tools.train_llava as TL

    recipe = LT.LlavaRecipe(projector="linear", n_captions=16, n_instructions=16, stage1_steps=2, stage2_steps=4,
                            batch_size=4)
    data = {"captions": LT.caption_data(16, seed=1), "instructions": LT.instruction_data(16, seed=2)}
    trained = []
    for measure in (False, True):
        torch.manual_seed(1)
        model = LlavaModel(_tiny_clip(), _tiny_lm(), IMAGE_ID, projector="linear")
        hook, rows = TL.curve_hook(model, every=2, per_type=1) if measure else (None, [])
        LT.train_llava(model, recipe, (1, 2), data=data, after_step=hook)
        trained.append(model.state_dict())
    assert [r["step"] for r in rows] == [2, 4] and set(rows[0]) == {"step", "test", "holdout"}
    assert all(torch.equal(v, trained[1][k]) for k, v in trained[0].items())
    with pytest.raises(TypeError, match="after_step"):
        LT.train_llava(model, recipe, (2,), data=data, after_step="every 2")
    with pytest.raises(TypeError, match="after_step"):
        LT.train_stage(model, recipe.stage(2), *data["instructions"][:2], after_step=250)
