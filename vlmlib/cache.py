"""The artifact cache: trained models saved once, reused by every later run and chapter.

Introduced in notebook 00. A trained model is stored as two files named by a hash of its
configuration: ``<name>-<key>.safetensors`` (the weights) and ``<name>-<key>.json`` (the config,
metrics, loss history and the SHA-256 of the weights). Loading checks the checksum; a corrupted or
truncated artifact is reported in one line, deleted and rebuilt, never loaded. No pickle is used.

The cache lives in ``$VLMLIB_CACHE`` if set, otherwise ``~/.cache/vlmlib``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

CACHE_ENV = "VLMLIB_CACHE"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def cache_dir() -> Path:
    """Where artifacts are kept: ``$VLMLIB_CACHE`` or ``~/.cache/vlmlib``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "vlmlib"


def _canonical(config: dict[str, Any]) -> str:
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config must hold only JSON values (str, int, float, bool, None, list, dict): {exc}") from None


def config_key(config: dict[str, Any]) -> str:
    """A short hash that names a configuration (key order does not matter).

    The version of ShapesWorld's rendering and the version of the training loop are part of the key,
    so a change to the world or to how models are optimised retrains.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    from .shapesworld import RENDER_VERSION   # a model trained on another version of the world is stale
    from .training import TRAINING_VERSION

    text = f"v{FORMAT_VERSION}:w{RENDER_VERSION}:t{TRAINING_VERSION}:" + _canonical(config)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    """A trained model's weights with what is known about them."""

    name: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    from_cache: bool = False


class CorruptArtifact(Exception):
    """An artifact on disk failed its integrity check."""


def _paths(name: str, config: dict[str, Any], root: Path | None) -> tuple[Path, Path]:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be lower-case letters, digits, '_', '-' or '.', got {name!r}")
    root = Path(root) if root is not None else cache_dir()
    stem = f"{name}-{config_key(config)}"
    return root / f"{stem}.safetensors", root / f"{stem}.json"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_artifact(artifact: Artifact, root: Path | None = None) -> Path:
    """Write an artifact (weights first, metadata last, each atomically). Returns the weights path."""
    weights, meta = _paths(artifact.name, artifact.config, root)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in artifact.state_dict.items()):
        raise TypeError("state_dict must map names to tensors")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in artifact.state_dict.items()}
    _atomic_write(weights, lambda p: save_file(tensors, str(p)))
    record = {
        "format": FORMAT_VERSION,
        "name": artifact.name,
        "config": artifact.config,
        "metrics": artifact.metrics,
        "history": artifact.history,
        "weights_sha256": _sha256(weights),
    }
    text = json.dumps(record, indent=1, allow_nan=False)
    _atomic_write(meta, lambda p: p.write_text(text))
    return weights


def load_artifact(name: str, config: dict[str, Any], root: Path | None = None) -> Artifact | None:
    """Load an artifact, or return ``None`` if it is absent. Raises :class:`CorruptArtifact` if damaged."""
    weights, meta = _paths(name, config, root)
    if not weights.exists() and not meta.exists():
        return None
    try:
        record = json.loads(meta.read_text())
        if record.get("format") != FORMAT_VERSION or record.get("config") != json.loads(_canonical(config)):
            raise CorruptArtifact("metadata does not match the configuration")
        if _sha256(weights) != record["weights_sha256"]:
            raise CorruptArtifact("weights fail their checksum")
        state = load_file(str(weights))
    except CorruptArtifact:
        raise
    except Exception as exc:   # missing file, truncated JSON, unreadable safetensors...
        raise CorruptArtifact(f"{type(exc).__name__}: {exc}") from None
    return Artifact(name=name, config=config, state_dict=state, metrics=record.get("metrics", {}),
                    history=record.get("history", {}), from_cache=True)


def cached(name: str, config: dict[str, Any], build: Callable[[], Artifact], root: Path | None = None,
           verbose: bool = True) -> Artifact:
    """Load the artifact for ``config`` from the cache, or call ``build()`` and store what it returns.

    A damaged artifact is reported in one line, deleted and rebuilt.
    """
    weights, meta = _paths(name, config, root)
    try:
        art = load_artifact(name, config, root)
    except CorruptArtifact as exc:
        if verbose:
            print(f"Cached {name} at {weights.parent} is damaged ({exc}); rebuilding it.")
        for p in (weights, meta):
            p.unlink(missing_ok=True)
        art = None
    if art is not None:
        if verbose:
            print(f"Loaded {name} from the cache ({weights.name}).")
        return art
    art = build()
    if not isinstance(art, Artifact):
        raise TypeError(f"build() must return an Artifact, got {type(art).__name__}")
    if art.name != name or art.config != config:
        raise ValueError("build() returned an artifact with another name or config than was asked for")
    save_artifact(art, root)
    return art
