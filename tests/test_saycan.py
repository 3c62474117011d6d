"""SayCan in miniature (vlmlib.saycan): the requests, the planner LM's scores, the values, the loop, argument checks."""

import numpy as np
import pytest
import torch

from vlmlib import gridworld as G
from vlmlib import saycan as S
from vlmlib import vla
from vlmlib.codegen import CodeGenConfig, fit, new_model
from vlmlib.shapesworld import HELD_OUT

TINY = CodeGenConfig(hidden_size=32, layers=1, heads=4, intermediate_size=64, max_positions=64)


@pytest.fixture(scope="module")
def todo():
    return S.requests(12, seed=5, lengths=(2, 3))


@pytest.fixture(scope="module")
def random_lm():
    torch.manual_seed(0)
    tok = S.PlanTokenizer()
    return new_model(TINY, tok).eval(), tok


def test_requests_are_feasible_step_by_step_ambiguous_by_words_and_reproducible(todo):
    assert [r.text for r in todo] == [r.text for r in S.requests(12, seed=5, lengths=(2, 3))]
    assert {len(r.steps) for r in S.requests(6, seed=5, lengths=[3])} == {3} and S.requests(3) == S.requests(3, lengths=[2])
    for r in todo:
        assert r.text == ", then ".join(s.text for s in r.steps) and 2 <= len(r.steps) <= 3
        assert all((s.colour, s.kind) not in HELD_OUT for s in r.start.shapes) and len(r.start.shapes) <= S.MAX_SHAPES
        assert r.right
        for plan in r.right:              # each right plan fits the steps and the expert does it, one skill after the other
            state = r.start
            for k, (step, skill) in enumerate(zip(r.steps, plan, strict=True)):
                task = G.task_from_text(state, skill, r.seed)
                assert step.fits(task)
                if k == r.ambiguous:      # two shapes fit the words, and one of them cannot be pushed that way
                    fitting = [t for t in (G.task_from_text(state, s, r.seed) for s in G.skills(state)) if step.fits(t)]
                    assert step.family == "push" and len(fitting) == 2
                    assert sum(G.expert_plan(state, t) is not None for t in fitting) == 1
                episode = S.execute("expert", [task])[0]
                assert episode.success
                state = episode.states[-1]


def test_the_tokenizer_puts_the_loss_on_the_plan_only_and_names_unknown_words():
    tok = S.PlanTokenizer()
    prompts, plans = S.plan_texts(5, seed=2)
    assert all(p.startswith("request: ") and p.endswith(" plan:") for p in prompts)
    assert all(q.endswith(" . done .") for q in plans)
    b = tok.batch(prompts, plans)
    for i, (p, q) in enumerate(zip(prompts, plans)):
        n_prompt, n_plan = 1 + len(tok.ids(p)), len(tok.ids(q))
        labels = b["labels"][i]
        assert (labels[:n_prompt] == -100).all() and (labels[n_prompt + n_plan:] == -100).all()
        assert torch.equal(labels[n_prompt:n_prompt + n_plan], b["input_ids"][i, n_prompt:n_prompt + n_plan])
        assert int(b["attention_mask"][i].sum()) == n_prompt + n_plan
    with pytest.raises(ValueError, match="banana"):
        tok.ids("push the banana up")
    with pytest.raises(ValueError, match="does not know"):
        tok.ids("push the red circle up!")


def test_say_is_the_probability_of_the_candidates_tokens_as_transformers_computes_it(random_lm):
    model, tok = random_lm
    request, done = "push a red shape up, then go to a blue shape", ["push the red circle up"]
    candidates = ["go to the blue square", "push the blue square to the left", S.DONE]
    p = S.say(model, tok, request, done, candidates)
    for c, pc in zip(candidates, p):       # the reference: transformers' own loss on the candidate's tokens
        b = tok.batch([S.prompt_text(request, done)], [f"{c} ."])
        n = int((b["labels"] != -100).sum())
        with torch.no_grad():
            nll = model(**b).loss.item() * n
        assert np.isclose(np.log(pc), -nll, atol=1e-4)
    start = S.requests(1, seed=3)[0].start
    every = S.say(model, tok, "go to a red shape", [], G.skills(start) + [S.DONE])
    assert (every > 0).all() and every.sum() <= 1 + 1e-6    # disjoint sequences: the probabilities sum to at most 1


def test_after_training_the_scores_prefer_the_skills_that_fit_the_words_and_then_done():
    # a tiny corpus: two requests, each planned with shapes of its colour, the kinds at random
    prompts = [S.prompt_text("go to a red shape"), S.prompt_text("push a blue shape up")] * 4
    plans = [f"go to the red {k} . done ." for k in ("circle", "square")] * 2
    plans = [x for pair in zip(plans, [f"push the blue {k} up . done ." for k in ("cross", "square")] * 2) for x in pair]
    torch.manual_seed(0)
    tok = S.PlanTokenizer()
    model = new_model(TINY, tok)
    fit(model, tok, prompts, plans, steps=80, batch_size=8, lr=1e-2, desc="tiny planner")
    model.eval()
    candidates = ["go to the red circle", "go to the red square", "go to the blue cross", "push the blue cross up",
                  "push the red circle up", S.DONE]
    p = S.say(model, tok, "go to a red shape", [], candidates)
    assert min(p[:2]) > 0.3 and max(p[2:]) < 0.05 and p.sum() <= 1 + 1e-6
    p = S.say(model, tok, "push a blue shape up", [], candidates)
    assert p[3] > 0.3 and max(np.delete(p, 3)) < 0.05
    p = S.say(model, tok, "push a blue shape up", ["push the blue cross up"], candidates)
    assert p[-1] > 0.5                    # one step asked, one step done: "done"


def test_the_loop_with_a_perfect_value_runs_only_feasible_skills_and_its_shortcut_is_exact(todo, random_lm):
    model, tok = random_lm
    for planner in ("lm_x_value", "value"):
        for o in S.run(todo[:6], model, tok, "expert", planner, value="feasible"):
            assert len(o.skills) == len(o.episodes) <= len(o.request.steps) + 1
            assert all(e.success for e in o.episodes)            # value 1 only where the expert can do it
    lazy = S.run(todo, model, tok, "expert", "lm_x_value", "rollout")
    full = S.run(todo, model, tok, "expert", "lm_x_value", "rollout", record=True)   # every value rolled out
    assert [o.skills for o in lazy] == [o.skills for o in full]
    for o in full:
        for table in o.tables:
            assert table[S.DONE]["value"] == 1 and all(r["value"] in (0, 1) for r in table.values())


def test_planning_and_execution_success_are_judged_against_the_request(todo):
    r = todo[0]
    state, episodes = r.start, []
    for skill in r.right[0]:
        episodes.append(S.execute("expert", [G.task_from_text(state, skill, r.seed)])[0])
        state = episodes[-1].states[-1]
    assert S.Outcome(r, list(r.right[0]), True, episodes).planned
    assert S.Outcome(r, list(r.right[0]), True, episodes).executed
    assert not S.Outcome(r, list(r.right[0]), False, episodes).planned                 # never said "done"
    assert not S.Outcome(r, list(r.right[0][:-1]), True, episodes[:-1]).executed       # stopped a step early


def test_explain_gives_tables_and_the_film_of_the_plan(todo, random_lm):
    model, tok = random_lm
    out = S.explain(todo[1], model, tok, "expert", top=4)
    assert len(out["tables"]) == len(out["skills"]) + out["said_done"]
    for t, chosen in zip(out["tables"], out["skills"] + [S.DONE]):
        assert len(t) <= 5 and all(np.isclose(v["product"], v["p_LM"] * v["value"]) for v in t.values())
        assert chosen in t and t[chosen]["product"] == max(v["product"] for v in t.values())   # SayCan's choice
    again = S.run([todo[1]], model, tok, "expert")[0]
    assert again.skills == out["skills"]
    assert len(out["frames"]) == sum(e.steps for e in again.episodes) + 1        # each action's frame and the last state
    assert out["frames"].ndim == 4 and out["frames"].shape[1:] == (3, G.IMAGE_SIZE, G.IMAGE_SIZE)


def test_a_neural_policy_executes_and_gives_rollout_values(todo):
    torch.manual_seed(0)
    policy = vla.VLAPolicy(vla.VLAConfig(dim=32, depth=1, heads=2)).eval()
    r = todo[0]
    skills = G.skills(r.start)[:3] + [S.DONE]
    v = S.values(policy, r.start, skills, r.seed)
    assert v.shape == (4,) and v[-1] == 1 and set(v[:3]) <= {0.0, 1.0}
    feasible = S.values("expert", r.start, skills, r.seed, kind="feasible")
    assert list(feasible[:3]) == [G.expert_plan(r.start, G.task_from_text(r.start, s)) is not None for s in skills[:3]]


def test_arguments_are_checked(todo, random_lm):
    model, tok = random_lm
    with pytest.raises(ValueError, match="n must be at least 0"):
        S.requests(-1)
    with pytest.raises(TypeError, match="lengths"):
        S.requests(2, lengths=3)
    with pytest.raises(ValueError, match="lengths"):
        S.requests(2, lengths=[7])
    with pytest.raises(ValueError, match="planner must be one of"):
        S.run(todo[:1], model, tok, planner="words")
    with pytest.raises(ValueError, match="value must be one of"):
        S.run(todo[:1], model, tok, value="guess")
    with pytest.raises(TypeError, match="policy must be a vla.VLAPolicy"):
        S.run(todo[:1], model, tok, policy="oracle")
    with pytest.raises(TypeError, match="tokenizer must be a saycan.PlanTokenizer"):
        S.say(model, object(), "go to a red shape", [], ["done"])
    with pytest.raises(TypeError, match="model must be the planner LM"):
        S.say(object(), tok, "go to a red shape", [], ["done"])
    with pytest.raises(TypeError, match="requests must be a list"):
        S.run(todo[0], model, tok)
    with pytest.raises(TypeError, match="request must be a saycan.Request"):
        S.explain("go to a red shape", model, tok)
    with pytest.raises(ValueError, match="Step.direction"):
        S.Step("push", "red", "sideways")
    with pytest.raises(ValueError, match="kind must be one of"):
        S.values("expert", todo[0].start, ["done"], kind="hope")
    with pytest.raises(TypeError, match="config must be a codegen.CodeGenConfig"):
        S.build_planner(config={"hidden_size": 8})
