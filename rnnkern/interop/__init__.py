"""Interop with PyTorch: ``from_torch(module)`` and ``to_torch(layer)``.

Supported: ``torch.nn.RNN`` (tanh/relu), ``LSTM``, ``GRU`` with any ``num_layers``,
``bidirectional``, ``dropout`` (LSTM without ``proj_size``; ``batch_first=True`` becomes
the time-major equivalent; ``bias=False`` zero biases, which rnnkern trains; the way back
always has biases) <-> the cells with the same options (and
``Bidirectional(merge="concat")``); ``Linear`` (+ an activation module) <-> ``Dense``;
``Embedding`` <-> ``Embedding``; ``Dropout`` <-> ``Dropout``; ``nn.Sequential`` of these
<-> ``Sequential`` (each recurrent module inside wrapped in ``Outputs``, which returns
only its outputs, so that torch can run the Sequential). rnnkern keeps PyTorch's gate
order, so moving weights is a transpose: ``weight_ih_l<k> = W.T``, ``weight_hh_l<k> =
R.T`` (parameter suffixes alike, ``W_l1_reverse`` for ``weight_ih_l1_reverse``; a single
layer's are ``W, R, b``); PyTorch's two biases are summed into ``b`` (the GRU keeps
``bias_hh``'s n part as ``b_hn``).
PyTorch is optional: it is imported when these functions are called.
"""

from typing import Any

from .pytorch import from_torch, to_torch

__all__ = ["from_torch", "to_torch", "Outputs"]


def __getattr__(name: str) -> Any:
    if name == "Outputs":  # a torch module: torch is imported only when asked for
        from .modules import Outputs

        return Outputs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
