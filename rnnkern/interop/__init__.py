"""Interop with PyTorch: ``from_torch(module)`` and ``to_torch(layer)``.

Supported, both ways: ``torch.nn.RNN`` (tanh/relu), ``LSTM``, ``GRU`` with any
``num_layers``, ``bidirectional``, ``dropout``, ``bias`` (LSTM without ``proj_size``;
``batch_first=True`` becomes the time-major equivalent) <-> the cells with the same
options (and ``Bidirectional(merge="concat")``); ``Linear`` (+ an activation module) <->
``Dense``; ``Embedding`` <-> ``Embedding``; ``Dropout`` <-> ``Dropout``; ``nn.Sequential``
of these <-> ``Sequential``. rnnkern keeps PyTorch's gate order, so moving weights is a
transpose: ``weight_ih_l<k> = W.T``, ``weight_hh_l<k> = R.T`` (parameter suffixes alike,
``W_l1_reverse`` for ``weight_ih_l1_reverse``; a single layer's are ``W, R, b``); PyTorch's
two biases are summed into ``b`` (the GRU keeps ``bias_hh``'s n part as ``b_hn``).
PyTorch is optional: it is imported when these functions are called.
"""

from .pytorch import from_torch, to_torch

__all__ = ["from_torch", "to_torch"]
