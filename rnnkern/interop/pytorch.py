"""Conversion of single layers between rnnkern and ``torch.nn`` (see the package doc)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layers import GRU, LSTM, RNN, Dense, Layer

_DTYPES = {"float32": np.float32, "float64": np.float64}


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError("rnnkern.interop needs PyTorch: pip install 'rnnkern[compare]'") from e
    return torch


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def from_torch(module: Any, backend: str | None = None) -> Layer:
    """An rnnkern layer with the weights (and dtype) of a torch RNN/LSTM/GRU/Linear."""
    torch = _torch()
    nn = torch.nn
    if isinstance(module, nn.Linear):
        dtype = str(module.weight.dtype).removeprefix("torch.")
        layer = Dense(module.in_features, module.out_features, backend=backend,
                      dtype=_check_dtype(dtype))
        b = _np(module.bias) if module.bias is not None else np.zeros(module.out_features)
        layer.load_parameters({"W": _np(module.weight).T.copy(),
                               "b": b.astype(layer.dtype)})
        return layer
    if not isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        raise TypeError(f"module: expected torch.nn.RNN, LSTM, GRU or Linear, "
                         f"got {type(module).__name__}")
    if module.num_layers != 1 or module.bidirectional or module.batch_first:
        raise ValueError(f"module: only one layer, unidirectional, batch_first=False is "
                         f"supported; got num_layers={module.num_layers}, bidirectional="
                         f"{module.bidirectional}, batch_first={module.batch_first}")
    if isinstance(module, nn.LSTM) and module.proj_size:
        raise ValueError(f"module: LSTM with proj_size={module.proj_size} is not supported")
    dtype = _check_dtype(str(module.weight_ih_l0.dtype).removeprefix("torch."))
    I, H = module.input_size, module.hidden_size  # noqa: E741
    if isinstance(module, nn.RNN):
        layer: Layer = RNN(I, H, activation=module.nonlinearity, backend=backend, dtype=dtype)
    else:
        layer = (LSTM if isinstance(module, nn.LSTM) else GRU)(I, H, backend=backend,
                                                                dtype=dtype)
    G = module.weight_ih_l0.shape[0]
    if module.bias:
        b_ih, b_hh = _np(module.bias_ih_l0), _np(module.bias_hh_l0)
    else:
        b_ih = b_hh = np.zeros(G, dtype)
    params = {"W": _np(module.weight_ih_l0).T.copy(), "R": _np(module.weight_hh_l0).T.copy()}
    if isinstance(module, nn.GRU):  # bias_hh's n part sits inside r * (...)
        params["b"] = np.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]])
        params["b_hn"] = b_hh[2 * H :].copy()
    else:
        params["b"] = b_ih + b_hh
    layer.load_parameters(params)
    return layer


def _check_dtype(dtype: str) -> str:
    if dtype not in _DTYPES:
        raise ValueError(f"module: expected float32 or float64 parameters, got {dtype}")
    return dtype


def to_torch(layer: Layer) -> Any:
    """A torch module (CPU, the layer's dtype) with the layer's weights.

    PyTorch's ``bias_hh`` gets zeros (GRU: except its n part, ``b_hn``), so that
    ``bias_ih + bias_hh`` is rnnkern's ``b``. RNN(activation="identity") has no
    PyTorch counterpart and raises ValueError.
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(layer, (RNN, LSTM, GRU, Dense)):
        raise TypeError(f"layer: expected an RNN, LSTM, GRU or Dense layer, "
                        f"got {type(layer).__name__}")
    p = {k: np.asarray(v.get() if hasattr(v, "get") else v) for k, v in
         layer.parameters().items()}
    dtype = getattr(torch, str(layer.dtype))

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a))

    if isinstance(layer, Dense):
        if layer.activation is not None:
            raise ValueError(f"layer: torch.nn.Linear has no activation; got Dense with "
                             f"activation={layer.activation!r}")
        mod = nn.Linear(layer.in_features, layer.out_features, dtype=dtype)
        with torch.no_grad():
            mod.weight.copy_(t(p["W"].T))
            mod.bias.copy_(t(p["b"]))
        return mod
    if isinstance(layer, RNN):
        if layer.activation == "identity":
            raise ValueError("layer: RNN(activation='identity') has no torch.nn.RNN "
                             "counterpart (nonlinearity is 'tanh' or 'relu')")
        mod = nn.RNN(layer.in_features, layer.hidden, nonlinearity=layer.activation,
                     dtype=dtype)
    else:
        mod = (nn.LSTM if isinstance(layer, LSTM) else nn.GRU)(layer.in_features,
                                                              layer.hidden, dtype=dtype)
    H = layer.hidden
    b_hh = np.zeros_like(p["b"])
    if isinstance(layer, GRU):
        b_hh[2 * H :] = p["b_hn"]
    with torch.no_grad():
        mod.weight_ih_l0.copy_(t(p["W"].T))
        mod.weight_hh_l0.copy_(t(p["R"].T))
        mod.bias_ih_l0.copy_(t(p["b"]))
        mod.bias_hh_l0.copy_(t(b_hh))
    return mod
