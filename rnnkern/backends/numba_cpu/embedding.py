"""Embedding lookup and its backward as compiled loops.

The forward gathers one row of ``W`` per id; the backward adds each row of ``dy``
into the row of ``dW`` its id names. Both run on one thread: the gather is a copy
(memory-bound; a parallel loop's start-up costs more than the copy at the sizes of a
batch), and in the backward ids repeat (a character model sees the same ids
thousands of times per batch), so rows of a parallel loop would race on one row.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import JIT


@njit(**JIT)
def _gather(ids, W, out):
    """ids: (N,) int64, W: (V, D), out: (N, D): out[n] = W[ids[n]]."""
    D = W.shape[1]
    for n in range(ids.shape[0]):
        row = ids[n]
        for d in range(D):
            out[n, d] = W[row, d]


@njit(**JIT)
def _scatter_add(ids, dy, dW):
    """ids: (N,) int64, dy: (N, D), dW: (V, D) zeroed: dW[ids[n]] += dy[n]."""
    D = dy.shape[1]
    for n in range(ids.shape[0]):
        row = ids[n]
        for d in range(D):
            dW[row, d] += dy[n, d]


def embedding_forward(ids: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ids: (T, B) int, each in [0, V) (validated by the layer)   W: (V, D) -> y: (T, B, D)."""
    T, B = ids.shape
    out = np.empty((T * B, W.shape[1]), W.dtype)
    _gather(np.ascontiguousarray(ids, np.int64).reshape(-1), np.ascontiguousarray(W), out)
    return out.reshape(T, B, W.shape[1])


def embedding_backward(dy: np.ndarray, ids: np.ndarray, num_embeddings: int) -> np.ndarray:
    """dy: (T, B, D), ids: (T, B) -> dW: (V, D), the rows of dy summed per id."""
    D = dy.shape[2]
    dW = np.zeros((num_embeddings, D), dy.dtype)
    _scatter_add(np.ascontiguousarray(ids, np.int64).reshape(-1),
                 np.ascontiguousarray(dy).reshape(-1, D), dW)
    return dW
