"""Interop with PyTorch: ``from_torch(module)`` and ``to_torch(layer)``.

Supported: ``torch.nn.RNN`` (tanh/relu), ``LSTM``, ``GRU`` with one layer,
unidirectional, ``batch_first=False`` (LSTM without ``proj_size``), and
``torch.nn.Linear`` <-> ``Dense``. rnnkern keeps PyTorch's gate order, so moving
weights is a transpose: ``weight_ih_l0 = W.T``, ``weight_hh_l0 = R.T``; PyTorch's
two biases are summed into ``b`` (the GRU keeps ``bias_hh``'s n part as ``b_hn``).
PyTorch is optional: it is imported when these functions are called.
"""

from .pytorch import from_torch, to_torch

__all__ = ["from_torch", "to_torch"]
