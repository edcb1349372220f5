"""Embedding lookup on the GPU: a gather by fancy indexing, the backward a scatter-add
(``cupyx.scatter_add``, atomic adds: ids repeat). Mirrors numpy_ref."""

from __future__ import annotations

from typing import Any


def embedding_forward(ids: Any, W: Any) -> Any:
    """ids: (T, B) int on the device, each in [0, V) (validated by the layer)
    W: (V, D) -> y: (T, B, D)."""
    return W[ids]


def embedding_backward(dy: Any, ids: Any, num_embeddings: int) -> Any:
    """dy: (T, B, D), ids: (T, B) -> dW: (V, D), the rows of dy summed per id."""
    import cupy
    import cupyx

    D = dy.shape[2]
    dW = cupy.zeros((num_embeddings, D), dy.dtype)
    cupyx.scatter_add(dW, ids.reshape(-1), dy.reshape(-1, D))
    return dW
