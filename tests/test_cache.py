import json
from pathlib import Path

import pytest
import torch

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


@pytest.mark.parametrize("damage", ["flip weights", "truncate weights", "truncate json", "delete weights",
                                    "edit config"])
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
