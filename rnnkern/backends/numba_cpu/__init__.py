"""Numba CPU backend: the kernel contract of DESIGN.md compiled with ``@njit``.

Mirrors ``numpy_ref`` function by function: every public function validates its
arguments with ``rnnkern._validate`` first, then hands C-contiguous arrays to a
compiled kernel of its schedule's module (``rnn``, ``lstm``, ``gru``: each cell's rows
schedules; ``batch_inner``, ``lone_row``). Each takes ``variant=None`` (chosen by shape)
or one of ``VARIANTS``' schedule names, and ``threads=None`` (chosen by shape and
``numba.get_num_threads()``) or the row blocks of a rows schedule (1: serial), see
``plan``. Caches are dicts of named arrays, as in the reference:
post-activation gates and the states entering every step, with the schedule ("variant")
and row blocks ("threads") the forward ran. The batch-inner forward leaves them in one
buffer ("buf"), each step's batch rows transposed and padded, (T, K, Bp), the layout it
computes in (``batch_inner``); its backward reads them there, any other backward turns
them into the named (T, B, K) arrays first, so that a forward alone (inference,
generation) never pays for the transposes.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..._compiling import announce
from ..._validate import (
    ACTIVATION_CODES,
    Dims,
    check_activation,
    check_backward,
    check_forward,
    check_training,
)
from ..numpy_ref import param_grads
from . import batch_inner, dense, gru, lone_row, lstm, rnn
from ._blas import blas_threads
from ._memory import reuse_freed_memory
from ._products import SMALL_MACS
from ._simd import pack_serial, weight_grads
from ._vec import VECTOR_BYTES
from .embedding import embedding_backward, embedding_forward
from .plan import (
    GEMM_PARALLEL_MIN_MACS,
    PACKED_MIN_MACS,
    UNITS_IN_STEP_MAX_I,
    VARIANTS,
    Plan,
    choose,
)

__all__ = ["VARIANTS", "dense_backward", "dense_forward", "embedding_backward",
           "embedding_forward", "gru_backward",
           "gru_forward", "is_available", "lstm_backward", "lstm_forward", "rnn_backward",
           "rnn_forward", "xp"]

Cache = dict[str, Any]

xp = np  # the array module this backend computes with


def is_available() -> bool:
    return True


reuse_freed_memory()
announce()


#: arrays the kernels only read, kept between calls: building them costs about as much as
#: a whole small kernel call; bounded by clearing when full
_SHARED: dict[tuple, np.ndarray] = {}
_SHARED_MAX = 64


def _shared(key: tuple, make: Any) -> np.ndarray:
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    a = _SHARED[key] = make()
    return a


def _lengths(lengths: Any, d: Dims) -> np.ndarray:
    """lengths: (B,) int64 for the kernels; all T when None."""
    if lengths is None:
        key = (d.B, d.T)
        a = _SHARED.get(key)
        return a if a is not None else _shared(key, lambda: np.full(d.B, d.T, np.int64))
    return np.ascontiguousarray(lengths, dtype=np.int64)


def _zeros_or(a: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``a``, or zeros in its place (shared: no kernel writes into its inputs)."""
    if a is not None:
        return a
    key = (shape, dtype)
    z = _SHARED.get(key)
    return z if z is not None else _shared(key, lambda: np.zeros(shape, dtype))


def _blas_threads(d: Dims, plan: Plan, G: int) -> int:
    """SciPy OpenBLAS threads for one forward or backward time loop (0: leave as is), see
    ``_blas``."""
    if plan.chunks > 1:
        return 1  # each Numba thread makes its own single-threaded BLAS calls
    if d.H <= 8 and plan.fused and d.T * d.B * d.I < SMALL_MACS // 32:
        return 0  # the common tiny case, answered before the arithmetic below
    # the kernels call BLAS only for the products over all steps, and only big ones
    return 1 if d.T * d.B * max(d.I, d.H) * G * d.H >= SMALL_MACS else 0


def _gemm_chunks(blas: int, macs: int, threads: int | None) -> int | None:
    """Row blocks of a product over all steps (``macs`` multiply-adds) that runs at the
    time loop's BLAS thread count ``blas``: one per thread (``threads``, or Numba's count
    where None) where OpenBLAS is held to one thread (``blas == 1``) and the product is big
    enough, else None (serial, see ``_par``). OpenBLAS's own
    workers spin after a threaded call and slow down whatever runs next on a busy machine,
    so they are used only where the per-step products are big enough for them too; Numba's
    threads, already running the kernels, take the big products over all steps instead."""
    if blas != 1 or macs < GEMM_PARALLEL_MIN_MACS:
        return None
    return _par(threads or numba.get_num_threads())


def _par(chunks: int) -> int | None:
    """A kernel's row blocks as it takes them: None for one. A kernel passed None compiles
    without its parallel loop (``if chunks is not None`` is decided by the argument's type),
    which halves a serial variant's first compile."""
    return chunks if chunks > 1 else None


def _projection_chunks(blas: int, d: Dims, G: int, threads: int | None) -> int | None:
    return _gemm_chunks(blas, d.T * d.B * d.I * G * d.H, threads)


def _in_step(d: Dims) -> bool:
    """Whether lone-row's steps make their own input part (see ``lone_row.pack_units``)."""
    return d.I <= UNITS_IN_STEP_MAX_I


def _packed(macs: int) -> bool | None:
    """``_simd.weight_grads``' packed for a product of ``macs`` multiply-adds: True (the
    micro-kernel) from ``PACKED_MIN_MACS``, else None (BLAS)."""
    return True if macs >= PACKED_MIN_MACS else None


def _weight_grads(blas: int, cache: Cache, dgx: np.ndarray, dgh: np.ndarray,
                  threads: int | None) -> tuple:
    """dx, dW, dR, db from the stored gate gradients, a few GEMMs over all steps at once."""
    d: Dims = cache["dims"]
    chunks = _gemm_chunks(blas, d.T * d.B * (2 * d.I + d.H) * dgx.shape[2], threads)
    packed = _packed(d.T * d.B * (d.I + d.H) * dgx.shape[2])
    return _call(blas, weight_grads, cache["x"], cache["W"], cache["h"], dgx, dgh, chunks,
                 packed)


def _cache(keep: bool, **arrays: Any) -> Cache | None:
    """A forward's cache, or None for inference (``training=False``: nothing kept)."""
    return arrays if keep else None


def _call(blas: int, kernel: Any, *args: Any) -> Any:
    if blas == 0:
        return kernel(*args)
    with blas_threads(blas):
        return kernel(*args)


#: per cell: the names of a batch-inner cache's arrays, and the kernel that makes them
#: from its buffer in the rows' layout
_ROWS_LAYOUT = {"rnn": (batch_inner.RNN_CACHE_NAMES, batch_inner.rnn_cache_rows),
                "lstm": (batch_inner.LSTM_CACHE_NAMES, batch_inner.lstm_cache_rows),
                "gru": (batch_inner.GRU_CACHE_NAMES, batch_inner.gru_cache_rows)}


def _batch_backward(cache: Cache, plan: Plan, per_step: bool) -> bool:
    """Whether the backward runs batch-inner's own kernel, on the cache as its forward left
    it (the per-step contributions come from the (T, B, .) gate gradients of the others)."""
    return plan.name == "batch-inner" and "buf" in cache and not per_step


def _rows_layout(cache: Cache) -> None:
    """A batch-inner cache's buffer as the (T, B, K) arrays the other backward kernels read, once
    (the buffer goes only after the arrays are in: another thread's backward on the same
    cache finds one or the other)."""
    buf = cache.get("buf")
    if buf is not None:
        d: Dims = cache["dims"]
        names, cache_rows = _ROWS_LAYOUT[cache["cell"]]
        cache.update(zip(names, cache_rows(buf, d.T, d.B, d.H)))
        cache.pop("buf", None)


def _finish(dx: np.ndarray, dstate: Any, grads: dict, cache: Cache, dgx: np.ndarray,
            dgh: np.ndarray, per_step: bool) -> tuple:
    """The backward's return value; with per_step, the per-step contributions as well."""
    if not per_step:
        return dx, dstate, grads
    steps = param_grads(cache["x"], cache["h"][:-1], dgx, dgh, True)[1]
    if cache["cell"] == "gru":
        steps["b_hn"] = dgh[:, :, 2 * cache["dims"].H:].sum(axis=1)
    return dx, dstate, grads, steps


# ----------------------------------------------------------------------------
# Elman RNN


def rnn_forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    W: np.ndarray,
    R: np.ndarray,
    b: np.ndarray,
    activation: str = "tanh",
    lengths: np.ndarray | None = None,
    training: bool = True,
    variant: str | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, Cache | None]:
    """Elman RNN over a whole sequence; see ``numpy_ref.rnn_forward``.

    x: (T, B, I)   h0: (B, H) or None   W: (I, H)   R: (H, H)   b: (H,)
    Returns y: (T, B, H), hT: (B, H), cache (None unless training: the kernels then keep
    one step's arrays, ``_memory.kept``).
    """
    d, lengths = check_forward("rnn", x, h0, None, W, R, b, lengths=lengths)
    keep = check_training(training)
    code = ACTIVATION_CODES[check_activation(activation)]
    plan = choose(variant, threads, d.B, d.H, 1, d.I, d.dtype.itemsize, d.T)
    lens = _lengths(lengths, d)
    h0 = _zeros_or(h0, (d.B, d.H), d.dtype)
    if plan.name == "batch-inner":
        y, hT, buf = batch_inner.rnn_forward(x, h0, W, R, b, code, lens, keep)
        return y, hT, _cache(keep, cell="rnn", dims=d, activation=activation, x=x, W=W,
                             R=R, buf=buf, lengths=lens, variant=plan.name, threads=1)
    if plan.name == "lone-row":
        y, h, a, hT = lone_row.rnn_forward(x, h0, W, R, b, code, lens, _in_step(d), keep)
    else:
        blas = _blas_threads(d, plan, 1)
        y, h, a, hT = _call(blas, rnn.rnn_forward, x, h0, W, R, b, code, lens, plan.fused,
                            plan.packed or None, _par(plan.chunks), plan.stepped or None,
                            _projection_chunks(blas, d, 1, threads), keep)
    return y, hT, _cache(keep, cell="rnn", dims=d, activation=activation, x=x, W=W, R=R,
                         h=h, a=a, lengths=lens, variant=plan.name, threads=plan.chunks)


def rnn_backward(
    dy: np.ndarray | None, dhT: np.ndarray | None, cache: Cache, per_step: bool = False,
    variant: str | None = None,
    threads: int | None = None,
) -> tuple:
    """BPTT for ``rnn_forward``.

    dy: (T, B, H) or None   dhT: (B, H) or None
    Returns dx: (T, B, I), dh0: (B, H), grads {W, R, b} (+ steps with per_step).
    """
    d: Dims = cache["dims"]
    check_backward(d, dy=dy, dhT=dhT)
    plan = choose(variant, threads, d.B, d.H, 1, d.I, d.dtype.itemsize, d.T)
    dy, dhT = _zeros_or(dy, (d.T, d.B, d.H), d.dtype), _zeros_or(dhT, (d.B, d.H), d.dtype)
    code = ACTIVATION_CODES[cache["activation"]]
    if _batch_backward(cache, plan, per_step):
        dx, dh0, dW, dR, db = batch_inner.rnn_backward(
            dy, dhT, cache["x"], cache["W"], cache["R"], cache["buf"], code, cache["lengths"])
        return dx, dh0, {"W": dW, "R": dR, "b": db}
    _rows_layout(cache)
    blas = _blas_threads(d, plan, 1)
    dh0, da = _call(
        blas, rnn.rnn_backward, dy, dhT, cache["R"], cache["a"], code, cache["lengths"],
        plan.fused, plan.packed or None, _par(plan.chunks))
    dx, dW, dR, db = _weight_grads(blas, cache, da, da, threads)
    return _finish(dx, dh0, {"W": dW, "R": dR, "b": db}, cache, da, da, per_step)


# ----------------------------------------------------------------------------
# LSTM


def lstm_forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    W: np.ndarray,
    R: np.ndarray,
    b: np.ndarray,
    lengths: np.ndarray | None = None,
    training: bool = True,
    variant: str | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], Cache | None]:
    """LSTM over a whole sequence; see ``numpy_ref.lstm_forward``.

    x: (T, B, I)   h0, c0: (B, H) or None   W: (I, 4H)   R: (H, 4H)   b: (4H,)
    Returns y: (T, B, H), (hT, cT): (B, H) each, cache (None unless training).
    """
    d, lengths = check_forward("lstm", x, h0, c0, W, R, b, lengths=lengths)
    keep = check_training(training)
    plan = choose(variant, threads, d.B, d.H, 4, d.I, d.dtype.itemsize, d.T)
    lens = _lengths(lengths, d)
    h0, c0 = _zeros_or(h0, (d.B, d.H), d.dtype), _zeros_or(c0, (d.B, d.H), d.dtype)
    if plan.name == "batch-inner":
        y, hT, cT, buf = batch_inner.lstm_forward(x, h0, c0, W, R, b, lens, keep)
        return y, (hT, cT), _cache(keep, cell="lstm", dims=d, x=x, W=W, R=R, buf=buf,
                                   lengths=lens, variant=plan.name, threads=1)
    if plan.name == "lone-row":
        y, h, c, gates, tanh_c, hT, cT = lone_row.lstm_forward(
            x, h0, c0, W, R, b, lens, _in_step(d), keep)
    else:
        blas = _blas_threads(d, plan, 4)
        y, h, c, gates, tanh_c, hT, cT = _call(
            blas, lstm.lstm_forward, x, h0, c0, W, R, b, lens, plan.fused, plan.packed or None,
            _par(plan.chunks), plan.stepped or None, _projection_chunks(blas, d, 4, threads), keep)
    return y, (hT, cT), _cache(keep, cell="lstm", dims=d, x=x, W=W, R=R, h=h, c=c,
                               gates=gates, tanh_c=tanh_c, lengths=lens, variant=plan.name,
                               threads=plan.chunks)


def lstm_backward(
    dy: np.ndarray | None,
    dstate: tuple[np.ndarray | None, np.ndarray | None] | None,
    cache: Cache,
    per_step: bool = False,
    variant: str | None = None,
    threads: int | None = None,
) -> tuple:
    """BPTT for ``lstm_forward``.

    dy: (T, B, H) or None   dstate: (dhT, dcT), each (B, H) or None
    Returns dx: (T, B, I), (dh0, dc0): (B, H) each, grads {W, R, b} (+ steps).
    """
    d: Dims = cache["dims"]
    dhT, dcT = (None, None) if dstate is None else dstate
    check_backward(d, dy=dy, dhT=dhT, dcT=dcT)
    plan = choose(variant, threads, d.B, d.H, 4, d.I, d.dtype.itemsize, d.T)
    dy, dhT, dcT = (_zeros_or(dy, (d.T, d.B, d.H), d.dtype), _zeros_or(dhT, (d.B, d.H), d.dtype),
                    _zeros_or(dcT, (d.B, d.H), d.dtype))
    if _batch_backward(cache, plan, per_step):
        dx, dh0, dc0, dW, dR, db = batch_inner.lstm_backward(
            dy, dhT, dcT, cache["x"], cache["W"], cache["R"], cache["buf"], cache["lengths"])
        return dx, (dh0, dc0), {"W": dW, "R": dR, "b": db}
    _rows_layout(cache)
    blas = _blas_threads(d, plan, 4)
    dh0, dc0, dgates = _call(
        blas, lstm.lstm_backward, dy, dhT, dcT, cache["R"], cache["c"], cache["gates"],
        cache["tanh_c"], cache["lengths"], plan.fused, plan.packed or None, _par(plan.chunks))
    dx, dW, dR, db = _weight_grads(blas, cache, dgates, dgates, threads)
    return _finish(dx, (dh0, dc0), {"W": dW, "R": dR, "b": db}, cache, dgates, dgates,
                   per_step)


# ----------------------------------------------------------------------------
# GRU


def gru_forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    W: np.ndarray,
    R: np.ndarray,
    b: np.ndarray,
    b_hn: np.ndarray,
    lengths: np.ndarray | None = None,
    training: bool = True,
    variant: str | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, Cache | None]:
    """GRU over a whole sequence; see ``numpy_ref.gru_forward``.

    x: (T, B, I)   h0: (B, H) or None   W: (I, 3H)   R: (H, 3H)   b: (3H,)   b_hn: (H,)
    Returns y: (T, B, H), hT: (B, H), cache (None unless training).
    """
    d, lengths = check_forward("gru", x, h0, None, W, R, b, b_hn, lengths=lengths)
    keep = check_training(training)
    plan = choose(variant, threads, d.B, d.H, 3, d.I, d.dtype.itemsize, d.T)
    lens = _lengths(lengths, d)
    h0 = _zeros_or(h0, (d.B, d.H), d.dtype)
    if plan.name == "batch-inner":
        y, hT, buf = batch_inner.gru_forward(x, h0, W, R, b, b_hn, lens, keep)
        return y, hT, _cache(keep, cell="gru", dims=d, x=x, W=W, R=R, buf=buf,
                             lengths=lens, variant=plan.name, threads=1)
    if plan.name == "lone-row":
        y, h, gates, hn, hT = lone_row.gru_forward(x, h0, W, R, b, b_hn, lens, _in_step(d),
                                                   keep)
    else:
        blas = _blas_threads(d, plan, 3)
        y, h, gates, hn, hT = _call(blas, gru.gru_forward, x, h0, W, R, b, b_hn, lens,
                                    plan.fused, plan.packed or None, _par(plan.chunks),
                                    plan.stepped or None, _projection_chunks(blas, d, 3, threads),
                                    keep)
    return y, hT, _cache(keep, cell="gru", dims=d, x=x, W=W, R=R, h=h, gates=gates,
                         hn=hn, lengths=lens, variant=plan.name,
                         threads=plan.chunks)


def gru_backward(
    dy: np.ndarray | None, dhT: np.ndarray | None, cache: Cache, per_step: bool = False,
    variant: str | None = None,
    threads: int | None = None,
) -> tuple:
    """BPTT for ``gru_forward``.

    dy: (T, B, H) or None   dhT: (B, H) or None
    Returns dx: (T, B, I), dh0: (B, H), grads {W, R, b, b_hn} (+ steps).
    """
    d: Dims = cache["dims"]
    check_backward(d, dy=dy, dhT=dhT)
    plan = choose(variant, threads, d.B, d.H, 3, d.I, d.dtype.itemsize, d.T)
    dy, dhT = _zeros_or(dy, (d.T, d.B, d.H), d.dtype), _zeros_or(dhT, (d.B, d.H), d.dtype)
    if _batch_backward(cache, plan, per_step):
        dx, dh0, dW, dR, db, db_hn = batch_inner.gru_backward(
            dy, dhT, cache["x"], cache["W"], cache["R"], cache["buf"], cache["lengths"])
        return dx, dh0, {"W": dW, "R": dR, "b": db, "b_hn": db_hn}
    _rows_layout(cache)
    blas = _blas_threads(d, plan, 3)
    dh0, db_hn, dgx, dgh = _call(
        blas, gru.gru_backward, dy, dhT, cache["R"], cache["h"], cache["gates"], cache["hn"],
        cache["lengths"], plan.fused, plan.packed or None, _par(plan.chunks))
    dx, dW, dR, db = _weight_grads(blas, cache, dgx, dgh, threads)
    grads = {"W": dW, "R": dR, "b": db, "b_hn": db_hn}
    return _finish(dx, dh0, grads, cache, dgx, dgh, per_step)


# ----------------------------------------------------------------------------
# Dense


def _dense_plan(macs: int) -> tuple[int, int | None]:
    """(SciPy BLAS threads, row blocks) of a Dense pass of ``macs`` multiply-adds, by the
    rule of a cell's products over all steps (``_gemm_chunks``)."""
    blas = 1 if macs >= SMALL_MACS else 0
    return blas, _gemm_chunks(blas, macs, None)


def dense_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, activation: str | None = None,
                  lengths: np.ndarray | None = None, training: bool = True
                  ) -> tuple[np.ndarray, Cache | None]:
    """Dense at every step; see ``numpy_ref.dense_forward`` (the layer validates).

    x: (T, B, I)   W: (I, O)   b: (O,)   lengths: (B,) or None -> y: (T, B, O), cache.
    """
    T, B, I = x.shape
    O = W.shape[1]
    x = np.ascontiguousarray(x)
    lens = _lengths(lengths, Dims(T, B, I, O, x.dtype, np))
    macs = T * B * I * O
    blas, chunks = _dense_plan(macs)
    # the micro-kernel where the columns are whole panels, else BLAS (``_simd.product``)
    whole = O % (2 * VECTOR_BYTES // x.itemsize) == 0
    PW = pack_serial(W) if whole and _packed(macs) else None
    act = dense.ACTIVATIONS[activation]
    y = _call(blas, dense.dense_forward, x, W, PW, np.ascontiguousarray(b), act, lens, chunks)
    return y, _cache(training, x=x, W=W, y=y, activation=act, lengths=lens)


def dense_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, dict]:
    """dy: (T, B, O) -> dx: (T, B, I), grads {W, b}; see ``numpy_ref.dense_backward``."""
    x, W = cache["x"], cache["W"]
    T, B, I = x.shape
    blas, chunks = _dense_plan(2 * T * B * I * W.shape[1])
    dx, dW, db = _call(blas, dense.dense_backward, np.ascontiguousarray(dy), x, W, cache["y"],
                       cache["activation"], cache["lengths"], chunks,
                       _packed(T * B * I * W.shape[1]))
    return dx, {"W": dW, "b": db}
