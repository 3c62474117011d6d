import builtins
import itertools
import math
import os
import random
import re

import numpy as np
import pytest
import torch

from vlmlib import programs as P
from vlmlib.shapesworld import HELD_OUT, POSITIONS, caption

ADD = 'scene.add("circle", colour="red", size="small", cell={})'


@pytest.fixture(scope="module")
def data():
    return {split: P.dataset(200, split, seed=3) for split in ("train", "test", "holdout")}


# -- the data and the language ---------------------------------------------------------------------
def test_reference_programs_pass_their_own_spec_in_every_split(data):
    for split, examples in data.items():
        assert {e.family for e in examples} == set(P.FAMILIES)
        for i, e in enumerate(examples):
            result = P.passes(e.program, e.spec, seed=i)
            assert result.ok, (split, e, result.reason)
            assert result.image.shape == (3, 32, 32)


def test_descriptions_and_programs_have_the_documented_form(data):
    for e in data["train"]:
        if e.family == "scene":
            assert e.description == caption(P.run(e.program).shapes, "full")      # word for word, in order
            assert P.format_program(P.run(e.program).shapes) == e.program          # the canonical text
        elif e.family == "relation":
            assert any(f" {r} " in e.description for r in P.RELATIONS)
            assert e.program.count("\n") == 1
        else:
            assert e.program.startswith(("for col in range(", "for row in range(")) and "\n    scene.add(" in e.program
            assert e.description.split()[0] in ("two", "three") and e.description.endswith(("row", "column"))
    line = P.line_program("blue", "square", "large", "left column", 2)
    assert line == 'for row in range(2):\n    scene.add("square", colour="blue", size="large", cell=(row, 0))'
    assert P.line_description("red", "cross", "small", "top row", 3) == "three small red crosses in the top row"
    assert P.cell_of("top right") == (0, 2) and P.position_of((2, 0)) == "bottom left"


def test_dataset_is_deterministic_with_fixed_family_proportions():
    a = P.dataset(100, "train", seed=1)
    assert a == P.dataset(100, "train", seed=1) and a[:10] == P.dataset(10, "train", seed=1)
    assert a != P.dataset(100, "train", seed=2) and a != P.dataset(100, "test", seed=1)
    families = [e.family for e in a]
    assert [families.count(f) for f in P.FAMILIES] == [50, 30, 20]


def test_held_out_pairs_only_in_the_holdout_split(data):
    for split, examples in data.items():
        named = [set(P.named_pairs(e)) & set(HELD_OUT) for e in examples]
        if split == "holdout":
            assert all(named)                         # every description names a held-out pair
            assert set().union(*named) == set(HELD_OUT)
        else:
            assert not any(named)
            assert not any(f"{c} {k}" in e.description for c, k in HELD_OUT for e in examples)


def test_run_places_shapes_at_their_cells_with_jitter():
    source = ADD.format("(0, 2)") + "\n" + 'scene.add("cross", colour="blue", size="large", cell=(2, 1))'
    a, b = P.run(source, seed=0), P.run(source, seed=1)
    assert a.ok and [s.position for s in a.shapes] == ["top right", "bottom"]
    assert torch.equal(a.image, P.run(source, seed=0).image) and not torch.equal(a.image, b.image)
    for s in a.shapes + b.shapes:
        row, col = P.cell_of(s.position)
        assert abs(s.x - (col + 0.5) * 32 / 3) <= 2 and abs(s.y - (row + 0.5) * 32 / 3) <= 2
    loop = "for c in range(1, 3):\n    " + ADD.format("(c, 0)")
    assert [s.position for s in P.run(loop).shapes] == ["left", "bottom left"]


# -- what counts as correct ------------------------------------------------------------------------
def test_check_scene_says_what_is_wrong():
    spec = {"scene": [{"colour": "red", "kind": "circle", "size": "small", "position": "top left"}]}
    result = P.passes(ADD.format("(0, 1)"), spec)
    ok, reason = result.ok, result.reason
    assert not ok and "missing a small red circle at the top left" in reason and "not asked for" in reason
    line = {"line": "top row", "count": 3, "colour": "red", "kind": "circle", "size": "small"}
    two = "for c in range(2):\n    " + ADD.format("(0, c)")
    assert "expected three shapes, got 2" in P.passes(two, line).reason
    column = "for r in range(3):\n    " + ADD.format("(r, 0)")
    assert "is not in the top row" in P.passes(column, line).reason
    assert P.passes(two, dict(line, count=2)).ok and P.passes("for c in range(1, 3):\n    " + ADD.format("(0, c)"),
                                                         dict(line, count=2)).ok
    rel = {"shapes": [("red", "circle"), ("blue", "square")], "relation": "to the left of"}
    right = ADD.format("(1, 0)") + '\nscene.add("square", colour="blue", size="large", cell=(0, 2))'
    wrong = ADD.format("(1, 2)") + '\nscene.add("square", colour="blue", size="large", cell=(0, 0))'
    assert P.passes(right, rel).ok and P.passes(wrong, rel).reason.startswith("relation wrong")
    assert P.passes(ADD.format("(0, 0)"), {"colour": "red", "kind": "circle"}).ok      # chapter 6's one-shape spec
    with pytest.raises(ValueError, match="count"):
        P.check_spec(dict(line, count=4))
    with pytest.raises(ValueError, match="line"):
        P.check_spec(dict(line, line="diagonal"))


def _near_miss(program: str, i: int) -> str:
    """The program with one attribute of its first shape changed: size, colour, kind or a cell number."""
    first, _, rest = program.partition("scene.add(")
    head, _, tail = rest.partition(")")
    change = i % 4
    if change == 0:
        head = head.replace('"small"', '"?"').replace('"large"', '"small"').replace('"?"', '"large"')
    elif change == 1:
        colour = re.search(r'colour="(\w+)"', head).group(1)
        other = P.COLOUR_NAMES[(P.COLOUR_NAMES.index(colour) + 1) % len(P.COLOUR_NAMES)]
        head = head.replace(f'"{colour}"', f'"{other}"')
    elif change == 2:
        kind = head.split('"')[1]
        head = head.replace(f'"{kind}"', f'"{P.KINDS[(P.KINDS.index(kind) + 1) % len(P.KINDS)]}"', 1)
    else:
        head = re.sub(r"\b([0-2])\b", lambda m: str((int(m.group(1)) + 1) % 3), head, count=1)
    return first + "scene.add(" + head + ")" + tail


def test_judge_on_pixels_agrees_with_ground_truth(data):
    """The scene judge reads 200 drawn reference programs (ground truth: all right) and 200 near misses
    (one attribute of one shape changed; ground truth decides whether they still meet the spec)."""
    examples = data["holdout"][:100] + data["test"][:100]
    sources = [e.program for e in examples] + [_near_miss(e.program, i) for i, e in enumerate(examples)]
    results = [P.run(s, seed=i) for i, s in enumerate(sources)]
    kept = [(r, e.spec) for r, e in zip(results, examples + examples) if r.ok]   # a moved cell may collide
    truth = [P.check_scene(r.shapes, spec)[0] for r, spec in kept]
    judged = [ok for ok, _ in P.judge_pixels(torch.stack([r.image for r, _ in kept]), [spec for _, spec in kept])]
    assert truth[:200] == [True] * 200 and len(kept) > 380 and 120 < len(truth) - sum(truth) < 200
    agreement = np.mean([t == j for t, j in zip(truth, judged)])
    print(f"judge on pixels agrees with ground truth on {agreement:.1%} of {len(truth)}")
    assert agreement >= 0.99
    ok, reason = P.judge_pixels(torch.rand(1, 3, 32, 32), [examples[0].spec])[0]
    assert not ok and "no valid ShapesWorld scene" in reason


# -- safe execution ---------------------------------------------------------------------------------
HOSTILE = {
    "import os": "line 1: import is not allowed",
    "import os\nos.environ['PROGRAMS_SENTINEL'] = '1'": "line 1: import is not allowed",
    "__import__('os').environ.__setitem__('PROGRAMS_SENTINEL', '1')": "name __import__ is not allowed",
    "scene.__class__.__bases__": "attribute __class__ is not allowed",
    "().__class__.__subclasses__()": "attribute __class__ is not allowed",
    "open('/etc/passwd')": "only scene.add(...) calls are allowed, got open(...)",
    "open(SENTINEL_FILE, 'w').write('1')": "only scene.add(...) calls are allowed, got open(",
    "exec(\"import os; os.environ['PROGRAMS_SENTINEL'] = '1'\")": "got exec(...)",
    "eval('1 + 1')": "got eval(...)",
    "f = lambda: 1": "lambda is not allowed",
    "(lambda: 1)()": "lambda is not allowed",
    "while True: pass": "line 1: while loops are not allowed",
    "while True:\n    scene.add('circle', colour='red', size='small', cell=(0, 0))": "while loops are not allowed",
    "for i in range(10**9):\n    " + ADD.format("(0, 0)"): "range takes 1 or 2 whole-number literals",
    "for i in range(1000000000):\n    " + ADD.format("(0, 0)"): "has 1000000000 iterations; at most 9",
    "for i in range(" + "9" * 1500 + "):\n    " + ADD.format("(0, 0)"): "iterations; at most 9",
    "for i in range(0, 10):\n    " + ADD.format("(0, i)"): "has 10 iterations",
    "for i in range(3):\n    for j in range(3):\n        for k in range(3):\n            " + ADD.format("(i, j)"):
        "line 2: loops inside loops are not allowed",
    "for i in range(3):\n    " + ADD.format("(0, i)") + "\nelse:\n    pass": "for ... else is not allowed",
    "for i in [0, 1]:\n    " + ADD.format("(0, i)"): "a loop must run over range(...)",
    "for i, j in range(2):\n    " + ADD.format("(0, i)"): "the loop variable must be one name",
    "'a' * 10**10": "only scene.add(...) calls are allowed, got 'a' * 10**10",
    "scene.add('a' * 10**10, colour='red', size='small', cell=(0, 0))": "the kind must be a string",
    "f'{scene}'": "f-strings are not allowed",
    "scene.add(f'{1}circle', colour='red', size='small', cell=(0, 0))": "f-strings are not allowed",
    "getattr(scene, 'add')": "got getattr(...)",
    "getattr(scene, 'add')('circle', colour='red', size='small', cell=(0, 0))": "got getattr(scene, 'add')(...)",
    "scene.add(*x)": "scene.add(*...) is not allowed",
    "scene.add(**kw)": "scene.add(**...) is not allowed",
    "scene.add('circle', colour=__import__('os'), size='small', cell=(0, 0))": "name __import__ is not allowed",
    "scene.add('circle', colour=print('x'), size='small', cell=(0, 0))": "colour must be a string",
    "scene.remove('circle')": "scene has only the method add",
    "scene.add('circle', colour='red', size='small', cell=(0, 0), shape='x')": "no keyword shape",
    "scene.add('circle', colour='red', cell=(0, 0))": "size missing",
    "scene.add(kind='circle', colour='red', size='small', cell=(0, 0))": "one positional argument",
    "scene.add('circle', colour='red', size='small', cell=[0, 0])": "cell must be a pair",
    "scene.add('circle', colour='red', size='small', cell=(x, 0))": "unknown name x in cell; there is no loop",
    "scene.add('circle', colour='red', size='small', cell=(1 + 1, 0))": "must be whole numbers or the loop variable",
    "scene.add('circle', colour='red', size='small', cell=(True, 0))": "must be whole numbers",
    "@decorator\ndef f():\n    pass": "line 2: def (functions) is not allowed",
    "class A:\n    pass": "class is not allowed",
    "x = 1": "assignments are not allowed",
    "scene = 1": "assignments are not allowed",
    "if True:\n    " + ADD.format("(0, 0)"): "if statements are not allowed",
    "try:\n    pass\nexcept Exception:\n    pass": "try is not allowed",
    "with open('x') as f:\n    pass": "with is not allowed",
    "[x for x in range(3)]": "comprehensions are not allowed",
    "(y := 1)": ":= is not allowed",
    "global scene": "global is not allowed",
    "(" * 10000: "at most 2000 are allowed",
    "(" * 1000: "Python cannot read this",
    "-" * 1990 + "1": "only scene.add(...) calls are allowed",
    "1" + "+1" * 990: "only scene.add(...) calls are allowed",
    "x" * 1_000_000: "1000000 characters long",
    "a\x00b": "Python cannot read this",
    "scene.add('circle',": "line 1: Python cannot read this",
    "\tscene.add('circle', colour='red', size='small', cell=(0, 0))": "Python cannot read this",
}


def test_hostile_programs_are_refused_with_specific_reasons(monkeypatch, tmp_path):
    """None of these runs: no exec/eval is ever called, ast.parse only parses, and no side effect happens."""
    sentinel = tmp_path / "sentinel"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROGRAMS_SENTINEL", raising=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("exec or eval was called")

    real_compile, flags = builtins.compile, []

    def only_parse(source, filename, mode, flags_=0, *args, **kwargs):
        flags.append(kwargs.get("flags", flags_))
        return real_compile(source, filename, mode, flags_, *args, **kwargs)

    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "compile", only_parse)
    refused = 0
    for source, reason in HOSTILE.items():
        result = P.run(source.replace("SENTINEL_FILE", repr(str(sentinel))))
        assert not result.ok and result.image is None and not result.shapes, source
        assert reason in result.reason, (source[:80], result.reason)
        refused += 1
    monkeypatch.undo()
    assert flags and all(f & __import__("ast").PyCF_ONLY_AST for f in flags)
    assert not sentinel.exists() and "PROGRAMS_SENTINEL" not in os.environ
    print(f"{refused} hostile programs refused")


RUNTIME = {
    ADD.format("(0, 0)").replace('"red"', '"pink"'): "line 1: unknown colour 'pink'; the colours are red,",
    ADD.format("(0, 0)").replace('"circle"', '"star"'): "unknown kind 'star'",
    ADD.format("(0, 0)").replace('"small"', '"huge"'): "unknown size 'huge'",
    ADD.format("(3, 0)"): "line 1: cell (3, 0) is outside the 3×3 grid",
    ADD.format("(0, -1)"): "cell (0, -1) is outside",
    ADD.format("(0, 0)") + "\n" + ADD.format("(0, 0)"): "line 2: cell (0, 0) already holds the small red circle of line 1",
    "for c in range(3):\n    " + ADD.format("(0, c)") + "\n" + ADD.format("(2, 2)"): "line 3: a scene holds at most 3 shapes",
    "for c in range(4):\n    " + ADD.format("(c, 0)"): "cell (3, 0) is outside",
    "for c in range(9):\n    " + ADD.format("(1, 1)"): "line 2: cell (1, 1) already holds",
    "": "adds no shape",
    "# a comment only\n": "adds no shape",
    "for c in range(3, 1):\n    " + ADD.format("(0, c)"): "adds no shape",
}


def test_runtime_errors_of_the_scene_have_reasons():
    for source, reason in RUNTIME.items():
        result = P.run(source)
        assert not result.ok and reason in result.reason, (source, result.reason)


def test_step_budget_and_time_limit(monkeypatch):
    loop = "for c in range(3):\n    " + ADD.format("(0, c)")
    assert P.run(loop).ok
    monkeypatch.setattr(P, "STEP_LIMIT", 2)
    assert "ran more than 2 steps" in P.run(loop).reason
    monkeypatch.setattr(P, "STEP_LIMIT", 100)
    monkeypatch.setattr(P, "TIME_LIMIT", 0.0)
    assert "time limit" in P.run(loop).reason


def test_run_never_raises_on_mangled_programs(data):
    """Reference programs cut, spliced and sprinkled with Python's tokens: every text gives a Result."""
    rng = random.Random(0)
    pieces = ["(", ")", ",", "=", "for", "in", "range", ":", "\n", "    ", "scene", ".", "add", '"', "'", "-", "9",
              "**", "*", "__class__", "import", "lambda", "\\", "#", "{", "}", "\x00", "é", "0", "col", "row"]
    sources = [e.program for e in data["train"][:60]]
    ok = 0
    for _ in range(1500):
        text = rng.choice(sources)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text) + 1)
            if rng.random() < 0.5:
                text = text[:i] + rng.choice(pieces) + text[i:]
            else:
                text = text[:i] + text[i + rng.randint(1, 5):]
        result = P.run(text)
        assert isinstance(result, P.Result) and (result.ok or result.reason)
        ok += result.ok
    assert 0 < ok < 1500


def test_public_arguments_are_checked():
    with pytest.raises(TypeError, match="source"):
        P.run(b"scene.add()")
    with pytest.raises(ValueError, match="split"):
        P.dataset(3, "all")
    with pytest.raises(ValueError, match="n must be at least 0"):
        P.dataset(-1)
    with pytest.raises(ValueError, match="count"):
        P.line_program("red", "circle", "small", "top row", 4)
    with pytest.raises(TypeError, match="spec"):
        P.passes(ADD.format("(0, 0)"), "a red circle")
    with pytest.raises(ValueError, match="one spec per image"):
        P.judge_pixels(torch.rand(2, 3, 32, 32), [{"colour": "red"}])


# -- pass@k ---------------------------------------------------------------------------------------
def test_pass_at_k_equals_enumeration_and_the_binomial_formula():
    for n in range(1, 9):
        for c in range(n + 1):
            correct = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(correct, k))
                enumerated = sum(any(s) for s in subsets) / len(subsets)
                binomial = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert P.pass_at_k(n, c, k) == pytest.approx(enumerated, abs=1e-12)
                assert P.pass_at_k(n, c, k) == pytest.approx(binomial, abs=1e-12)
    assert P.pass_at_k(200, 0, 100) == 0.0 and P.pass_at_k(200, 101, 100) == 1.0
    big = P.pass_at_k(1000, 10, 100)                     # C(1000, 100) has 140 digits; the product form is fine
    assert big == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100), rel=1e-12)
    assert big != pytest.approx(1 - (1 - 10 / 1000) ** 100, rel=1e-3)       # drawing with replacement is biased
    for bad, match in (((3, 4, 1), "c must be at most 3"), ((3, 1, 0), "k must be at least 1"),
                       ((3, 1, 4), "k must be at most 3"), ((0, 0, 1), "n must be at least 1")):
        with pytest.raises(ValueError, match=match):
            P.pass_at_k(*bad)


def test_pass_at_k_table_averages_over_problems():
    correct = [[True, False, False, False], [False] * 4, [True] * 4]
    table = P.pass_at_k_table(correct, [1, 2])
    assert table[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert table[2] == pytest.approx((0.5 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="at least 5 samples"):
        P.pass_at_k_table(correct, [5])
    with pytest.raises(TypeError, match="correct"):
        P.pass_at_k_table([], [1])


def test_allowed_checks_without_running():
    from vlmlib.programs import allowed
    assert allowed('scene.add("circle", colour="red", size="small", cell=(0, 2))') == (True, "")
    ok, reason = allowed("import os")
    assert not ok and "import is not allowed" in reason
    assert allowed('scene.add("circle", colour="pink", size="small", cell=(0, 2))')[0]   # fails only when run
    with pytest.raises(TypeError, match="string"):
        allowed(None)
