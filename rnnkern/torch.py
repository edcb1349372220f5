"""rnnkern inside PyTorch: drop-in ``RNN``, ``LSTM``, ``GRU`` modules on rnnkern's kernels.

Each module has the constructor, ``forward`` and parameters of its ``torch.nn``
namesake (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, with
``_reverse`` for the reverse direction; PyTorch's gate order and initialisation), so a
``state_dict`` loads from one into the other both ways::

    import rnnkern.torch as rkt
    gru = rkt.GRU(8, 32, num_layers=2, batch_first=True)   # was torch.nn.GRU(...)
    gru.load_state_dict(torch_gru.state_dict())
    output, h_n = gru(x)            # x: (B, T, 8) or a PackedSequence

Each layer and direction is one ``torch.autograd.Function`` whose forward and backward
are rnnkern's kernels (``rnnkern.backends``): CPU tensors run on the Numba backend
through ``.numpy()`` views, CUDA tensors on the CuPy backend through DLPack, both
without a copy of the sequence where it is already time-major and contiguous (the CUDA
path has not yet run on a GPU). The reverse direction reads each row backwards within its
own length through one gather per call on the torch side, so autograd carries it. The
kernels give first derivatives only: a backward with ``create_graph=True`` (a double
backward) raises RuntimeError.

Beyond ``torch.nn``: ``nonlinearity="identity"`` for ``RNN``, and ``forward(...,
lengths=...)`` on padded input, with the meaning a PackedSequence's lengths have (rows
past their length carry their state and output zeros; the reverse direction reads each
row backwards from its own last step). ``LSTM(proj_size > 0)`` is not supported.

Importing this module imports torch first, so that torch's thread pool starts before
Numba's (see the README's note on using torch and rnnkern in one process).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
import warnings
from collections.abc import Iterator
from typing import Any


def _numba_pool_started() -> bool:
    """Whether Numba's thread pool runs already (asked before torch is first imported)."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))


if "torch" not in sys.modules and _numba_pool_started():
    warnings.warn("rnnkern.torch: torch is imported after Numba's thread pool started; "
                  "torch's own RNN and GRU may then run ~10x slower in this process: "
                  "import torch (or rnnkern.torch) before the first rnnkern call",
                  RuntimeWarning, stacklevel=2)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence  # noqa: E402

from . import backends  # noqa: E402
from ._validate import GATES, RNN_ACTIVATIONS  # noqa: E402

__all__ = ["GRU", "LSTM", "RNN"]

_DTYPES = (torch.float32, torch.float64)
#: torch device type -> the rnnkern backend that computes there
_BACKENDS = {"cpu": "numba", "cuda": "cupy"}


# ----------------------------------------------------------------------------
# tensors <-> kernel arrays (no copies: both sides share the memory)


def _array(t: torch.Tensor | None) -> Any:
    """The kernel array viewing contiguous tensor ``t`` (NumPy on CPU, CuPy by DLPack)."""
    if t is None:
        return None
    t = t.detach()
    if t.device.type == "cpu":
        return t.numpy()
    import cupy

    return cupy.from_dlpack(t)


def _tensor(a: Any) -> torch.Tensor:
    """The tensor viewing kernel array ``a``."""
    if type(a).__module__.split(".")[0] == "cupy":
        return torch.from_dlpack(a)
    return torch.from_numpy(a)


@contextlib.contextmanager
def _stream(device: torch.device) -> Iterator[None]:
    """On CUDA: CuPy on the tensor's device and on torch's current stream there, so the
    kernels are ordered with torch's work without a synchronisation. On CPU: nothing."""
    if device.type != "cuda":
        yield
        return
    import cupy

    with cupy.cuda.Device(device.index), \
            cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        yield


def _backend(device: torch.device) -> Any:
    name = _BACKENDS.get(device.type)
    if name is None:
        raise ValueError(f"input: expected a CPU or CUDA tensor, got one on {device}")
    return backends.get(name)


# ----------------------------------------------------------------------------
# one layer and direction under autograd


class _Recurrence(torch.autograd.Function):
    """One layer-direction: (x, h0, c0, weights) -> (y, hT[, cT]) on rnnkern's kernels.

    x: (T, B, I) time-major, contiguous   h0, c0: (B, H) or None   lengths: (B,) int64 or
    None   weight_ih: (G*H, I)   weight_hh: (G*H, H)   bias_ih, bias_hh: (G*H,) or None.
    The kernels take W = weight_ih.T, R = weight_hh.T and one bias b = bias_ih + bias_hh
    (GRU: bias_hh's n part apart as b_hn, since it sits inside r * (...)); the transposed
    copies are made once per call.
    """

    @staticmethod
    def forward(ctx: Any, cell: str, activation: str, lengths: torch.Tensor | None,
                x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None,
                weight_ih: torch.Tensor, weight_hh: torch.Tensor,
                bias_ih: torch.Tensor | None, bias_hh: torch.Tensor | None) -> Any:
        be = _backend(x.device)
        H = weight_hh.shape[1]
        W = _array(weight_ih.t().contiguous())
        R = _array(weight_hh.t().contiguous())
        if bias_ih is None:
            bias_ih = bias_hh = weight_ih.new_zeros(weight_ih.shape[0])
        if cell == "gru":
            b = _array(torch.cat([bias_ih[: 2 * H] + bias_hh[: 2 * H], bias_ih[2 * H:]]))
            extra: tuple = (_array(bias_hh[2 * H:].contiguous()),)
        else:
            b = _array(bias_ih + bias_hh)
            extra = ()
        keep = any(ctx.needs_input_grad)
        kw = {"lengths": _array(lengths), "training": keep}
        if cell == "rnn":
            kw["activation"] = activation
        state = (_array(h0), _array(c0)) if cell == "lstm" else (_array(h0),)
        with _stream(x.device):
            y, final, cache = getattr(be, f"{cell}_forward")(_array(x), *state, W, R, b,
                                                             *extra, **kw)
        ctx.set_materialize_grads(False)  # an unused output's gradient reaches the kernel as None
        ctx.cell, ctx.cache, ctx.be, ctx.device = cell, cache, be, x.device
        # the cache views x: saving it makes autograd refuse a backward after x changed in place
        ctx.save_for_backward(x)
        finals = final if cell == "lstm" else (final,)
        return (_tensor(y), *(_tensor(f) for f in finals))

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor | None, *dfinal: torch.Tensor | None) -> tuple:
        # create_graph=True runs this with grad mode on: its result would have no graph,
        # and second derivatives through it would silently read as zero
        if torch.is_grad_enabled():
            raise RuntimeError(f"rnnkern.torch.{ctx.cell.upper()}: double backward is not "
                               "supported (the kernels give first derivatives only); call "
                               "backward/autograd.grad without create_graph=True")
        ctx.saved_tensors  # noqa: B018 - raises if x was modified in place since the forward
        cell = ctx.cell

        def arr(t: torch.Tensor | None) -> Any:
            return None if t is None else _array(t.contiguous())

        dstate = tuple(arr(d) for d in dfinal) if cell == "lstm" else arr(dfinal[0])
        with _stream(ctx.device):
            dx, dh0, grads = getattr(ctx.be, f"{cell}_backward")(arr(dy), dstate, ctx.cache)
        dh, dc = dh0 if cell == "lstm" else (dh0, None)
        need = ctx.needs_input_grad
        db_ih = db_hh = None
        if need[8] or need[9]:
            db = _tensor(grads["b"])
            db_ih = db
            if cell == "gru":
                H = grads["b_hn"].shape[0]
                db_hh = torch.cat([db[: 2 * H], _tensor(grads["b_hn"])])
            else:
                db_hh = db.clone()  # its own tensor: either may be accumulated into in place
        return (None, None, None,
                _tensor(dx) if need[3] else None,
                _tensor(dh) if need[4] else None,
                _tensor(dc) if need[5] and dc is not None else None,
                _tensor(grads["W"]).t() if need[6] else None,
                _tensor(grads["R"]).t() if need[7] else None,
                db_ih, db_hh)


def _reversal(lengths: torch.Tensor | None, T: int, device: torch.device) -> Any:
    """Index (T, B) taking each row backwards within its length (padding stays put), or
    None where every row has all T steps (then a flip does it)."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device)[:, None]
    n = lengths.to(device)[None, :]
    return torch.where(t < n, n - 1 - t, t)


def _reverse(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """x: (T, B, F) with each row reversed by ``index`` (its own inverse)."""
    if index is None:
        return x.flip(0)
    cols = torch.arange(x.shape[1], device=x.device)[None, :]
    return x[index, cols]


# ----------------------------------------------------------------------------
# the modules


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {low}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value}")
    return int(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


class _RNNBase(nn.Module):
    """What RNN, LSTM and GRU share: parameters, argument checks, the layer stack."""

    cell = ""  # "rnn" | "lstm" | "gru", set by each subclass

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.input_size = _check_int("input_size", input_size, 1)
        self.hidden_size = _check_int("hidden_size", hidden_size, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.bias = _check_bool("bias", bias)
        self.batch_first = _check_bool("batch_first", batch_first)
        self.bidirectional = _check_bool("bidirectional", bidirectional)
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout} acts between layers only: with "
                          "num_layers=1 it never applies", UserWarning, stacklevel=3)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        G, H = GATES[self.cell], self.hidden_size
        self._names: list[list[str]] = []
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else H * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (G * H, width), "weight_hh": (G * H, H)}
                if self.bias:
                    shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
                for name, shape in shapes.items():
                    self.register_parameter(name + suffix, nn.Parameter(
                        torch.empty(shape, device=device, dtype=dtype)))
                self._names.append([name + suffix for name in shapes])
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Per layer and direction: [weight_ih, weight_hh(, bias_ih, bias_hh)]."""
        return [[getattr(self, n) for n in names] for names in self._names]

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter uniform in +-1/sqrt(hidden_size),
        drawn in the same order, so one seed gives the same weights as torch.nn."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """Nothing to do: the kernels read each layer's weights where they are (kept for
        code written for torch.nn, which calls it)."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "nonlinearity": "tanh", "bias": True,
                    "batch_first": False, "dropout": 0.0, "bidirectional": False}
        for k, v in defaults.items():
            if hasattr(self, k) and getattr(self, k) != v:
                s += f", {k}={getattr(self, k)!r}"
        return s

    # -- forward ------------------------------------------------------------

    def _activation(self) -> str:
        return "tanh"

    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input: expected a tensor or a PackedSequence, got "
                            f"{type(x).__name__}")
        if x.dim() not in (2, 3):
            raise ValueError(f"input: expected a 3-d (batched) or 2-d (unbatched) tensor, "
                             f"got shape {tuple(x.shape)}")
        p = self.weight_ih_l0
        if x.dtype != p.dtype:
            raise ValueError(f"input: dtype {x.dtype} does not match the parameters' "
                             f"{p.dtype} (convert one with .to(dtype))")
        if x.device != p.device:
            raise ValueError(f"input: on {x.device}, the parameters on {p.device}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected {self.input_size} features (input_size), "
                             f"got shape {tuple(x.shape)}")
        if 0 in x.shape:
            raise ValueError(f"input: expected every size >= 1, got shape {tuple(x.shape)}")
        return x

    def _check_lengths(self, lengths: Any, T: int, B: int) -> torch.Tensor:
        if isinstance(lengths, (list, tuple)):
            lengths = torch.as_tensor(lengths)
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths: expected an integer tensor of shape (B={B},), got "
                            f"{type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or \
                lengths.dtype == torch.bool:
            raise ValueError(f"lengths: expected integers, got dtype {lengths.dtype}")
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths: expected shape (B={B},), got shape "
                             f"{tuple(lengths.shape)}")
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > T:
            raise ValueError(f"lengths: expected values in [1, T={T}], got values in "
                             f"[{lo}, {hi}]")
        return lengths.to(torch.int64)

    def _check_state(self, name: str, h: Any, B: int, batched: bool,
                     like: torch.Tensor) -> torch.Tensor:
        want = (self.num_layers * self.num_directions, *((B,) if batched else ()),
                self.hidden_size)
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor of shape {want}, got "
                            f"{type(h).__name__}")
        if tuple(h.shape) != want:
            raise ValueError(f"{name}: expected shape {want} (num_layers * num_directions, "
                             f"{'batch, ' if batched else ''}hidden_size), got "
                             f"{tuple(h.shape)}")
        if h.dtype != like.dtype or h.device != like.device:
            raise ValueError(f"{name}: expected {like.dtype} on {like.device} like the "
                             f"input, got {h.dtype} on {h.device}")
        return h if batched else h.unsqueeze(1)

    def _initial(self, hx: Any, B: int, batched: bool, x: torch.Tensor) -> list:
        """Per layer-direction: its (h0, c0) pair (None: zeros)."""
        n = self.num_layers * self.num_directions
        if hx is None:
            return [(None, None)] * n
        if self.cell == "lstm":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"hx: expected a tuple (h_0, c_0) for LSTM, got "
                                f"{type(hx).__name__}")
            h = self._check_state("hx[0] (h_0)", hx[0], B, batched, x)
            c = self._check_state("hx[1] (c_0)", hx[1], B, batched, x)
            return [(h[k], c[k]) for k in range(n)]
        h = self._check_state("hx", hx, B, batched, x)
        return [(h[k], None) for k in range(n)]

    def forward(self, input: Any, hx: Any = None, *, lengths: Any = None) -> Any:
        """torch.nn's forward.

        input: (T, B, input_size) ((B, T, input_size) with batch_first), (T, input_size)
        unbatched, or a PackedSequence   hx: (num_layers * num_directions, B, hidden_size)
        or None (zeros); LSTM: the pair (h_0, c_0)   lengths: (B,) ints in [1, T] or None,
        padded input only. Returns output: (T, B, num_directions * hidden_size) (same
        layout and kind as input) and h_n: like hx (LSTM: (h_n, c_n)).
        """
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; got "
                                 "lengths as well")
            x, lens = pad_packed_sequence(input)  # (T, B, I) in the original row order
            self._check_input(x)
            batched = True
        else:
            x = self._check_input(input)
            batched = x.dim() == 3
            if not batched:
                if lengths is not None:
                    raise ValueError("lengths: given for unbatched (2-d) input")
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
            lens = None if lengths is None else self._check_lengths(lengths, *x.shape[:2])
        T, B = x.shape[:2]
        states = self._initial(hx, B, batched, x)
        if lens is not None and bool((lens == T).all()):
            lens = None  # every row full: the plain kernels and a flip
        rev = _reversal(lens, T, x.device) if self.bidirectional else None
        kernel_lens = None if lens is None else lens.to(x.device).contiguous()
        h_n, c_n = [], []
        all_weights = self.all_weights
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                xd = (_reverse(x, rev) if d else x).contiguous()
                h0, c0 = (None if s is None else s.contiguous() for s in states[k])
                weights = all_weights[k] + [None, None] * (not self.bias)
                out = _Recurrence.apply(self.cell, self._activation(), kernel_lens, xd, h0,
                                        c0, *weights)
                outs.append(_reverse(out[0], rev) if d else out[0])
                h_n.append(out[1])
                if self.cell == "lstm":
                    c_n.append(out[2])
            x = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        hidden: Any = _stack(h_n)
        if self.cell == "lstm":
            hidden = (hidden, _stack(c_n))
        if packed:
            return _pack_like(x, input), hidden
        if not batched:
            x = x.squeeze(1)
            hidden = tuple(h.squeeze(1) for h in hidden) if self.cell == "lstm" \
                else hidden.squeeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, hidden


def _stack(states: list[torch.Tensor]) -> torch.Tensor:
    """(B, H) states -> (len, B, H); a lone state as a view, without a copy."""
    return states[0].unsqueeze(0) if len(states) == 1 else torch.stack(states)


def _pack_like(y: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """y: (T, B, F) padded, rows in the original order -> a PackedSequence with the
    batch sizes and orderings of ``like``."""
    sizes = like.batch_sizes
    T = len(sizes)
    step = torch.repeat_interleave(torch.arange(T), sizes)
    row = torch.arange(len(step)) - (torch.cumsum(sizes, 0) - sizes)[step]
    if like.sorted_indices is not None:
        row = like.sorted_indices.cpu()[row]
    data = y[step.to(y.device), row.to(y.device)]
    return PackedSequence(data, sizes, like.sorted_indices, like.unsorted_indices)


class RNN(_RNNBase):
    """Elman RNN, ``torch.nn.RNN``'s drop-in: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T
    + b_hh), act one of "tanh", "relu", "identity"."""

    cell = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
                 dtype: Any = None) -> None:
        if nonlinearity not in RNN_ACTIVATIONS:
            raise ValueError(f"nonlinearity: expected one of {', '.join(RNN_ACTIVATIONS)}, "
                             f"got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype)

    def _activation(self) -> str:
        return self.nonlinearity


class LSTM(_RNNBase):
    """LSTM, ``torch.nn.LSTM``'s drop-in (gates i, f, g, o; no projection)."""

    cell = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device: Any = None,
                 dtype: Any = None) -> None:
        if proj_size != 0:
            raise ValueError(f"proj_size: LSTM with a projection is not supported (rnnkern's "
                             f"kernels have none); expected 0, got {proj_size!r}")
        self.proj_size = 0
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype)


class GRU(_RNNBase):
    """GRU, ``torch.nn.GRU``'s drop-in (gates r, z, n; b_hn inside r * (...))."""

    cell = "gru"
