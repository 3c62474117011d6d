import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmlib import cache
from vlmlib.cache import Artifact, cache_dir, cached, config_key, load_artifact, save_artifact

CONFIG = {"model": "tiny", "width": 4, "lr": 0.01, "layers": [1, 2]}


def build_counter():
    calls = []

    def build():
        calls.append(1)
        torch.manual_seed(len(calls))
        return Artifact("tiny", CONFIG, {"w": torch.randn(4, 4), "b": torch.zeros(4)},
                        metrics={"accuracy": 0.5}, history={"loss": [1.0, 0.5]})
    return build, calls


def test_key_ignores_order_and_depends_on_values():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})
    with pytest.raises(ValueError, match="JSON values"):
        config_key({"a": object()})
    with pytest.raises(TypeError, match="config must be a dict"):
        config_key([1, 2])


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("VLMLIB_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "vlmlib"


def test_builds_once_then_loads_everything_back(tmp_path, capsys):
    build, calls = build_counter()
    first = cached("tiny", CONFIG, build, root=tmp_path)
    second = cached("tiny", CONFIG, build, root=tmp_path)
    assert len(calls) == 1 and not first.from_cache and second.from_cache
    assert torch.equal(first.state_dict["w"], second.state_dict["w"])
    assert second.metrics == {"accuracy": 0.5} and second.history == {"loss": [1.0, 0.5]}
    assert "Loaded tiny from the cache" in capsys.readouterr().out
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".safetensors"]          # weights and metadata; no pickle
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert next(tmp_path.glob("*.safetensors")).name.split(".")[-2] == record["weights_sha256"][:16]


@pytest.mark.parametrize("damage", ["flip weights", "truncate weights", "truncate json", "delete weights",
                                    "edit config", "edit checksum"])
def test_damaged_artifacts_are_detected_and_rebuilt(tmp_path, capsys, damage):
    build, calls = build_counter()
    cached("tiny", CONFIG, build, root=tmp_path)
    weights = next(tmp_path.glob("*.safetensors"))
    meta = next(tmp_path.glob("*.json"))
    if damage == "flip weights":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:40])
    elif damage == "truncate json":
        meta.write_text(meta.read_text()[:30])
    elif damage == "delete weights":
        weights.unlink()
    elif damage == "edit checksum":
        record = json.loads(meta.read_text())
        record["weights_sha256"] = "../" + record["weights_sha256"][3:]
        meta.write_text(json.dumps(record))
    else:
        record = json.loads(meta.read_text())
        record["config"]["width"] = 5
        meta.write_text(json.dumps(record))
    capsys.readouterr()
    again = cached("tiny", CONFIG, build, root=tmp_path)
    out = capsys.readouterr().out
    assert len(calls) == 2 and not again.from_cache
    assert out.count("\n") == 1 and "damaged" in out and "rebuilding" in out
    assert load_artifact("tiny", CONFIG, root=tmp_path).from_cache   # the rebuilt one is sound
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]   # the damaged files are gone


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="name must be lower-case"):
        cached("My Model", CONFIG, lambda: None, root=tmp_path)
    with pytest.raises(TypeError, match="build\\(\\) must return an Artifact"):
        cached("tiny", CONFIG, lambda: {"w": torch.zeros(1)}, root=tmp_path)
    with pytest.raises(ValueError, match="another name or config"):
        cached("tiny", CONFIG, lambda: Artifact("tiny", {"other": 1}, {}), root=tmp_path)
    assert load_artifact("absent", CONFIG, root=tmp_path) is None
    with pytest.raises(TypeError, match="state_dict must map names to tensors"):
        save_artifact(Artifact("tiny", CONFIG, {"w": [1, 2]}), root=tmp_path)


def test_vlmlib_never_uses_pickle():
    source = "\n".join(p.read_text() for p in Path(__file__).resolve().parents[1].joinpath("vlmlib").rglob("*.py"))
    assert "import pickle" not in source and "torch.load(" not in source


def _write_repeatedly(root: str, value: int, rounds: int) -> None:
    """One process saving its own weights (all equal to ``value``) for the shared configuration."""
    for _ in range(rounds):
        weights = {"w": torch.full((200, 200), float(value)), "b": torch.full((7,), float(value))}
        save_artifact(Artifact("tiny", CONFIG, weights, metrics={"writer": value}), root=Path(root))


def test_concurrent_writers_never_show_a_reader_a_mixed_pair(tmp_path):
    """Two processes save different weights for one key while a reader loads in a loop."""
    # fresh interpreters: a process forked after torch has started its thread pools can hang
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_repeatedly, args=(str(tmp_path), value, 40)) for value in (1, 2)]
    for w in writers:
        w.start()
    loads = 0
    deadline = time.time() + 120
    while any(w.is_alive() for w in writers) and time.time() < deadline:
        art = load_artifact("tiny", CONFIG, root=tmp_path)       # never CorruptArtifact
        if art is not None:
            writer = art.metrics["writer"]
            assert torch.all(art.state_dict["w"] == writer) and torch.all(art.state_dict["b"] == writer), \
                "the weights of one save were loaded with the metadata of another"
            loads += 1
    for w in writers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert loads > 0, "the reader never saw an artifact; the test proved nothing"
    final = load_artifact("tiny", CONFIG, root=tmp_path)
    assert torch.all(final.state_dict["w"] == final.metrics["writer"])
    assert sorted(p.suffix for p in tmp_path.iterdir()).count(".json") == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_a_crash_before_the_metadata_is_published_leaves_the_previous_artifact(tmp_path, monkeypatch):
    save_artifact(Artifact("tiny", CONFIG, {"w": torch.zeros(3)}, metrics={"round": 1}), root=tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    real_write = cache._atomic_write

    def crash_at_the_metadata(path, data):
        if path.suffix == ".json":
            raise KeyboardInterrupt("killed while publishing")
        real_write(path, data)

    monkeypatch.setattr(cache, "_atomic_write", crash_at_the_metadata)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(Artifact("tiny", CONFIG, {"w": torch.ones(3)}, metrics={"round": 2}), root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "the crashed save left files behind"
    art = load_artifact("tiny", CONFIG, root=tmp_path)
    assert art.metrics == {"round": 1} and torch.equal(art.state_dict["w"], torch.zeros(3))
    with pytest.raises(KeyboardInterrupt):       # a first save that crashes leaves nothing at all
        save_artifact(Artifact("other", CONFIG, {"w": torch.ones(3)}), root=tmp_path)
    assert load_artifact("other", CONFIG, root=tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_metrics_are_checked_before_anything_is_written(tmp_path):
    for bad, field in (({"loss": float("nan")}, "metrics['loss'] is nan"),
                       ({"scores": [1.0, np.float32("inf")]}, "metrics['scores'][1] is inf")):
        with pytest.raises(ValueError) as error:
            save_artifact(Artifact("tiny", CONFIG, {"w": torch.zeros(2)}, metrics=bad), root=tmp_path)
        assert field in str(error.value)
    with pytest.raises(ValueError, match=r"history\['loss'\]\[1\] is nan"):
        save_artifact(Artifact("tiny", CONFIG, {"w": torch.zeros(2)}, history={"loss": [1.0, float("nan")]}),
                      root=tmp_path)
    with pytest.raises(TypeError, match=r"metrics\['model'\] must hold numbers, text, lists or dicts"):
        save_artifact(Artifact("tiny", CONFIG, {"w": torch.zeros(2)}, metrics={"model": object()}), root=tmp_path)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == [], "a refused save wrote files"


def test_numpy_and_torch_numbers_are_stored_as_plain_numbers(tmp_path):
    metrics = {"accuracy": np.float32(0.75), "steps": np.int64(300), "ok": np.bool_(True),
               "loss": torch.tensor(0.5), "per_class": np.array([0.25, 0.5], dtype=np.float32)}
    history = {"loss": [np.float32(2.0), torch.tensor(1.5), 1.0]}
    save_artifact(Artifact("tiny", CONFIG, {"w": torch.zeros(2)}, metrics=metrics, history=history), root=tmp_path)
    art = load_artifact("tiny", CONFIG, root=tmp_path)
    assert art.metrics == {"accuracy": 0.75, "steps": 300, "ok": True, "loss": 0.5, "per_class": [0.25, 0.5]}
    assert art.history == {"loss": [2.0, 1.5, 1.0]}
    assert type(art.metrics["steps"]) is int and type(art.metrics["accuracy"]) is float


def test_stale_temporary_files_and_unnamed_weights_are_cleaned_by_the_next_save(tmp_path):
    save_artifact(Artifact("tiny", CONFIG, {"w": torch.zeros(2)}), root=tmp_path)
    stem = next(tmp_path.glob("*.json")).stem
    old, recent = time.time() - cache.STALE_SECONDS - 60, time.time() - 5
    leftovers = {f".{stem}.json.abc123.tmp": old, f"{stem}.{'0' * 16}.safetensors": old,   # a writer killed mid-way
                 f".{stem}.json.def456.tmp": recent, f"{stem}.{'1' * 16}.safetensors": recent}  # a save in progress
    for name, when in leftovers.items():
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (when, when))
    save_artifact(Artifact("other", CONFIG, {"w": torch.ones(2)}), root=tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {n for n, when in leftovers.items() if when == old}.isdisjoint(names), "stale files were kept"
    assert {n for n, when in leftovers.items() if when == recent} <= names, "a save in progress lost its files"
    assert load_artifact("tiny", CONFIG, root=tmp_path) is not None and load_artifact("other", CONFIG, root=tmp_path)


def test_an_artifact_in_an_older_format_is_rebuilt(tmp_path, capsys):
    build, calls = build_counter()
    cached("tiny", CONFIG, build, root=tmp_path)
    meta = next(tmp_path.glob("*.json"))
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "format": 1}))
    again = cached("tiny", CONFIG, build, root=tmp_path)
    assert len(calls) == 2 and not again.from_cache and "cache format 1" in capsys.readouterr().out
