import json
import re

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402  (after the backend is chosen)

from vlmlib import plotting, report


def test_show_images_accepts_arrays_and_tensors_in_either_layout():
    imgs = [np.random.rand(8, 8, 3), torch.rand(3, 8, 8), torch.rand(8, 8) * 2 - 1]
    fig = plotting.show_images(imgs, ["a", "b", "c"], ncols=2, title="t")
    assert len(fig.axes) == 4
    assert plotting.to_display(torch.full((3, 4, 4), -1.0)).max() == 0.0   # [-1, 1] is mapped to [0, 1]


def test_show_conversations_draws_each_image_beside_its_turns_coloured_by_rightness():
    images = torch.rand(3, 3, 8, 8)
    turns = [[("what colour?", "red", True), ("how many?", "two", "three")], [("describe", "a red circle")],
             [("is there a cube?", "no", True)]]
    fig = plotting.show_conversations(images, turns, ncols=2, title="t")
    assert len(fig.axes) == 6                        # an image and a text panel per conversation
    colours = [t.get_color() for ax in fig.axes[1::2] for t in ax.texts]
    assert "tab:green" in colours and "tab:red" in colours and "black" in colours
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "✓ A: red" in texts and "✗ A: two  (right: three)" in texts
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("call, match", [
    (lambda: plotting.show_conversations([], []), "at least one image"),
    (lambda: plotting.show_conversations(torch.rand(2, 3, 8, 8), [[("q", "a")]]), "one conversation per image"),
    (lambda: plotting.show_conversations(torch.rand(1, 3, 8, 8), ["q a"]), "list of \\(question, answer\\)"),
    (lambda: plotting.show_conversations(torch.rand(1, 3, 8, 8), [[("q", 3)]]), "tuples of strings"),
    (lambda: plotting.show_conversations(torch.rand(1, 3, 8, 8), [[("q", "a")]], ncols=0), "ncols"),
])
def test_show_conversations_refuses_bad_input_clearly(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda: plotting.show_images([]), "at least one image"),
    (lambda: plotting.show_images([np.zeros((4, 4, 3))], ["a", "b"]), "1 images but 2 captions"),
    (lambda: plotting.show_images([np.zeros((4, 4, 5))]), "expected an image of shape"),
    (lambda: plotting.show_images(["not an image"]), "expected an image as a tensor or array"),
    (lambda: plotting.plot_curves({}), "history is empty"),
    (lambda: plotting.bar_chart(["a"], [0.1, 0.2]), "1 labels but 2 values"),
    (lambda: plotting.heatmap(np.zeros((2, 3)), ["a", "b"], ["x"]), "does not match"),
    (lambda: plotting.heatmap(np.zeros(3), ["a"], ["x"]), "2-D matrix"),
])
def test_plotting_helpers_reject_bad_input_clearly(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_curves_bars_and_heatmaps_draw():
    fig = plotting.plot_curves({"loss": list(np.linspace(2, 0.1, 50)), "accuracy": list(np.linspace(0, 1, 50))}, smooth=5)
    assert len(fig.axes) == 2
    ax = plotting.bar_chart(["a", "b"], [0.3, 0.7], highlight=1)
    assert len(ax.patches) == 2
    ax = plotting.heatmap(torch.eye(3), ["a", "b", "c"], ["x", "y", "z"], fmt="{:.1f}")
    assert len(ax.texts) == 9


def test_progress_is_plain_text_when_asked(monkeypatch, capsys):
    monkeypatch.setenv(plotting.PLAIN_PROGRESS_ENV, "1")
    assert sum(plotting.progress(range(5), desc="counting")) == 10
    assert "counting" in capsys.readouterr().out


def test_expect_prints_records_and_fails_loudly(monkeypatch, tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(report.METRICS_ENV, str(log))
    assert report.expect("accuracy", 0.98, at_least=0.97) == 0.98
    assert "✓ accuracy: 0.98 (bar: >= 0.97)" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="misses its bar"):
        report.expect("accuracy", 0.5, at_least=0.97)
    with pytest.raises(AssertionError):
        report.expect("loss", float("nan"), at_most=1.0)
    with pytest.raises(ValueError, match="give at_least or at_most"):
        report.expect("x", 1.0)
    with pytest.raises(TypeError, match="value must be a number"):
        report.expect("x", "high", at_least=1)
    with report.stopwatch("training", verbose=False) as t:
        pass
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["accuracy", "accuracy", "loss", "training"]
    assert rows[0]["bar"] == ">= 0.97" and t["seconds"] >= 0


def test_table_renders_rows_formats_and_escapes():
    import vlmlib

    html = vlmlib.table({"DDPM <25>": {"valid": 0.8123, "steps": 25, "note": "a&b"}, "DDIM": {"valid": None}},
                        formats={"valid": "{:.1%}"}, first_column="sampler").data
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", html)
    assert html.count("<tr") == 3 and heads == ["sampler", "valid", "steps", "note"]
    assert ">81.2%<" in html and ">25<" in html and "DDPM &lt;25&gt;" in html and "a&amp;b" in html
    assert ">–<" in html                                          # None and missing cells are dashes
    with pytest.raises(TypeError, match="rows"):
        vlmlib.table({})
    with pytest.raises(ValueError, match="formats"):
        vlmlib.table({"a": {"x": 1}}, formats={"y": "{}"})
    one = vlmlib.table({"a": {"x": 0.5, "y": 0.25, "note": "n"}}, formats="{:.0%}").data
    assert ">50%<" in one and ">25%<" in one and ">n<" in one        # one format for every column
    with pytest.raises(TypeError, match="formats must be a dict"):
        vlmlib.table({"a": {"x": 1}}, formats=["{:.1%}"])


def test_animation_html_plays_offline():
    import matplotlib.pyplot as plt
    from matplotlib import animation

    import vlmlib

    fig, ax = plt.subplots()
    shown = ax.imshow(np.zeros((4, 4)))
    anim = animation.FuncAnimation(fig, lambda i: [shown], frames=3)
    html = vlmlib.animation_html(anim).data
    matplotlib.pyplot.close(fig)
    assert "http://" not in html and "https://" not in html       # nothing to fetch: it works offline
    assert 'class="animation"' in html and html.count("data:image/png;base64") >= 3
    with pytest.raises(TypeError, match="Animation"):
        vlmlib.animation_html(fig)
