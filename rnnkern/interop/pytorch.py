"""Conversion of layers and whole models between rnnkern and ``torch.nn`` (see the package
doc for what maps to what)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import PARAMS
from ..layers import (
    GRU,
    LSTM,
    RNN,
    Bidirectional,
    Dense,
    Dropout,
    Embedding,
    Layer,
    Sequential,
    _Cell,
)

_DTYPES = ("float32", "float64")
#: torch's activation modules after a Linear <-> Dense(activation=...)
_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError("rnnkern.interop needs PyTorch: pip install 'rnnkern[compare]'") from e
    return torch


def _outputs_class() -> type:
    """``modules.Outputs`` (imported here: it imports torch)."""
    _torch()
    from .modules import Outputs

    return Outputs


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def _dtype(t: Any, name: str = "module") -> str:
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise ValueError(f"{name}: expected float32 or float64 parameters, got {dtype}")
    return dtype


def from_torch(module: Any, backend: str | None = None) -> Layer:
    """The rnnkern layer (or Sequential) with the weights and dtype of a torch module.

    module: ``nn.RNN`` (tanh/relu), ``nn.LSTM``, ``nn.GRU`` (any ``num_layers``,
    ``bidirectional``, inter-layer ``dropout``, ``bias=False``, ``batch_first``;
    LSTM without ``proj_size``), ``nn.Linear``, ``nn.Embedding``, ``nn.Dropout``, or an
    ``nn.Sequential`` of these, where a ``nn.ReLU``/``Tanh``/``Sigmoid`` after a Linear
    becomes that Dense layer's activation. rnnkern is time-major: a ``batch_first=True``
    module becomes its time-major equivalent (the same layer; pass it (T, B, F) data,
    e.g. ``rk.data.from_batch_first(x)``). ``bias=False`` gives zero biases, which
    rnnkern trains like any other parameter.
    """
    nn = _torch().nn
    if isinstance(module, nn.Sequential):
        layers = _from_sequence(_flat(module), backend)
        if len(layers) == 1:  # to_torch's Dense with an activation: (Linear, Tanh)
            return layers[0]
        dtypes = {str(la.dtype) for la in layers if not isinstance(la, Dropout)}
        if len(dtypes) > 1:
            raise ValueError(f"module: mixed parameter dtypes {sorted(dtypes)}")
        return Sequential(*layers, dtype=dtypes.pop() if dtypes else None)
    if isinstance(module, _outputs_class()):
        return from_torch(module.module, backend)
    if isinstance(module, nn.Linear):
        layer = Dense(module.in_features, module.out_features, backend=backend,
                      dtype=_dtype(module.weight))
        b = _np(module.bias) if module.bias is not None else np.zeros(module.out_features)
        layer.load_parameters({"W": _np(module.weight).T.copy(), "b": b.astype(layer.dtype)})
        return layer
    if isinstance(module, nn.Embedding):
        for name, default in (("padding_idx", None), ("max_norm", None),
                              ("scale_grad_by_freq", False), ("sparse", False)):
            if getattr(module, name) != default:
                raise ValueError(f"module: Embedding with {name}={getattr(module, name)!r} "
                                 f"has no rnnkern counterpart (expected {default!r})")
        layer = Embedding(module.num_embeddings, module.embedding_dim, backend=backend,
                          dtype=_dtype(module.weight))
        layer.load_parameters({"W": _np(module.weight).copy()})
        return layer
    if isinstance(module, nn.Dropout):
        return Dropout(module.p, backend=backend)
    if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        return _from_recurrent(module, backend)
    raise TypeError(f"module: expected torch.nn.RNN, LSTM, GRU, Linear, Embedding, Dropout "
                    f"or a Sequential of these, got {type(module).__name__}")


def _flat(module: Any) -> list[Any]:
    """The modules of an ``nn.Sequential``, nested Sequentials spliced in."""
    nn = _torch().nn
    return [m for sub in module for m in (_flat(sub) if isinstance(sub, nn.Sequential)
                                          else [sub])]


def _from_sequence(modules: list[Any], backend: str | None) -> list[Layer]:
    nn = _torch().nn
    layers: list[Layer] = []
    for i, m in enumerate(modules):
        act = _ACTIVATIONS.get(type(m).__name__)
        if act is not None:
            last = layers[-1] if layers else None
            if not isinstance(last, Dense) or last.activation is not None:
                raise ValueError(f"module[{i}]: a {type(m).__name__} converts only as the "
                                 f"activation of the Linear just before it")
            last.activation = act
        elif isinstance(m, nn.Identity):
            continue
        else:
            try:
                layers.append(from_torch(m, backend))
            except (TypeError, ValueError) as e:
                raise type(e)(f"module[{i}]: {e}") from None
    if not layers:
        raise ValueError("module: an empty Sequential has no rnnkern counterpart")
    return layers


def _torch_names(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def _from_recurrent(module: Any, backend: str | None) -> _Cell:
    nn = _torch().nn
    if isinstance(module, nn.LSTM) and module.proj_size:
        raise ValueError(f"module: LSTM with proj_size={module.proj_size} has no rnnkern "
                         f"counterpart (expected proj_size=0)")
    dtype = _dtype(module.weight_ih_l0)
    kwargs = {"num_layers": module.num_layers, "dropout": float(module.dropout),
              "bidirectional": module.bidirectional, "backend": backend, "dtype": dtype}
    I, H = module.input_size, module.hidden_size  # noqa: E741
    if isinstance(module, nn.RNN):
        layer: _Cell = RNN(I, H, activation=module.nonlinearity, **kwargs)
    else:
        layer = (LSTM if isinstance(module, nn.LSTM) else GRU)(I, H, **kwargs)
    params = {}
    for n, d, sfx in layer._units():
        t = _torch_names(n, d)
        G = getattr(module, "weight_ih" + t).shape[0]
        if module.bias:
            b_ih, b_hh = _np(getattr(module, "bias_ih" + t)), _np(getattr(module, "bias_hh" + t))
        else:
            b_ih = b_hh = np.zeros(G, dtype)
        params["W" + sfx] = _np(getattr(module, "weight_ih" + t)).T.copy()
        params["R" + sfx] = _np(getattr(module, "weight_hh" + t)).T.copy()
        if layer.cell == "gru":  # bias_hh's n part sits inside r * (...)
            params["b" + sfx] = np.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]])
            params["b_hn" + sfx] = b_hh[2 * H :].copy()
        else:
            params["b" + sfx] = b_ih + b_hh
    layer.load_parameters(params)
    return layer


def to_torch(layer: Layer) -> Any:
    """A torch module (CPU, the layer's dtype) with the layer's weights, time-major
    (``batch_first=False``).

    Cells and stacks -> ``nn.RNN/LSTM/GRU`` (``num_layers``, ``bidirectional``,
    ``dropout``); a ``Bidirectional`` with merge="concat" -> ``bidirectional=True``;
    Dense -> ``nn.Linear`` (with an activation: ``nn.Sequential(Linear, Tanh)`` and so
    on); Embedding -> ``nn.Embedding``; Dropout -> ``nn.Dropout``; Sequential ->
    ``nn.Sequential``, each recurrent module wrapped to return only its outputs so that
    the Sequential runs. PyTorch's ``bias_hh`` gets zeros (GRU: except its n part,
    ``b_hn``), so that ``bias_ih + bias_hh`` is rnnkern's ``b``. RNN(activation=
    "identity") and merge="sum" have no PyTorch counterpart and raise ValueError.
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(layer, Layer):
        raise TypeError(f"layer: expected an rnnkern layer or Sequential, "
                        f"got {type(layer).__name__}")
    if isinstance(layer, Sequential):
        mods = []
        for i, sub in enumerate(layer):
            try:
                mod = to_torch(sub)
            except (TypeError, ValueError) as e:
                raise type(e)(f"layer[{i}]: {e}") from None
            if isinstance(sub, _Cell):
                mod = _outputs_class()(mod)
            mods.extend(mod if isinstance(sub, Dense) and sub.activation else [mod])
        return nn.Sequential(*mods)
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p)
    p = {k: np.asarray(v.get() if hasattr(v, "get") else v) for k, v in
         layer.parameters().items()}
    dtype = getattr(torch, str(layer.dtype))

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a))

    if isinstance(layer, Embedding):
        mod = nn.Embedding(layer.num_embeddings, layer.dim, dtype=dtype)
        with torch.no_grad():
            mod.weight.copy_(t(p["W"]))
        return mod
    if isinstance(layer, Dense):
        mod = nn.Linear(layer.in_features, layer.out_features, dtype=dtype)
        with torch.no_grad():
            mod.weight.copy_(t(p["W"].T))
            mod.bias.copy_(t(p["b"]))
        if layer.activation is None:
            return mod
        act = {v: k for k, v in _ACTIVATIONS.items()}[layer.activation]
        return nn.Sequential(mod, getattr(nn, act)())
    if not isinstance(layer, _Cell):
        raise TypeError(f"layer: expected an RNN, LSTM, GRU, Bidirectional, Dense, "
                        f"Embedding, Dropout or Sequential, got {type(layer).__name__}")
    return _to_recurrent(layer, p, dtype)


def _to_recurrent(layer: _Cell, p: dict[str, np.ndarray], dtype: Any) -> Any:
    torch = _torch()
    nn = torch.nn
    if isinstance(layer, Bidirectional) and layer.merge != "concat":
        raise ValueError(f"layer: Bidirectional(merge={layer.merge!r}) has no torch.nn "
                         f"counterpart (its bidirectional modules concatenate)")
    kwargs = {"num_layers": layer.num_layers, "dropout": layer.dropout,
              "bidirectional": layer.bidirectional, "dtype": dtype}
    if layer.cell == "rnn":
        if layer.activation == "identity":
            raise ValueError("layer: RNN(activation='identity') has no torch.nn.RNN "
                             "counterpart (nonlinearity is 'tanh' or 'relu')")
        mod = nn.RNN(layer.in_features, layer.hidden, nonlinearity=layer.activation, **kwargs)
    else:
        mod = {"lstm": nn.LSTM, "gru": nn.GRU}[layer.cell](layer.in_features, layer.hidden,
                                                          **kwargs)
    H = layer.hidden
    with torch.no_grad():
        for n, d, sfx in layer._units():
            names = _torch_names(n, d)
            unit = {k: p[k + sfx] for k in PARAMS[layer.cell]}
            b_hh = np.zeros_like(unit["b"])
            if layer.cell == "gru":
                b_hh[2 * H :] = unit["b_hn"]
            getattr(mod, "weight_ih" + names).copy_(torch.from_numpy(unit["W"].T.copy()))
            getattr(mod, "weight_hh" + names).copy_(torch.from_numpy(unit["R"].T.copy()))
            getattr(mod, "bias_ih" + names).copy_(torch.from_numpy(unit["b"].copy()))
            getattr(mod, "bias_hh" + names).copy_(torch.from_numpy(b_hh))
    return mod
