"""The Dense layer, y = act(x @ W + b) at every step, and its backward, mirroring
``numpy_ref.dense_forward`` / ``dense_backward``.

All steps' rows at once, N = T * B, split into row blocks, one per Numba thread: a block
makes its rows' product (``_simd.product``: on the micro-kernel where the output columns
are whole panels, else single-threaded BLAS) and then adds the bias, applies the activation
(``cells.activate``, the RNN's too) and zeroes the padding steps of those rows while they
are in cache, rather than NumPy's products held to one thread beside Numba's pool
(benchmarks/README.md, "Design notes", the trainer's own products). The backward makes the
pre-activation gradient dz the same way and hands it to ``_simd.weight_grads`` without a
recurrent part (dx, dW, db); dW and db are summed block by block in order, so their last
bits follow the thread count, as a cell's weight gradients do.
"""

from __future__ import annotations

from numba import njit, prange

from ._jit import JIT
from ._memory import empty
from ._simd import product, product_work, weight_grads
from ._vec import lanes, vload_upto, vstore_upto
from .cells import IDENTITY, RELU, SIGMOID, TANH, activate, activation_grad

#: the activation argument of the kernels (``layers.Dense``'s names), codes of ``cells``
ACTIVATIONS = {None: IDENTITY, "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID}


@njit(**JIT)
def _activate_rows(y, b, act, lengths, B, lo, hi):
    """y[n] = act(y[n] + b) for rows lo <= n < hi of y: (T*B, O), zero on padding steps
    (row n is step n // B of batch row n % B)."""
    O, L = y.shape[1], lanes(y)
    for n in range(lo, hi):
        yn = y[n]
        if n // B >= lengths[n % B]:
            yn[:] = 0
            continue
        for j in range(0, O, L):  # a vector of units at a time; m of them in the last
            m = O - j
            vstore_upto(yn, j, activate(vload_upto(yn, j, m) + vload_upto(b, j, m), act), m)


@njit(**JIT)
def _forward_rows(x2, W, PW, b, act, lengths, B, y2, work, lo, hi):
    product(x2, W, PW, y2, lo, hi, False, work)
    _activate_rows(y2, b, act, lengths, B, lo, hi)


@njit(parallel=True, **JIT)
def _forward_parallel(chunks, x2, W, PW, b, act, lengths, B, y2, work):
    N = x2.shape[0]
    for i in prange(chunks):
        _forward_rows(x2, W, PW, b, act, lengths, B, y2, work, i * N // chunks,
                      (i + 1) * N // chunks)


@njit(**JIT)
def dense_forward(x, W, PW, b, act, lengths, chunks):
    """x: (T, B, I) C-contiguous   W: (I, O)   PW: W packed (``_simd.pack_serial``) where O is
    whole panels, else None (BLAS)   b: (O,)   act: a code of ``ACTIVATIONS``
    lengths: (B,)   chunks: row blocks of the T*B rows (None: one, serial).
    Returns y: (T, B, O)."""
    T, B, I = x.shape
    O = W.shape[1]
    N = T * B
    y = empty((T, B, O), x)
    x2, y2 = x.reshape(N, I), y.reshape(N, O)
    work = product_work(N, I, O, x, True)
    if chunks is None:
        _forward_rows(x2, W, PW, b, act, lengths, B, y2, work, 0, N)
    else:
        _forward_parallel(chunks, x2, W, PW, b, act, lengths, B, y2, work)
    return y


@njit(**JIT)
def _grad_rows(dy, y, act, lengths, B, dz, lo, hi):
    """dz[n] = dy[n] * act'(z[n]), written with the output y = act(z), for rows
    lo <= n < hi of (T*B, O); zero on padding steps."""
    O, L = y.shape[1], lanes(y)
    for n in range(lo, hi):
        dyn, yn, dzn = dy[n], y[n], dz[n]
        if n // B >= lengths[n % B]:
            dzn[:] = 0
            continue
        for j in range(0, O, L):
            m = O - j
            vstore_upto(dzn, j, activation_grad(vload_upto(dyn, j, m), vload_upto(yn, j, m),
                                                act), m)


@njit(parallel=True, **JIT)
def _grad_parallel(chunks, dy, y, act, lengths, B, dz):
    N = y.shape[0]
    for i in prange(chunks):
        _grad_rows(dy, y, act, lengths, B, dz, i * N // chunks, (i + 1) * N // chunks)


@njit(**JIT)
def dense_backward(dy, x, W, y, act, lengths, chunks, packed):
    """dy: (T, B, O) C-contiguous   x, W, y, act, lengths, chunks: as ``dense_forward``
    took and returned them   packed: True or None, ``_simd.weight_grads``'s.
    Returns dx: (T, B, I), dW: (I, O), db: (O,)."""
    T, B, O = dy.shape
    N = T * B
    dz = empty((T, B, O), dy)
    dy2, y2, dz2 = dy.reshape(N, O), y.reshape(N, O), dz.reshape(N, O)
    if chunks is None:
        _grad_rows(dy2, y2, act, lengths, B, dz2, 0, N)
    else:
        _grad_parallel(chunks, dy2, y2, act, lengths, B, dz2)
    dx, dW, _, db = weight_grads(x, W, None, dz, None, chunks, packed)
    return dx, dW, db
