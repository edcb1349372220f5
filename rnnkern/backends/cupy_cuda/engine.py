"""The time loops of the CuPy backend, shared by the three cells.

``forward`` and ``backward`` run one cell over a whole sequence with the chosen variant:

- "cublas-steps": the input projection ``x @ W + b`` for all steps as one GEMM before the
  loop; per step ``h[t] @ R`` into a preallocated buffer (cuBLAS) and one fused pointwise
  kernel; backward per step one pointwise kernel and ``dh += dgh[t] @ R.T`` (cuBLAS, beta=1).
- "fused-steps": per step one kernel of the project's own that does the recurrent product
  and the pointwise step together (fused.cu), the step loop captured in a CUDA graph
  (``_graphed``) and replayed. Nothing inside the captured loop calls cuBLAS: CuPy refuses
  cuBLAS calls while a stream captures.
- "persistent": the same loop inside one cooperative launch (persistent.cu).

All variants read and write the same arrays, so a cache made by any one serves the
backward of any other. Weight gradients are GEMMs over the gate gradients of all steps.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..._validate import ACTIVATION_CODES, GATES, Dims
from ..numpy_ref import param_grads
from . import loader
from .variants import DeviceLimits, PersistentPlan, choose_variant

#: threads per block of the pointwise kernels of "cublas-steps"
CUBLAS_THREADS = 256
#: threads per block of the "fused-steps" kernels, at most (one thread per hidden unit)
FUSED_THREADS = 128
#: cache key of the post-activation gates and of the per-step auxiliary array, per cell
#: (the names numpy_ref uses)
GATES_KEY = {"rnn": "a", "lstm": "gates", "gru": "gates"}
AUX_KEY = {"lstm": "tanh_c", "gru": "hn"}
_NULL = np.uint64(0)  # a null pointer kernel argument


def _ptr(a: Any) -> Any:
    return _NULL if a is None else a


@functools.cache
def device_limits(device_id: int) -> DeviceLimits:
    """The numbers ``choose_variant`` needs, read once per device."""
    import cupy

    attrs = cupy.cuda.Device(device_id).attributes
    return DeviceLimits(sm_count=attrs["MultiProcessorCount"],
                        smem_per_block=attrs["MaxSharedMemoryPerBlockOptin"],
                        cooperative=bool(attrs["CooperativeLaunch"]))


def pick(cell: str, d: Dims, direction: str, variant: str | None) -> tuple[str, Any]:
    """(variant, plan) for this call on the current device."""
    limits = device_limits(d.xp.cuda.Device().id)
    return choose_variant(cell, d.B, d.H, d.dtype.itemsize, limits, direction, variant)


def _launch_persistent(name: str, cell: str, d: Dims, plan: PersistentPlan, args: tuple) -> None:
    from cupy.cuda import driver

    k = loader.kernel(name, d.dtype, cell)
    if plan.smem_bytes > k.max_dynamic_shared_size_bytes:  # opt in beyond 48 KB
        k.max_dynamic_shared_size_bytes = plan.smem_bytes
    # The grid barrier spins, so every block must be resident: the launch is cooperative.
    # CuPy shrinks a cooperative grid that does not fit (with only a warning), which here
    # would leave hidden units uncomputed, so refuse instead.
    per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(
        k.kernel.ptr, loader.PERSISTENT_THREADS, plan.smem_bytes)
    resident = per_sm * device_limits(d.xp.cuda.Device().id).sm_count
    if plan.blocks > resident:
        raise RuntimeError(f"persistent: {plan.blocks} blocks of {plan.smem_bytes} bytes of "
                           f"shared memory cannot all be resident (at most {resident}); "
                           "use 'cublas-steps'")
    barrier = d.xp.zeros(2, dtype=np.uint32)
    i32 = np.int32
    k.kernel((plan.blocks,), (loader.PERSISTENT_THREADS,),
             args + (i32(plan.HS), i32(plan.BB), i32(plan.KS), barrier),
             shared_mem=plan.smem_bytes, enable_cooperative_groups=True)


#: captured step loops of "fused-steps", least recently used first: (loop, sizes, pointers) -> Graph
_GRAPHS: OrderedDict[tuple, Any] = OrderedDict()
#: how many captured loops are kept
GRAPH_CACHE_SIZE = 16


@functools.cache
def _capture_stream(device_id: int) -> Any:
    """A stream to capture on (the legacy default stream cannot be captured)."""
    import cupy

    return cupy.cuda.Stream(non_blocking=True)


def _graphed(key: tuple, issue: Callable[[], None]) -> None:
    """Run ``issue()`` (which enqueues launches) as a CUDA graph on the current stream.

    The graph of ``key`` is replayed if one was captured, else ``issue`` is captured (which
    costs about one uncaptured run) and the least recently used graph evicted.
    """
    import cupy

    graph = _GRAPHS.pop(key, None)
    if graph is None:
        cap = _capture_stream(cupy.cuda.Device().id)
        with cap:
            cap.begin_capture()
            try:
                issue()
            finally:
                graph = cap.end_capture()
    _GRAPHS[key] = graph
    while len(_GRAPHS) > GRAPH_CACHE_SIZE:
        _GRAPHS.popitem(last=False)
    graph.launch()


def cublas_forward_steps(cell: str, d: Dims, act: int, R: Any, gx: Any, gh: Any, b_hn: Any,
                         h: Any, c: Any, gates: Any, aux: Any, y: Any, lens: Any) -> None:
    """The forward time loop of "cublas-steps": per step ``gh = h[t] @ R`` (cuBLAS), then the
    pointwise kernel.

    gh: (B, G*H) scratch; the other arrays as in the cache (``forward``); b_hn, c, aux,
    lens may be None.
    """
    from cupy import cublas

    k = loader.kernel("cublas_forward_step", d.dtype, cell)
    grid = (math.ceil(d.B * d.H / CUBLAS_THREADS),)
    head = (gx, gh, _ptr(b_hn), h, _ptr(c), gates, _ptr(aux), y, _ptr(lens))
    tail = (np.int32(d.B), np.int32(d.H), np.int32(act))
    for t in range(d.T):
        cublas.gemm("N", "N", h[t], R, out=gh)
        k(grid, (CUBLAS_THREADS,), head + (np.int32(t),) + tail)


def cublas_backward_steps(cell: str, d: Dims, act: int, R: Any, gates: Any, aux: Any, h: Any,
                          c: Any, dy: Any, dh: Any, dc: Any, dgx: Any, dgh: Any,
                          lens: Any) -> None:
    """The backward time loop of "cublas-steps": per step the pointwise kernel, then
    ``dh += dgh[t] @ R.T``.

    dh, dc: (B, H) in: gradients w.r.t. the final state; out: w.r.t. the initial state.
    """
    from cupy import cublas

    k = loader.kernel("cublas_backward_step", d.dtype, cell)
    grid = (math.ceil(d.B * d.H / CUBLAS_THREADS),)
    head = (gates, _ptr(aux), h, _ptr(c), _ptr(dy), dh, _ptr(dc), dgx, dgh, _ptr(lens))
    tail = (np.int32(d.B), np.int32(d.H), np.int32(act))
    for t in reversed(range(d.T)):
        k(grid, (CUBLAS_THREADS,), head + (np.int32(t),) + tail)
        cublas.gemm("N", "T", dgh[t], R, out=dh, beta=1.0)


def fused_launch_shape(d: Dims) -> tuple[tuple[int, int], tuple[int]]:
    """(grid, block) of the "fused-steps" kernels: a thread per hidden unit, FUSED_ROWS rows
    per block."""
    threads = min(FUSED_THREADS, 32 * math.ceil(d.H / 32))
    return (math.ceil(d.H / threads), math.ceil(d.B / loader.FUSED_ROWS)), (threads,)


def fused_forward_steps(cell: str, d: Dims, act: int, R: Any, gx: Any, b_hn: Any, h: Any, c: Any,
                        gates: Any, aux: Any, y: Any, lens: Any) -> None:
    """The forward time loop of "fused-steps": one fused kernel per step (``h[t] @ R`` and the
    pointwise step).

    The arrays as in the cache (``forward``); b_hn, c, aux, lens may be None.
    """
    k = loader.kernel(STEP_KERNELS[fused_forward_steps], d.dtype, cell)
    grid, block = fused_launch_shape(d)
    head = (R, gx, _ptr(b_hn), h, _ptr(c), gates, _ptr(aux), y, _ptr(lens))
    tail = (np.int32(d.B), np.int32(d.H), np.int32(act))
    for t in range(d.T):
        k(grid, block, head + (np.int32(t),) + tail)


def fused_backward_steps(cell: str, d: Dims, act: int, RT: Any, gates: Any, aux: Any, h: Any,
                         c: Any, dy: Any, dh: Any, dc: Any, dgx: Any, dgh: Any,
                         lens: Any) -> None:
    """The backward time loop of "fused-steps": launch t adds ``dgh[t+1] @ R.T`` into dh, then
    runs step t's pointwise backward; a last launch (t = -1) adds ``dgh[0] @ R.T``.

    RT: (G*H, H) C-contiguous copy of R.T; dh, dc as in ``cublas_backward_steps``.
    """
    k = loader.kernel(STEP_KERNELS[fused_backward_steps], d.dtype, cell)
    grid, block = fused_launch_shape(d)
    head = (RT, gates, _ptr(aux), h, _ptr(c), _ptr(dy), dh, _ptr(dc), dgx, dgh, _ptr(lens))
    tail = (np.int32(d.T), np.int32(d.B), np.int32(d.H), np.int32(act))
    for t in range(d.T - 1, -2, -1):
        k(grid, block, head + (np.int32(t),) + tail)


#: the kernel each captured loop launches (loaded before capturing)
STEP_KERNELS = {fused_forward_steps: "fused_forward_step",
                fused_backward_steps: "fused_backward_step"}


def run_graphed(loop: Callable[..., None], cell: str, d: Dims, act: int, *arrays: Any) -> None:
    """``loop(cell, d, act, *arrays)`` through a CUDA graph ("fused-steps").

    A graph bakes in every pointer and scalar of its launches, so it is keyed by the loop,
    the sizes, and the address of each array, and replayed only for a call whose buffers sit
    at exactly those addresses. CuPy's memory pool hands the same blocks back to a training
    loop's repeated calls, so those mostly replay.
    """
    # compile and load the step kernel before capturing: loading a module is no stream work
    loader.kernel(STEP_KERNELS[loop], d.dtype, cell)
    key = (loop, cell, d.dtype.char, d.T, d.B, d.H, act) + tuple(
        0 if a is None else a.data.ptr for a in arrays)
    _graphed(key, lambda: loop(cell, d, act, *arrays))


def forward(cell: str, d: Dims, lengths: Any, x: Any, h0: Any, c0: Any, W: Any, R: Any,
            b: Any, b_hn: Any = None, activation: str = "tanh",
            variant: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Run ``cell`` forward over x: (T, B, I); returns y: (T, B, H) and the cache.

    The cache holds h: (T+1, B, H) (h[t] enters step t), the post-activation gates
    (T, B, G*H) under numpy_ref's key, LSTM c: (T+1, B, H) and tanh_c: (T, B, H),
    GRU hn: (T, B, H), and lengths as int32 (or None).
    """
    cp = d.xp
    T, B, I, H = d.T, d.B, d.I, d.H
    GH = GATES[cell] * H
    chosen, plan = pick(cell, d, "forward", variant)
    gx = cp.matmul(x.reshape(T * B, I), W).reshape(T, B, GH)
    gx += b
    h = cp.empty((T + 1, B, H), d.dtype)
    h[0] = 0 if h0 is None else h0
    c = None
    if cell == "lstm":
        c = cp.empty((T + 1, B, H), d.dtype)
        c[0] = 0 if c0 is None else c0
    gates = cp.empty((T, B, GH), d.dtype)
    aux = cp.empty((T, B, H), d.dtype) if cell in AUX_KEY else None
    y = cp.empty((T, B, H), d.dtype)
    lens = None if lengths is None else cp.ascontiguousarray(lengths, dtype=np.int32)
    act = ACTIVATION_CODES[activation]
    i32 = np.int32
    if chosen == "cublas-steps":
        cublas_forward_steps(cell, d, act, R, gx, cp.empty((B, GH), d.dtype), b_hn, h, c, gates,
                             aux, y, lens)
    elif chosen == "fused-steps":
        run_graphed(fused_forward_steps, cell, d, act, R, gx, b_hn, h, c, gates, aux, y, lens)
    else:
        _launch_persistent("persistent_forward", cell, d, plan,
                           (R, gx, _ptr(b_hn), h, _ptr(c), gates, _ptr(aux), y, _ptr(lens),
                            i32(T), i32(B), i32(H), i32(act)))
    cache = {"cell": cell, "dims": d, "activation": activation, "x": x, "W": W, "R": R,
             "h": h, GATES_KEY[cell]: gates, "lengths": lens}
    if c is not None:
        cache["c"] = c
    if aux is not None:
        cache[AUX_KEY[cell]] = aux
    return y, cache


def backward(cache: dict[str, Any], dy: Any, dhT: Any, dcT: Any, per_step: bool,
             variant: str | None = None) -> tuple[Any, Any, Any, dict, dict | None]:
    """BPTT over a forward's cache.

    dy: (T, B, H) or None   dhT, dcT: (B, H) or None (dcT: LSTM only)
    Returns dx: (T, B, I), dh0: (B, H), dc0: (B, H) (LSTM, else None), grads, steps
    (steps is None unless per_step).
    """
    cell, d = cache["cell"], cache["dims"]
    cp = d.xp
    T, B, I, H = d.T, d.B, d.I, d.H
    GH = GATES[cell] * H
    chosen, plan = pick(cell, d, "backward", variant)
    x, W, R, h = cache["x"], cache["W"], cache["R"], cache["h"]
    gates, aux, c = cache[GATES_KEY[cell]], cache.get(AUX_KEY.get(cell)), cache.get("c")
    dh = cp.zeros((B, H), d.dtype) if dhT is None else dhT.copy()
    dc = None
    if cell == "lstm":
        dc = cp.zeros((B, H), d.dtype) if dcT is None else dcT.copy()
    dgx = cp.empty((T, B, GH), d.dtype)
    # only the GRU candidate's recurrent part differs (r multiplies it); others share dgx
    dgh = cp.empty((T, B, GH), d.dtype) if cell == "gru" else dgx
    act = ACTIVATION_CODES[cache["activation"]]
    lens = cache["lengths"]
    i32 = np.int32
    if chosen == "cublas-steps":
        cublas_backward_steps(cell, d, act, R, gates, aux, h, c, dy, dh, dc, dgx, dgh, lens)
    elif chosen == "fused-steps":
        run_graphed(fused_backward_steps, cell, d, act, cp.ascontiguousarray(R.T), gates, aux, h,
                    c, dy, dh, dc, dgx, dgh, lens)
    else:
        head = (gates, _ptr(aux), h, _ptr(c), _ptr(dy), dh, _ptr(dc), dgx, dgh, _ptr(lens))
        _launch_persistent("persistent_backward", cell, d, plan,
                           (R,) + head + (i32(T), i32(B), i32(H), i32(act)))
    dx = cp.matmul(dgx.reshape(T * B, GH), W.T).reshape(T, B, I)
    grads, steps = param_grads(x, h[:-1], dgx, dgh, per_step, cp)
    if cell == "gru":
        grads["b_hn"] = dgh[:, :, 2 * H:].sum(axis=(0, 1))
        if steps is not None:
            steps["b_hn"] = dgh[:, :, 2 * H:].sum(axis=1)
    return dx, dh, dc, grads, steps
