"""rnnkern: a from-scratch recurrence engine (RNN, LSTM, GRU) with hand-written BPTT."""

from . import backends, callbacks, data, gradcheck, losses, masks, schedules
from .generate import generate
from .layers import GRU, LSTM, RNN, Bidirectional, Dense, Dropout, Embedding, Sequential
from .optim import SGD, Adam
from .serialize import load, save
from .train import evaluate, fit, value_and_grad

__version__ = "0.1.0"
__all__ = ["backends", "__version__", "RNN", "LSTM", "GRU", "Bidirectional", "Dense",
           "Dropout", "Embedding", "Sequential",
           "value_and_grad", "evaluate", "fit", "generate", "Adam", "SGD", "save", "load",
           "masks", "losses", "data", "callbacks", "schedules", "gradcheck", "interop"]


def __getattr__(name: str):
    # interop imports torch only when asked for: PyTorch is optional
    if name == "interop":
        import importlib

        return importlib.import_module(".interop", __name__)
    raise AttributeError(f"module 'rnnkern' has no attribute {name!r}")
