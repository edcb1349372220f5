"""rnnkern: a from-scratch recurrence engine (RNN, LSTM, GRU) with hand-written BPTT."""

from . import backends

__version__ = "0.1.0"
__all__ = ["backends", "__version__"]
