"""What the benchmark commands share: the shapes and their parsing, torch's runner, the
CPU's interleaved timing, the Markdown table, the bar chart and the JSON file.

``bench`` (CPU kernels), ``bench_cuda`` (CuPy kernels), ``bench_torch`` and
``bench_train`` import from here and not from each other's internals. Everything is
labelled in one order: cell, shape, implementation, pass.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

from ..gradcheck import Problem, make_problem

CELLS = ("rnn", "lstm", "gru")
PASSES = ("forward", "forward+backward")
#: a timed CPU sample repeats the call until it has taken at least this long
MIN_SAMPLE_S = 0.02
#: idle time before every CPU sample, so that the worker threads of whatever ran before it
#: have gone to sleep: SciPy's OpenBLAS workers spin for ~0.1 s after a threaded call and,
#: on a small machine, take cores from the next implementation's threads (measured: torch
#: LSTM forward at B64 T100 I256 H256, 50 ms alone, 130 ms right after a numba call)
SETTLE_S = 0.25

Runner = dict[str, Callable[[], Any]]
K = TypeVar("K", bound=Hashable)


class Shape(NamedTuple):
    """One benchmark size: x (T, B, I) float32, hidden state (B, H).

    ``varlen``: lengths (B,) drawn uniform in [T/4, T] (packed sequences for torch);
    ``name``: the shape's name in a table, "" for sizes given as numbers.
    """

    T: int
    B: int
    I: int  # noqa: E741 - the contract's name for the input width
    H: int
    varlen: bool = False
    name: str = ""

    def label(self) -> str:
        """The sizes in the order --shapes takes them: "T100 B32 I32 H64[ varlen]"."""
        return f"T{self.T} B{self.B} I{self.I} H{self.H}" + (" varlen" if self.varlen else "")

    def title(self) -> str:
        """The name, or for a shape without one its sizes run together ("T3B2I2H4")."""
        return self.name or self.label().replace(" ", "")


#: the CPU benchmark's shapes (``rnnkern bench``, ``bench torch``), by name
SHAPES = {s.name: s for s in (
    Shape(10, 16, 1, 3, name="seed"),
    Shape(1000, 1, 8, 32, name="stream"),
    Shape(100, 32, 32, 64, name="small"),
    Shape(100, 64, 256, 256, name="medium"),
    Shape(20, 64, 512, 1024, name="large"),
    Shape(100, 64, 125, 320, name="wide"),
)}

#: the GPU shape set (a B x H grid at T=256, I=H; named extra rows; one with variable
#: lengths) in groups, most telling first (``benchmarks/run_gpu.sh`` runs one process and
#: writes one JSON per group): B <= 16 at H 256-1024, where the target ratio is 3; then B64;
#: then B256; then the H64 rows
SHAPE_GROUPS = {
    "small-batch": [Shape(256, 1, 256, 256), Shape(256, 8, 256, 256), Shape(256, 1, 1024, 1024),
                    Shape(256, 8, 1024, 1024), Shape(150, 16, 256, 256), Shape(512, 1, 256, 512),
                    Shape(1000, 16, 128, 128)],
    "batch64": [Shape(256, 64, 256, 256), Shape(256, 64, 1024, 1024), Shape(100, 64, 125, 320),
                Shape(25, 64, 512, 512), Shape(256, 64, 256, 256, True)],
    "batch256": [Shape(256, 256, 256, 256), Shape(256, 256, 1024, 1024)],
    "h64": [Shape(256, B, 64, 64) for B in (1, 8, 64, 256)],
}
#: every shape of SHAPE_GROUPS, in group order
GPU_SHAPES = tuple(shape for group in SHAPE_GROUPS.values() for shape in group)


def parse_shapes(items: Sequence[str | Sequence[int]] | None,
                 named: Mapping[str, Shape | Sequence[Shape]], *, varlen: bool = False
                 ) -> list[Shape]:
    """The shapes ``--shapes`` asks for, in order.

    items: None or empty -> every shape of ``named``; otherwise each item a key of ``named``
    (its shape, or its group of shapes), "T,B,I,H" ("x" between sizes also does) or a
    4-tuple; with ``varlen``, "T,B,I,H,varlen" too.
    """
    if not items:
        items = list(named)
    out = []
    for s in items:
        if isinstance(s, str) and s in named:
            found = named[s]
            out.extend([found] if isinstance(found, Shape) else found)
            continue
        parts = s.replace("x", ",").split(",") if isinstance(s, str) else list(s)
        lengths = varlen and bool(parts) and str(parts[-1]).strip() == "varlen"
        try:
            dims = [int(p) for p in (parts[:-1] if lengths else parts)]
        except ValueError:
            dims = []
        if len(dims) != 4 or min(dims) < 1:
            raise ValueError(f"shapes: expected a name ({', '.join(named)}) or 'T,B,I,H'"
                             + (" (optionally ',varlen')" if varlen else "")
                             + f" with positive sizes, got {s!r}")
        out.append(Shape(*dims, lengths))
    return out


def problem(cell: str, shape: Shape, seed: int = 0) -> Problem:
    """The float32 problem every implementation of a row runs: x (T, B, I), dy (T, B, H),
    the cell's parameters; no initial state."""
    return make_problem(cell, T=shape.T, B=shape.B, I=shape.I, H=shape.H, h0=False,
                        dstate=False, seed=seed).astype(np.float32)


def torch_runner(cell: str, shape: Shape, device: str = "cpu", lengths: Any = None,
                 **layer: Any) -> Runner:
    """pass -> a function running torch.nn.RNN/LSTM/GRU once on ``device``.

    x (T, B, I) and dy (the output's shape) are drawn as ``problem`` draws them, uniform
    in [-1, 1), but by torch on ``device`` (the GPU's largest problems take seconds in
    NumPy); lengths (B,) or None, packed when given; ``layer``: further torch.nn options
    (num_layers, bidirectional, ...). The forward runs under no_grad; forward+backward
    clears the gradients first and takes them down to x.
    """
    import torch

    torch.manual_seed(0)
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    net = module(shape.I, shape.H, **layer).to(device)
    x = torch.empty(shape.T, shape.B, shape.I, device=device).uniform_(-1, 1)
    x.requires_grad_(True)
    if lengths is None:
        def run() -> Any:
            return net(x)[0]
    else:
        lens = torch.as_tensor(lengths)
        pack = torch.nn.utils.rnn.pack_padded_sequence

        def run() -> Any:
            return net(pack(x, lens, enforce_sorted=False))[0].data
    dy = torch.empty_like(run()).uniform_(-1, 1)  # the output's shape, whatever the layer

    def forward() -> Any:
        with torch.no_grad():
            return run()

    def both() -> Any:
        for t in (x, *net.parameters()):
            t.grad = None
        run().backward(dy)

    return {"forward": forward, "forward+backward": both}


# ----------------------------------------------------------------------------
# CPU timing: wall clock, samples interleaved


def seconds_per_call(fn: Callable[[], Any], calls: int = 1) -> float:
    """Mean wall seconds of ``calls`` back-to-back calls of ``fn``."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def calls_per_sample(fn: Callable[[], Any], min_s: float = MIN_SAMPLE_S) -> int:
    """How many calls of ``fn`` (timed once) take about ``min_s``; at least one."""
    return max(1, int(min_s / max(seconds_per_call(fn), 1e-7)))


def time_interleaved(fns: Mapping[K, Callable[[], Any]], repeat: int) -> dict[K, list[float]]:
    """Seconds per call of every function, ``repeat`` samples each, keyed as ``fns``.

    Two untimed warm-up calls each first (compile or cache load, first touch of buffers);
    then the samples go round-robin over all functions, each after ``SETTLE_S`` of idle
    time and one more untimed call.
    """
    for fn in fns.values():
        fn()
        fn()
    calls = {k: calls_per_sample(fn) for k, fn in fns.items()}
    out: dict[K, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            time.sleep(SETTLE_S)
            fn()  # untimed: caches and clocks back up after the idle time
            out[k].append(seconds_per_call(fn, calls[k]))
    return out


# ----------------------------------------------------------------------------
# output


def markdown_line(cells: Sequence[Any]) -> str:
    """One Markdown table line: "| a | b |"."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_head(head: Sequence[str]) -> str:
    """The header line and the rule under it, printed before the rows as they come."""
    return markdown_line(head) + "\n|" + "---|" * len(head)


def write_json(path: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``{"meta": meta, "rows": rows}`` to ``path``, replaced atomically so that a run
    killed while writing keeps the last copy."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    os.replace(tmp, path)


def plot(rows: list[dict[str, Any]], path: str, value: Callable[[dict[str, Any]], float | None],
         ylabel: str, title: str, one: bool = False) -> None:
    """Bar chart: one panel per (cell, pass) of ``rows``, cells down and passes across; in
    each, per shape, one bar per implementation of ``value(row)`` (None: no bar), log axis.

    rows: dicts with "cell", "shape", "impl", "pass"; ``one``: draw the line at 1 (ratios).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    bars = {(r["cell"], r["shape"], r["impl"], r["pass"]): v for r in rows
            if (v := value(r)) is not None}
    cells = [c for c in CELLS if any(k[0] == c for k in bars)]
    shapes = list(dict.fromkeys(k[1] for k in bars))
    impls = list(dict.fromkeys(k[2] for k in bars))
    width = 0.8 / max(1, len(impls))
    panel_w = max(5.5, 0.12 * len(shapes) * len(impls) + 1)  # room for every bar
    fig, axes = plt.subplots(len(cells), len(PASSES), figsize=(panel_w * len(PASSES),
                             3.2 * len(cells)), squeeze=False)
    for i, cell in enumerate(cells):
        for j, ps in enumerate(PASSES):
            ax = axes[i][j]
            for k, impl in enumerate(impls):
                at = [(x, bars[cell, s, impl, ps]) for x, s in enumerate(shapes)
                      if (cell, s, impl, ps) in bars]
                ax.bar([x + k * width for x, _ in at], [v for _, v in at], width, label=impl)
            if one:
                ax.axhline(1.0, color="k", lw=0.8)
            ax.set_yscale("log")
            # plain numbers (1.1, not 1.1x10^0): values often span less than a decade, where
            # the default labels the minor ticks in scientific notation; over more than
            # one, the decades alone are labelled
            plain = FuncFormatter(lambda v, _: f"{v:.3g}")
            lo, hi = ax.get_ylim()
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())
            ax.set_xticks(np.arange(len(shapes)) + width * (len(impls) - 1) / 2, shapes,
                          rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{cell} {ps}")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
