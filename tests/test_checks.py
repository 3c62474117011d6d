"""vlmlib.checks, the shared argument checks: good values pass (NumPy scalar types included) and come
back in the caller's form; bad ones raise TypeError or ValueError with the argument's name, what was
expected and what was given."""

import numpy as np
import pytest
import torch

from vlmlib import checks


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3)])
def test_integer_accepts_python_numpy_and_one_element_tensor_integers(value):
    out = checks.integer(value, "n", minimum=0, maximum=3)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value, error, message", [
    (3.0, TypeError, "n must be an integer, got 3.0"), (True, TypeError, "n must be an integer, got True"),
    (np.bool_(True), TypeError, "n must be an integer"), ("3", TypeError, "n must be an integer, got '3'"),
    (None, TypeError, "n must be an integer, got None"), (torch.tensor(3.0), TypeError, "n must be an integer"),
    (torch.tensor([1, 2]), TypeError, r"n must be an integer, got a tensor of shape \(2,\)"),
    (-1, ValueError, "n must be at least 0, got -1"), (4, ValueError, "n must be at most 3, got 4"),
])
def test_integer_rejects_clearly(value, error, message):
    with pytest.raises(error, match=message):
        checks.integer(value, "n", minimum=0, maximum=3)


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.float64(0.5), np.int64(1), torch.tensor(0.5)])
def test_number_accepts_reals_and_returns_a_float(value):
    out = checks.number(value, "p", low=0.0, high=1.0)
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize("value, kwargs, error, message", [
    ("0.5", {}, TypeError, "p must be a number, got '0.5'"), (None, {}, TypeError, "p must be a number"),
    (False, {}, TypeError, "p must be a number, got False"), ([0.5], {}, TypeError, "p must be a number"),
    (float("nan"), {}, ValueError, "p must be a finite number, got nan"),
    (float("inf"), {}, ValueError, "p must be a finite number"),
    (-0.1, {"low": 0.0}, ValueError, "p must be ≥ 0.0, got -0.1"), (1.5, {"high": 1.0}, ValueError, "p must be ≤ 1.0"),
    (0.0, {"low": 0.0, "low_open": True}, ValueError, "p must be > 0.0, got 0.0"),
    (1.0, {"high": 1.0, "high_open": True}, ValueError, "p must be < 1.0, got 1.0"),
])
def test_number_rejects_clearly(value, kwargs, error, message):
    with pytest.raises(error, match=message):
        checks.number(value, "p", **kwargs)


def test_probability_is_a_number_in_the_unit_interval():
    assert checks.probability(np.float32(0.25), "p_grey") == 0.25 and checks.probability(1, "p") == 1.0
    with pytest.raises(ValueError, match=r"p_grey must be ≤ 1.0, got 1.5"):
        checks.probability(1.5, "p_grey")
    with pytest.raises(TypeError, match="p_grey must be a number"):
        checks.probability("high", "p_grey")


def test_choice_accepts_numpy_strings_and_none_and_refuses_the_rest():
    out = checks.choice(np.str_("clip"), "loss", ["clip", "siglip"])
    assert out == "clip" and type(out) is str
    assert checks.choice(None, "captions", ["full", None]) is None
    assert checks.choice(np.int64(2), "k", [1, 2]) == 2
    with pytest.raises(ValueError, match=r"loss must be one of \['clip', 'siglip'\], got 'triplet'"):
        checks.choice("triplet", "loss", ["clip", "siglip"])
    with pytest.raises(ValueError, match="k must be one of"):
        checks.choice(True, "k", [0, 1])                      # True is not the option 1
    with pytest.raises(ValueError, match="loss must be one of"):
        checks.choice(np.array(["clip", "siglip"]), "loss", ["clip", "siglip"])   # an array: no ambiguous truth value
    with pytest.raises(ValueError, match="loss must be one of"):
        checks.choice(["clip"], "loss", ["clip", "siglip"])


def test_text_list_accepts_any_sequence_of_strings_and_refuses_one_string():
    assert checks.text_list(("a", np.str_("b")), "captions") == ["a", "b"]
    assert all(type(t) is str for t in checks.text_list(np.array(["a", "b"]), "captions"))
    assert checks.text_list([], "captions") == []
    assert checks.text_list(iter(["x"]), "captions", length=1) == ["x"]
    with pytest.raises(TypeError, match="captions must be a list of strings, got one string 'ab'; wrap it in a list"):
        checks.text_list("ab", "captions")
    with pytest.raises(TypeError, match="captions must hold strings only; item 1 is 2"):
        checks.text_list(["a", 2], "captions")
    with pytest.raises(TypeError, match="captions must be a list of strings, got 3"):
        checks.text_list(3, "captions")
    with pytest.raises(ValueError, match="captions must have 2 items"):
        checks.text_list(["a"], "captions", length=2)


def test_labels_accepts_lists_arrays_and_integer_tensors():
    for value in ([0, 2, 1], np.array([0, 2, 1]), torch.tensor([0, 2, 1], dtype=torch.int32), (0, 2, 1)):
        out = checks.labels(value, "labels", classes=3, length=3)
        assert out.dtype == torch.int64 and out.tolist() == [0, 2, 1]
    assert checks.labels([], "labels", classes=3).shape == (0,)


@pytest.mark.parametrize("value, error, message", [
    ([0.0, 1.0], TypeError, "labels must hold integer class indices, got dtype torch.float64"),
    (torch.tensor([True]), TypeError, "labels must hold integer class indices"),
    (["red"], TypeError, "labels must be integer class indices"),
    ([[0, 1], [1]], TypeError, "labels must be integer class indices"),
    (3, TypeError, "labels must be a tensor of integer class indices, got 3"),
    (torch.zeros(2, 2, dtype=torch.long), ValueError, r"labels must be 1-D .* got shape \(2, 2\)"),
    ([0, 3], ValueError, r"labels must be class indices in \[0, 2\], got values in \[0, 3\]"),
    ([-1], ValueError, r"labels must be class indices in \[0, 2\]"),
    ([0, 1, 2], ValueError, "labels must have 4 entries, got 3"),
])
def test_labels_rejects_clearly(value, error, message):
    with pytest.raises(error, match=message):
        checks.labels(value, "labels", classes=3, length=4 if "entries" in message else None)


def test_images_passes_float32_through_unchanged():
    x = torch.rand(2, 3, 8, 8)
    assert checks.images(x, "images", shape=(3, 8, 8), low=0.0, high=1.0) is x


def test_images_converts_what_is_unambiguous():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(checks.images(x.double()), x.double().float())
    assert torch.equal(checks.images(x.half()), x.half().float())
    assert torch.equal(checks.images(x.numpy()), x)
    pixels = (x * 255).round().to(torch.uint8)
    assert torch.equal(checks.images(pixels, low=0.0, high=1.0), pixels.float() / 255)
    assert torch.equal(checks.images(pixels.numpy(), low=0.0, high=1.0), pixels.float() / 255)
    assert torch.equal(checks.images(pixels, from_uint8=True), pixels.float() / 255)   # [0, 1] model, range unchecked
    assert checks.images(x.double(), convert=True).dtype == torch.float32


@pytest.mark.parametrize("value, kwargs, error, message", [
    ([[0.0]], {}, TypeError, r"images must be a torch.Tensor of shape \(N, C, H, W\), got \[\[0.0\]\]"),
    (np.array([["a"]]), {}, TypeError, "images must hold numbers"),
    (torch.rand(3, 8, 8), {}, ValueError, r"images must have shape \(N, C, H, W\), got \(3, 8, 8\); add a batch dimension"),
    (torch.rand(2, 3, 4, 4), {"shape": (3, 8, 8)}, ValueError, r"images must have shape \(N, 3, 8, 8\), got \(2, 3, 4, 4\)"),
    (torch.rand(2, 8, 8, 3), {"shape": (3, None, None)}, ValueError, "channels-last"),
    (torch.rand(0, 3, 8, 8), {}, ValueError, "images is empty"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.long), {}, TypeError, "images must be floating point, got dtype torch.int64"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.bool), {}, TypeError, "images must be floating point"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), {}, ValueError, "images are uint8, but this function expects float images"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), {"low": -1.0, "high": 1.0}, ValueError,
     r"images are uint8, but this function expects floats in \[-1.0, 1.0\]"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), {"low": 0.0, "high": 1.0, "from_uint8": False}, TypeError,
     "images must be floating point"),
    (torch.rand(1, 3, 8, 8).double(), {"convert": False}, TypeError, "images must be float32, got torch.float64"),
    (torch.full((1, 3, 8, 8), float("nan")), {}, ValueError, "images hold NaN or infinite values"),
    (torch.full((1, 3, 8, 8), 200.0), {"low": 0.0, "high": 1.0}, ValueError,
     r"images must have values in \[0.0, 1.0\], got \[200, 200\] \(they look like values in \[0, 255\]: divide by 255\)"),
    (torch.full((1, 3, 8, 8), -3.0), {"low": -1.0, "high": 1.0}, ValueError, r"values in \[-1.0, 1.0\], got \[-3, -3\]"),
])
def test_images_rejects_clearly(value, kwargs, error, message):
    with pytest.raises(error, match=message):
        checks.images(value, "images", **kwargs)


def test_every_message_names_the_argument_it_was_given():
    calls = [lambda: checks.integer("x", "my_arg"), lambda: checks.number("x", "my_arg"),
             lambda: checks.choice("x", "my_arg", ["a"]), lambda: checks.text_list("x", "my_arg"),
             lambda: checks.labels("x", "my_arg", 2), lambda: checks.images("x", "my_arg"),
             lambda: checks.probability(2, "my_arg")]
    for call in calls:
        with pytest.raises((TypeError, ValueError), match="my_arg"):
            call()
