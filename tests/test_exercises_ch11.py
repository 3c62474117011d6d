"""Chapter 11's exercise checkers (11.1 the step, 11.2 breadth-first search, 11.3 SayCan's choice): a right answer
passes for any seed, a wrong one is told what is wrong, and broken student code never crashes them."""

from collections import deque
from dataclasses import replace

import numpy as np
import pytest

from vlmlib import gridworld as G
from checker_contract import COMMON_MISTAKES, assert_accepts, assert_rejects, assert_survives

SOLUTIONS = '''
MOVE = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def step(state, action):
    if action == "stop":
        return state
    (r, c), (dr, dc) = state.agent, MOVE[action]
    nxt = (r + dr, c + dc)
    inside = lambda cell: 0 <= cell[0] < 5 and 0 <= cell[1] < 5
    if not inside(nxt):
        return state
    cells = [s.cell for s in state.shapes]
    if nxt not in cells:
        return State(nxt, state.shapes)
    beyond = (nxt[0] + dr, nxt[1] + dc)
    if not inside(beyond) or beyond in cells:
        return state
    j = cells.index(nxt)
    shapes = list(state.shapes)
    shapes[j] = replace(shapes[j], cell=beyond)
    return State(nxt, tuple(shapes))


def shortest_plan(state, task):
    queue, seen = deque([(state, [])]), {state}
    while queue:
        s, moves = queue.popleft()
        if success(s, task):
            return moves + ["stop"]
        for action in MOVES:
            n = step(s, action)
            if n not in seen:
                seen.add(n)
                queue.append((n, moves + [action]))


def saycan_choice(lm_logprobs, values):
    return int(np.argmax(np.exp(lm_logprobs) * values))
'''


def _solutions() -> dict:
    namespace = {"np": np, "deque": deque, "replace": replace, "State": G.State, "success": G.success,
                 "MOVES": G.MOVES}
    exec(SOLUTIONS, namespace)
    return namespace


def _no_push(state, action):
    nxt = G.step(state, action)
    return state if nxt.shapes != state.shapes else nxt


def _depth_first(state, task):
    """Finds a plan, not the shortest: walks (greedy by the expert) then dithers once."""
    plan = G.expert_plan(state, task)
    return ["up", "down"] + plan if len(plan) > 1 else plan


WRONG = {
    "11.1": [lambda s, a: s,                                                         # never moves
             _no_push,                                                               # walks, never pushes
             lambda s, a: G.State(G.step(s, a).agent, s.shapes) if G.step(s, a).agent not in s.occupied() else s,
             lambda s, a: G.step(s, {"up": "down", "down": "up"}.get(a, a))],       # up and down swapped
    "11.2": [lambda s, t: G.expert_plan(s, t)[:-1],                                  # no stop
             _depth_first,
             lambda s, t: ["stop"],
             lambda s, t: [m if m != "up" else "down" for m in G.expert_plan(s, t)]],
    "11.3": [lambda lp, v: int(np.argmax(lp)),                                       # the LM alone
             lambda lp, v: int(np.argmax(v)),                                        # the value alone
             lambda lp, v: int(np.argmax(np.asarray(lp) + np.asarray(v)))],          # log-prob + value
}

MISTAKES = {
    **COMMON_MISTAKES,
    "returns a string": lambda *a, **k: "up",
}


@pytest.mark.parametrize("number", ["11.1", "11.2", "11.3"])
def test_chapter_11_checkers_accept_the_solution_for_any_seed(number, capsys):
    assert_accepts(number, _solutions(), capsys)


@pytest.mark.parametrize("number", ["11.1", "11.2", "11.3"])
def test_chapter_11_checkers_reject_wrong_answers_with_a_reason(number, capsys):
    assert_rejects(number, WRONG[number], capsys)


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
@pytest.mark.parametrize("number", ["11.1", "11.2", "11.3"])
def test_chapter_11_checkers_survive_broken_student_code(number, mistake, capsys):
    assert_survives(number, mistake, MISTAKES[mistake], capsys)
