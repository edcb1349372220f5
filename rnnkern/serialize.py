"""save/load a model, and the training checkpoints of ``fit``, as ``.npz`` files.

Layout of a file (read with ``np.load(path, allow_pickle=False)``: nothing is
ever unpickled):

- ``param/<name>``: one array per parameter, names as ``model.parameters()``;
- ``__rnnkern__``: a 0-d unicode array holding JSON: ``format`` ("rnnkern-model"
  or "rnnkern-checkpoint"), ``version``, ``model`` (the layer specs that rebuild
  the model), ``gate_order``, ``dtype``, ``backend`` (where it was saved from;
  informational);
- ``save(..., optimizer=opt)`` adds ``opt/<buffer>/<name>`` (the optimiser's
  buffers, e.g. Adam's moments ``m`` and ``v``) and, in the JSON, ``optimizer``:
  ``{"hyperparameters": ..., "t": step count}``; files without it still load;
- a checkpoint adds the same ``opt/`` arrays, ``order`` (the current epoch's
  shuffled row order) and, in the JSON, ``fit``: the optimiser's settings and step
  count, the shuffling generator's state, the position (epoch, batch), the history
  and the state of the callbacks and schedule (see ``train.fit``).

Arrays are stored exactly, so a loaded model has bit-identical parameters and
outputs. Writing is atomic (``write_atomic``): a temporary file in the same
directory, flushed and fsync'ed, then renamed over the target, so that a process
killed at any moment leaves either the old file or the new one, never a broken one.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from typing import Any

import numpy as np

from . import layers as L
from ._validate import check_bool, check_model
from .layers import Layer, move
from .optim import Optimizer, from_hyperparameters

MODEL_FORMAT = "rnnkern-model"
CHECKPOINT_FORMAT = "rnnkern-checkpoint"
VERSION = 1
META_KEY = "__rnnkern__"
GATE_ORDER = {"lstm": "i,f,g,o", "gru": "r,z,n"}
LAYER_TYPES = {"RNN": L.RNN, "LSTM": L.LSTM, "GRU": L.GRU, "Dense": L.Dense,
               "Embedding": L.Embedding, "Dropout": L.Dropout}


def _fspath(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path (str or os.PathLike), "
                        f"got {type(path).__name__}")
    return os.fspath(path)


def write_atomic(path: str | os.PathLike, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``arrays`` (host arrays) and ``meta`` (JSON) to the .npz ``path`` atomically.

    The temporary file is ``.<name>.tmp`` beside the target (one per target, so a
    killed writer leaves at most one stale temporary, overwritten by the next
    write); after the rename the directory is fsync'ed so that the rename itself
    survives a power cut.
    """
    path = _fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"path: the directory {directory!r} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    contents = {**arrays, META_KEY: np.array(json.dumps(meta))}
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **contents)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def model_meta(model: Layer, kind: str = MODEL_FORMAT) -> dict[str, Any]:
    return {"format": kind, "version": VERSION, "model": model.spec(),
            "gate_order": GATE_ORDER, "dtype": str(model.dtype), "backend": model.backend}


def param_arrays(model: Layer) -> dict[str, np.ndarray]:
    """``param/<name>`` -> host copy of every parameter."""
    return {f"param/{k}": move(v, np) for k, v in model.parameters().items()}


def optimizer_arrays(opt: Optimizer) -> dict[str, np.ndarray]:
    """``opt/<buffer>/<name>`` -> host copy of every buffer of the optimiser."""
    return {f"opt/{key}/{k}": move(v, np) for key, bufs in opt.state_dict().items()
            if key != "t" for k, v in bufs.items()}


def load_optimizer(opt: Optimizer, arrays: dict[str, Any], t: int) -> None:
    """Fill ``opt``'s buffers from ``optimizer_arrays``' entries and set its step count."""
    state: dict[str, Any] = {"t": t}
    for key in opt.state_dict():
        if key != "t":
            prefix = f"opt/{key}/"
            state[key] = {k.removeprefix(prefix): v for k, v in arrays.items()
                          if k.startswith(prefix)}
    opt.load_state_dict(state)


def check_optimizer(opt: Any, model: Layer, name: str = "opt") -> Optimizer:
    """``opt`` if it is an rnnkern optimiser updating exactly ``model.parameters()``."""
    if not isinstance(opt, Optimizer):
        raise TypeError(f"{name}: expected an rnnkern optimiser (Adam, SGD), "
                        f"got {type(opt).__name__}")
    live = model.parameters()
    if set(opt.params) != set(live) or any(opt.params[k] is not v for k, v in live.items()):
        raise ValueError(f"{name}: it updates other arrays than model.parameters() (made for "
                         f"another model, or before model.to(...)); make it with "
                         f"Adam(model.parameters())")
    return opt


def save(model: Layer, path: str | os.PathLike, optimizer: Optimizer | None = None) -> None:
    """Write ``model`` (a layer or Sequential) to ``path`` (.npz), atomically.

    optimizer: also its settings, step count and buffers (Adam's moments), so that
    ``load(path, with_optimizer=True)`` continues training exactly where it stopped.
    """
    check_model(model)
    arrays, meta = param_arrays(model), model_meta(model)
    if optimizer is not None:
        check_optimizer(optimizer, model, "optimizer")
        arrays.update(optimizer_arrays(optimizer))
        meta["optimizer"] = {"hyperparameters": optimizer.hyperparameters(),
                             "t": optimizer.t}
    write_atomic(path, arrays, meta)


def read(path: str | os.PathLike, formats: tuple[str, ...]) -> tuple[dict, dict[str, Any]]:
    """(metadata, arrays) of an rnnkern file whose format is one of ``formats``.

    Raises ValueError for a file that is truncated, corrupt, not an .npz, not an
    rnnkern file of those formats, or of a newer version; FileNotFoundError as is.
    """
    path = _fspath(path)
    what = " or ".join(f.removeprefix("rnnkern-") for f in formats)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an rnnkern {what} file (a single .npy array, "
                         "not an .npz archive)")
    try:
        # numpy reads exactly each array's bytes and so never reaches the zip's CRC
        # check: test every member first, so that a flipped bit is caught
        damaged = z.zip.testzip()
        if damaged is not None:
            raise zipfile.BadZipFile(f"CRC mismatch in {damaged}")
        contents = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    finally:
        z.close()
    raw = contents.pop(META_KEY, None)
    if raw is None:
        raise ValueError(f"{path}: not an rnnkern {what} file (no {META_KEY!r} metadata; "
                         f"arrays found: {sorted(contents)[:5]})")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt rnnkern metadata ({e})") from e
    kind = meta.get("format") if isinstance(meta, dict) else None
    if kind not in formats:
        raise ValueError(f"{path}: not an rnnkern {what} file (format {kind!r})")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: corrupt rnnkern metadata (version {version!r})")
    if version > VERSION:
        raise ValueError(f"{path}: written by a newer rnnkern (file format version {version}); "
                         f"this rnnkern reads versions up to {VERSION}: upgrade rnnkern")
    if meta.get("gate_order") != GATE_ORDER:
        raise ValueError(f"{path}: gate order {meta.get('gate_order')!r} differs from "
                         f"rnnkern's {GATE_ORDER}")
    return meta, contents


def _build(spec: Any, backend: str | None, dtype: Any, path: str) -> Layer:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"{path}: metadata 'model' is not a layer spec: {spec!r}")
    args = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    try:
        if kind == "Sequential":
            inner = [_build(s, backend, dtype, path) for s in args.pop("layers")]
            return L.Sequential(*inner)
        if kind == "Bidirectional":
            return L.Bidirectional(_build(args.pop("cell"), backend, dtype, path), **args)
        with warnings.catch_warnings():  # a file's layer warned once, when it was built
            warnings.simplefilter("ignore", UserWarning)
            return LAYER_TYPES[kind](**args, backend=backend, dtype=dtype)
    except (KeyError, TypeError, ValueError) as e:
        if str(e).startswith("backend:"):
            raise
        raise ValueError(f"{path}: unknown layer spec {spec!r} ({e})") from e


def from_spec(spec: dict[str, Any], backend: str | None = None, dtype: Any = "float32") -> Layer:
    """A new model of the architecture ``spec`` (``model.spec()``) on ``backend`` in
    ``dtype``, its parameters freshly drawn (``load_parameters`` fills them)."""
    return _build(spec, backend, dtype, "spec")


def load(path: str | os.PathLike, backend: str | None = None, with_optimizer: bool = False
         ) -> Layer | tuple[Layer, Optimizer]:
    """Rebuild the model saved at ``path`` on ``backend`` (None: the default backend).

    ``path`` is a model file of ``save`` or a checkpoint of ``fit`` (its model).
    with_optimizer: return ``(model, optimizer)``, the optimiser rebuilt over the
    model's parameters with its saved settings, step count and buffers (a file saved
    without ``optimizer=`` raises ValueError; a checkpoint has its optimiser).
    A file that is not one of those (corrupt, truncated, foreign, a newer format
    version, parameters that do not match the specs) raises ValueError.
    """
    check_bool("with_optimizer", with_optimizer)
    meta, contents = read(path, (MODEL_FORMAT, CHECKPOINT_FORMAT))
    path = os.fspath(path)
    model = _build(meta.get("model"), backend, meta.get("dtype"), path)
    params = {k.removeprefix("param/"): v for k, v in contents.items()
              if k.startswith("param/")}
    try:
        model.load_parameters(params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: parameters do not match the saved model ({e})") from e
    if not with_optimizer:
        return model
    saved = meta.get("optimizer") if meta["format"] == MODEL_FORMAT else (
        {"hyperparameters": meta["fit"].get("optimizer"), "t": meta["fit"].get("t")}
        if isinstance(meta.get("fit"), dict) else None)
    if saved is None:
        raise ValueError(f"{path}: saved without an optimiser; save with "
                         f"rk.save(model, path, optimizer=opt), or load with "
                         f"with_optimizer=False")
    try:
        opt = from_hyperparameters(model.parameters(), saved["hyperparameters"])
        load_optimizer(opt, contents, saved["t"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: corrupt optimiser state ({type(e).__name__}: {e})") from e
    return model, opt
