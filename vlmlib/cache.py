"""The artifact cache: trained models saved once, reused by every later run and chapter.

Introduced in notebook 00. A trained model is stored as two files named by a hash of its
configuration: ``<name>-<key>.json`` (the config, metrics, loss history and the SHA-256 of the
weights) and ``<name>-<key>.<sha>.safetensors`` (the weights, named by the first 16 hex digits of
their own SHA-256). No pickle is used.

Saving is all-or-nothing. Everything is checked and serialised first (metrics and history must be
JSON: NumPy and torch scalars become Python numbers; NaN or infinity is refused, naming the field).
The weights are then written under their content's name and the JSON is published last, with one
atomic ``os.replace``: a reader sees the previous artifact or the new one, never a mixed pair, even
while two processes save different weights for the same configuration. A crash leaves nothing a
reader can see; temporary files and weights no record names are removed by a later save once they
are :data:`STALE_SECONDS` old (younger ones may belong to a save in progress).

Loading checks the checksum; a corrupted or truncated artifact is reported in one line, deleted and
rebuilt, never loaded. The cache lives in ``$VLMLIB_CACHE`` if set, otherwise ``~/.cache/vlmlib``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load as load_bytes, save as save_bytes

CACHE_ENV = "VLMLIB_CACHE"
KEY_VERSION = 1        # part of every key: changing it makes every cached model stale
FORMAT_VERSION = 2     # how an artifact is laid out on disk (2: weights named by their SHA-256)
STALE_SECONDS = 600    # a temporary file or unnamed weights this old belong to no save in progress
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_WEIGHTS = re.compile(r"^.+-[0-9a-f]{16}\.[0-9a-f]{16}\.safetensors$")


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

    text = f"v{KEY_VERSION}:w{RENDER_VERSION}:t{TRAINING_VERSION}:" + _canonical(config)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def _meta_path(name: str, config: dict[str, Any], root: Path | None) -> Path:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be lower-case letters, digits, '_', '-' or '.', got {name!r}")
    root = Path(root) if root is not None else cache_dir()
    return root / f"{name}-{config_key(config)}.json"


def _weights_path(meta: Path, sha256: Any) -> Path:
    if not isinstance(sha256, str) or not _SHA.match(sha256):
        raise CorruptArtifact(f"the metadata names no valid weights checksum ({sha256!r})")
    return meta.with_name(f"{meta.stem}.{sha256[:16]}.safetensors")


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (NumPy and torch scalars become numbers); NaN and infinity refused."""
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        value = value.tolist() if isinstance(value, np.ndarray) or getattr(value, "ndim", 0) else value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}: the cache stores only finite numbers")
        return value
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where} must have text keys, got {bad[0]!r}")
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} must hold numbers, text, lists or dicts (JSON), got {type(value).__name__}")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then move it into place in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _clean(folder: Path, older_than: float = STALE_SECONDS) -> None:
    """Remove temporary files and weights that no metadata names, once they are ``older_than`` seconds old."""
    named = set()
    for meta in folder.glob("*.json"):
        try:
            named.add(_weights_path(meta, json.loads(meta.read_text())["weights_sha256"]).name)
        except Exception:          # unreadable metadata is reported when its artifact is loaded
            pass
    now = time.time()
    for path in folder.iterdir():
        if path.suffix == ".tmp" or (_WEIGHTS.match(path.name) and path.name not in named):
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
            except FileNotFoundError:   # another process cleaned it first
                pass


def save_artifact(artifact: Artifact, root: Path | None = None) -> Path:
    """Store an artifact all-or-nothing (see the module's docstring). Returns the weights' path."""
    meta = _meta_path(artifact.name, artifact.config, root)
    if not isinstance(artifact.state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in artifact.state_dict.items()):
        raise TypeError("state_dict must map names to tensors")
    record = {
        "format": FORMAT_VERSION,
        "name": artifact.name,
        "config": json.loads(_canonical(artifact.config)),
        "metrics": _plain(artifact.metrics, "metrics"),
        "history": _plain(artifact.history, "history"),
    }
    data = save_bytes({k: v.detach().to("cpu").contiguous() for k, v in artifact.state_dict.items()})
    record["weights_sha256"] = hashlib.sha256(data).hexdigest()
    text = json.dumps(record, indent=1, allow_nan=False).encode()
    weights = _weights_path(meta, record["weights_sha256"])
    existed = weights.exists()
    _atomic_write(weights, data)
    try:
        _atomic_write(meta, text)          # the one publishing step
    except BaseException:
        if not existed:
            weights.unlink(missing_ok=True)
        raise
    _clean(meta.parent)
    return weights


def load_artifact(name: str, config: dict[str, Any], root: Path | None = None) -> Artifact | None:
    """Load an artifact, or return ``None`` if it is absent. Raises :class:`CorruptArtifact` if damaged."""
    meta = _meta_path(name, config, root)
    for _ in range(5):
        try:
            text = meta.read_text()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            if record.get("format") != FORMAT_VERSION:
                raise CorruptArtifact(f"written in cache format {record.get('format')!r}, not {FORMAT_VERSION}")
            if record.get("config") != json.loads(_canonical(config)):
                raise CorruptArtifact("metadata does not match the configuration")
            weights = _weights_path(meta, record.get("weights_sha256"))
            try:
                data = weights.read_bytes()
            except FileNotFoundError:
                if not meta.exists() or meta.read_text() != text:
                    continue               # another process published a newer artifact meanwhile: read that
                raise CorruptArtifact("the weights file is missing") from None
            if hashlib.sha256(data).hexdigest() != record["weights_sha256"]:
                raise CorruptArtifact("weights fail their checksum")
            state = load_bytes(data)
        except CorruptArtifact:
            raise
        except Exception as exc:   # truncated JSON, unreadable safetensors...
            raise CorruptArtifact(f"{type(exc).__name__}: {exc}") from None
        return Artifact(name=name, config=config, state_dict=state, metrics=record.get("metrics", {}),
                        history=record.get("history", {}), from_cache=True)
    raise CorruptArtifact("its metadata kept changing while it was read")


def cached(name: str, config: dict[str, Any], build: Callable[[], Artifact], root: Path | None = None,
           verbose: bool = True) -> Artifact:
    """Load the artifact for ``config`` from the cache, or call ``build()`` and store what it returns.

    A damaged artifact is reported in one line, deleted and rebuilt.
    """
    meta = _meta_path(name, config, root)
    started = time.time()
    try:
        art = load_artifact(name, config, root)
    except CorruptArtifact as exc:
        if verbose:
            print(f"Cached {name} at {meta.parent} is damaged ({exc}); rebuilding it.")
        meta.unlink(missing_ok=True)
        for weights in meta.parent.glob(f"{meta.stem}.*.safetensors"):
            try:    # this artifact's weights; newer ones belong to another process saving it now
                if weights.stat().st_mtime < started:
                    weights.unlink()
            except FileNotFoundError:
                pass
        art = None
    if art is not None:
        if verbose:
            print(f"Loaded {name} from the cache ({meta.name}).")
        return art
    art = build()
    if not isinstance(art, Artifact):
        raise TypeError(f"build() must return an Artifact, got {type(art).__name__}")
    if art.name != name or art.config != config:
        raise ValueError("build() returned an artifact with another name or config than was asked for")
    save_artifact(art, root)
    return art
