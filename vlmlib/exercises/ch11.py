"""Checkers for chapter 11, from language to action: 11.1 the grid world's step (moving and pushing),
11.2 the expert's breadth-first search, 11.3 SayCan's choice of a skill (language model × value)."""

from __future__ import annotations

import numpy as np

from .. import gridworld as G
from .core import Case, Verdict, check_function, python_scalar, safe_repr
from .registry import exercise


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(int(np.random.default_rng(seed).integers(2**31)))


def _shape(colour: str, kind: str, cell: tuple[int, int]) -> G.GridShape:
    return G.GridShape(colour, kind, "large", cell)


# -- 11.1: one step of the world ---------------------------------------------------------------------
def _step_cases(rng: np.random.Generator) -> list[Case]:
    """A free move, the wall, a push, a push into the wall, a push into another shape, stop; then
    every action from random states of the training tasks (a new draw for each seed)."""
    red, blue = _shape("red", "circle", (2, 3)), _shape("blue", "square", (2, 4))
    fixed = [(G.State((2, 2), (_shape("red", "circle", (0, 0)),)), "down", "a free move"),
             (G.State((0, 2), (_shape("red", "circle", (4, 4)),)), "up", "a move into the wall"),
             (G.State((2, 2), (_shape("red", "circle", (2, 3)),)), "right", "a push"),
             (G.State((2, 3), (_shape("red", "circle", (2, 4)),)), "right", "a push into the wall"),
             (G.State((2, 2), (red, blue)), "right", "a push into another shape"),
             (G.State((3, 3), (red,)), "up", "a push upwards"),
             (G.State((1, 1), (red,)), "stop", "stop")]
    cases = [Case((s, a), description=why) for s, a, why in fixed]
    for task in G.tasks(3, "train", seed=int(rng.integers(10_000))):
        state = task.start
        for a in G.expert_plan(state, task)[:4]:
            for action in G.MOVES:
                cases.append(Case((state, action), description=f"{action} in a state of “{task.instruction}”"))
            state = G.step(state, a)
    return cases


def _same_state(actual, expected, name: str) -> str | None:
    if not isinstance(actual, G.State):
        return f"{name} should be a State (agent cell and shapes), but it is {safe_repr(actual)}"
    if actual.agent != expected.agent:
        return f"{name} puts the agent at {actual.agent}; it should be at {expected.agent}"
    got = [(s.name, s.cell) for s in actual.shapes]
    want = [(s.name, s.cell) for s in expected.shapes]
    if got != want:
        return f"{name} has the shapes at {got}; they should be at {want} (in the same order)"
    return None


def _step_reference(state, action):
    return G.step(state, action)


@exercise("11.1", step=G.step)
def check_step(fn, seed: int | None = None) -> Verdict:
    """Exercise 11.1: the state after one action, with pushing."""
    return check_function(
        "11.1", fn, _step_reference, _step_cases(_rng(seed)), compare_fn=_same_state,
        hint="on 'stop' return the state. Otherwise nxt = agent + MOVE[action]; outside the grid: stay. "
             "If a shape is at nxt, look at beyond = nxt + MOVE[action]: if it is outside the grid or holds "
             "a shape, stay; else return State(nxt, shapes with that one's cell replaced by beyond "
             "(dataclasses.replace)). A free nxt: State(nxt, state.shapes).")


# -- 11.2: the expert: breadth-first search -----------------------------------------------------------
def _plan_cases(rng: np.random.Generator) -> list[Case]:
    """Tasks of each family with short plans (the search must stay quick in pure Python)."""
    out = []
    for task in G.tasks(30, "test", seed=int(rng.integers(10_000))):
        plan = G.expert_plan(task.start, task)
        if len(plan) <= 7:
            out.append(Case((task.start, task), description=f"“{task.instruction}” ({len(plan) - 1} moves)"))
        if len(out) == 6:
            break
    done = G.tasks(1, "train", seed=int(rng.integers(10_000)))[0]
    state = done.start
    for a in G.expert_plan(state, done)[:-1]:
        state = G.step(state, a)
    out.append(Case((state, done), description=f"“{done.instruction}”, already done"))
    return out


def _plan_reference(state, task):
    return state, task            # what the comparison needs to judge a plan


def _shortest_and_right(actual, expected, name: str) -> str | None:
    state, task = expected
    best = G.expert_plan(state, task)
    if not isinstance(actual, (list, tuple)) or not all(isinstance(a, str) for a in actual):
        return f"{name} should be a list of action names, but it is {safe_repr(actual)}"
    if not actual or actual[-1] != "stop" or "stop" in actual[:-1]:
        return f"{name} should end with 'stop' (and hold it only there), but it is {safe_repr(actual)}"
    if any(a not in G.MOVES for a in actual[:-1]):
        return f"{name} holds an action that is not one of {list(G.MOVES)}: {safe_repr(actual)}"
    for a in actual[:-1]:
        state = G.step(state, a)
    if not G.success(state, task):
        return f"following {name} {safe_repr(actual)} does not fulfil the instruction"
    if len(actual) > len(best):
        return f"{name} takes {len(actual) - 1} moves; the shortest plan takes {len(best) - 1}"
    return None


@exercise("11.2", shortest_plan=G.expert_plan)
def check_shortest_plan(fn, seed: int | None = None) -> Verdict:
    """Exercise 11.2: a shortest plan by breadth-first search, ending with "stop"."""
    return check_function(
        "11.2", fn, _plan_reference, _plan_cases(_rng(seed)), compare_fn=_shortest_and_right, time_limit=30.0,
        hint="queue = deque([(state, [])]) and seen = {state}. Pop from the left; if success(s, task), "
             "return moves + ['stop']; else for each action of MOVES, n = step(s, action), and if n is not "
             "in seen, add it and append (n, moves + [action]). States are hashable, so a set works.")


# -- 11.3: SayCan's choice ---------------------------------------------------------------------------
def _saycan_reference(lm_logprobs, values):
    return int(np.argmax(np.exp(np.asarray(lm_logprobs, dtype=np.float64)) * np.asarray(values, dtype=np.float64)))


def _saycan_cases(rng: np.random.Generator) -> list[Case]:
    """The language model's favourite is infeasible; a feasible but unlikely skill; log-probabilities
    far below zero (adding them to the values would choose wrongly); then random ones."""
    fixed = [([-0.2, -1.9, -3.0], [0.0, 0.9, 0.95], "the language model's favourite cannot be done here"),
             ([-0.1, -2.5, -6.0], [0.9, 1.0, 1.0], "its favourite is feasible"),
             ([-12.0, -14.0, -15.0, -13.0], [0.05, 0.9, 0.8, 0.02], "all skills unlikely: multiply, don't add"),
             ([-1.0, -1.2], [0.3, 0.28], "close call")]
    cases = [Case((np.array(lp), np.array(v)), description=why) for lp, v, why in fixed]
    for _ in range(6):
        n = int(rng.integers(3, 12))
        lp = np.log(rng.dirichlet(np.ones(n)))
        cases.append(Case((lp, rng.uniform(0, 1, n)), description=f"{n} random skills"))
    return cases


def _same_index(actual, expected, name: str) -> str | None:
    actual = python_scalar(actual)                     # np.int64, a 0-d array or tensor are ints too
    if isinstance(actual, bool) or not isinstance(actual, int):
        return f"{name} should be the index of one skill (an int), but it is {safe_repr(actual)}"
    if actual != expected:
        return f"{name} is skill {actual}; the skill most likely to be both useful and feasible is {expected}"
    return None


@exercise("11.3", saycan_choice=_saycan_reference)
def check_saycan_choice(fn, seed: int | None = None) -> Verdict:
    """Exercise 11.3: the skill that maximises p_LM(skill | instruction) × value(skill, state)."""
    return check_function(
        "11.3", fn, _saycan_reference, _saycan_cases(_rng(seed)), compare_fn=_same_index,
        hint="the language model gives log-probabilities: exponentiate them (np.exp) to get p_LM, multiply "
             "by the values, and return the index of the largest product (int(np.argmax(...))). Equivalently "
             "maximise log p_LM + log value.")
