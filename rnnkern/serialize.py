"""save/load a model as one ``.npz`` file: parameters plus JSON metadata.

Layout of the file (read with ``np.load(path, allow_pickle=False)``):

- ``param/<name>``: one array per parameter, names as ``model.parameters()``;
- ``__rnnkern__``: a 0-d unicode array holding JSON: ``format`` ("rnnkern-model"),
  ``version``, ``model`` (the layer specs that rebuild the model), ``gate_order``,
  ``dtype``, ``backend`` (where it was saved from; informational).

Arrays are stored exactly, so a loaded model has bit-identical parameters and
outputs. Writing is atomic: a temporary file in the same directory, flushed and
fsync'ed, then renamed over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from . import layers as L
from .layers import Layer, move

FORMAT = "rnnkern-model"
VERSION = 1
META_KEY = "__rnnkern__"
GATE_ORDER = {"lstm": "i,f,g,o", "gru": "r,z,n"}
LAYER_TYPES = {"RNN": L.RNN, "LSTM": L.LSTM, "GRU": L.GRU, "Dense": L.Dense}


def _metadata(model: Layer) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model": model.spec(),
            "gate_order": GATE_ORDER, "dtype": str(model.dtype), "backend": model.backend}


def save(model: Layer, path: str | os.PathLike) -> None:
    """Write ``model`` (a layer or Sequential) to ``path`` (.npz), atomically."""
    if not isinstance(model, Layer):
        raise ValueError(f"model: expected an rnnkern layer or Sequential, "
                         f"got {type(model).__name__}")
    path = os.fspath(path)
    arrays = {f"param/{k}": move(v, np) for k, v in model.parameters().items()}
    arrays[META_KEY] = np.array(json.dumps(_metadata(model)))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".rnnkern-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _build(spec: Any, backend: str | None, dtype: str, path: str) -> Layer:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"{path}: metadata 'model' is not a layer spec: {spec!r}")
    args = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    try:
        if kind == "Sequential":
            inner = [_build(s, backend, dtype, path) for s in args.pop("layers")]
            return L.Sequential(*inner)
        return LAYER_TYPES[kind](**args, backend=backend, dtype=dtype)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: unknown layer spec {spec!r} ({e})") from e


def load(path: str | os.PathLike, backend: str | None = None) -> Layer:
    """Rebuild the model saved at ``path`` on ``backend`` (None: the default backend).

    A file that is not an rnnkern model (corrupt, truncated, foreign, a newer
    format version, parameters that do not match the specs) raises ValueError.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            contents = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    if META_KEY not in contents:
        raise ValueError(f"{path}: not an rnnkern model file (no {META_KEY!r} metadata; "
                         f"arrays found: {sorted(contents)[:5]})")
    try:
        meta = json.loads(str(contents.pop(META_KEY)))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt rnnkern metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an rnnkern model file (format "
                         f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: rnnkern model format version {meta.get('version')!r}; "
                         f"this rnnkern reads version {VERSION}")
    if meta.get("gate_order") != GATE_ORDER:
        raise ValueError(f"{path}: gate order {meta.get('gate_order')!r} differs from "
                         f"rnnkern's {GATE_ORDER}")
    model = _build(meta.get("model"), backend, meta.get("dtype"), path)
    params = {k.removeprefix("param/"): v for k, v in contents.items()}
    try:
        model.load_parameters(params)
    except ValueError as e:
        raise ValueError(f"{path}: parameters do not match the saved model ({e})") from e
    return model
