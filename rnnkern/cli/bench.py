"""``rnnkern bench``: time forward and forward+backward per backend and shape on the CPU,
with torch.nn.RNN/LSTM/GRU beside them when torch is installed.

Every implementation runs in the same process on float32 data of the same sizes and
distribution with the same thread count (Numba's pool, the OpenBLAS pools of NumPy and
SciPy, and torch's intra-op pool are all set to ``--threads``). The first calls (JIT
compile or cache load) are warm-up and are not counted; each timed sample repeats a call
until it has run for at least ``_bench.MIN_SAMPLE_S`` and the table reports the median
over ``--repeat`` samples. Samples of all implementations are interleaved, so that load
from other processes on a shared machine hits them alike, and each starts after
``_bench.SETTLE_S`` of idle time, so that no implementation's spinning worker threads run
against the next. With ``--backend cupy`` the GPU benchmark (``bench_cuda``) runs.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import glob
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import backends
from .._validate import PARAMS
from ._bench import (
    CELLS,
    PASSES,
    SHAPES,
    Runner,
    Shape,
    markdown_head,
    markdown_line,
    parse_shapes,
    plot,
    problem,
    time_interleaved,
    torch_runner,
    write_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import bench_train

    p.add_argument("what", nargs="?", choices=("kernels", "train", "torch"),
                   default="kernels",
                   help="kernels: forward and forward+backward per cell and shape (default); "
                        "train: seconds per optimiser step of fit against a PyTorch loop "
                        "(rnnkern.cli.bench_train); torch: a PyTorch training step with "
                        "rnnkern.torch's modules against torch.nn's (rnnkern.cli.bench_torch)")
    p.add_argument("--backend", action="append",
                   help="backend(s) to time, repeatable or comma-separated (default: every "
                        "available CPU backend); 'cupy' runs the GPU benchmark instead")
    p.add_argument("--cell", choices=(*CELLS, "all"), default="all")
    p.add_argument("--shapes", nargs="+", metavar="SHAPE",
                   help=f"shape names ({', '.join(SHAPES)}) or 'T,B,I,H' (default: all names)")
    p.add_argument("--variant", action="append",
                   help="kernel variant(s) of the numba backend (default: chosen by shape); "
                        "'all' times every one")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every implementation (default: all cores)")
    p.add_argument("--repeat", type=int, default=7, help="timed samples per median")
    p.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    p.add_argument("--plot", metavar="PATH", help="save a bar chart of the speed ratios")
    p.add_argument("--no-torch", action="store_true", help="leave torch out")
    p.add_argument("--no-layers", action="store_true",
                   help="leave out the rows of whole layers (bidirectional, stacked: "
                        "LAYER_ROWS) that follow the kernels")
    bench_train.add_arguments(p)


# ----------------------------------------------------------------------------
# threads


def _openblas_libs() -> list[Any]:
    """The OpenBLAS libraries NumPy and SciPy ship (Numba's np.dot calls SciPy's)."""
    import numpy
    import scipy

    libs = []
    for pkg in (numpy, scipy):
        root = os.path.dirname(os.path.dirname(pkg.__file__))
        for path in glob.glob(os.path.join(root, f"{pkg.__name__}.libs", "*openblas*.so*")):
            libs.append(ctypes.CDLL(path))
    return libs


def set_threads(n: int, torch_too: bool) -> None:
    """Give Numba, both OpenBLAS pools and torch the same thread count ``n``.

    torch is imported first: when Numba's OpenMP pool starts before torch is loaded,
    torch's RNN and GRU (not its oneDNN LSTM) ran ~10x slower for the whole process
    (measured: RNN forward at B64 T100 I256 H256, 18-33 ms against ~300 ms).
    """
    import numba

    if torch_too:
        import torch

        torch.set_num_threads(n)
    numba.set_num_threads(n)
    for lib in _openblas_libs():
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads"):
            if hasattr(lib, sym):
                getattr(lib, sym)(ctypes.c_int(n))
                break


def start_threads(args: argparse.Namespace) -> tuple[int, bool]:
    """(--threads or every core, whether torch is beside rnnkern), after ``set_threads``:
    torch takes part unless --no-torch or not installed."""
    torch_too = not args.no_torch
    if torch_too:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch_too = False
    threads = args.threads or os.cpu_count() or 1
    set_threads(threads, torch_too)
    return threads, torch_too


# ----------------------------------------------------------------------------
# runners: pass -> zero-argument callable


def backend_runner(name: str, cell: str, s: Shape, variant: str | None) -> Runner:
    """Forward and forward+backward of one backend (``variant``: a numba kernel or None).
    The forward is an inference pass (``training=False``), as torch's runs under no_grad;
    the forward of forward+backward keeps its cache."""
    be = backends.get(name)
    p = problem(cell, s)
    x, P, dy = p.inputs["x"], p.params, p.out_grads["dy"]
    kw = {} if variant is None else {"variant": variant}
    state = (None, None) if cell == "lstm" else (None,)
    args = (x, *state, *(P[k] for k in PARAMS[cell]))
    fwd = getattr(be, f"{cell}_forward")
    bwd = getattr(be, f"{cell}_backward")

    def forward() -> Any:
        return fwd(*args, training=False, **kw)

    def both() -> Any:
        return bwd(dy, None, fwd(*args, **kw)[2], **kw)

    def used() -> str:
        return fwd(*args, **kw)[2].get("variant", "")

    return {"forward": forward, "forward+backward": both, "variant": used}


#: rows of whole layers after the kernels: (label, cell, shape name, the layer's options,
#: as torch.nn names them): both directions, and one stack of two layers
LAYER_ROWS = (
    *((f"{name} bidirectional", cell, name, {"bidirectional": True})
      for cell in ("lstm", "gru") for name in ("small", "medium")),
    ("small 2 layers", "lstm", "small", {"num_layers": 2}),
)


def layer_runner(name: str, cell: str, s: Shape, options: dict[str, Any]) -> Runner:
    """Forward and forward+backward of a whole rnnkern layer (``rk.LSTM(..., **options)``
    on backend ``name``), as ``backend_runner`` times its kernels."""
    from .. import layers

    kind = {"rnn": layers.RNN, "lstm": layers.LSTM, "gru": layers.GRU}[cell]
    layer = kind(s.I, s.H, **options, backend=name, seed=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (s.T, s.B, s.I)).astype(np.float32)
    dy = rng.uniform(-1, 1, (s.T, s.B, layer.out_features)).astype(np.float32)

    def forward() -> Any:
        return layer.forward(x, training=False)

    def both() -> Any:
        return layer.backward(dy, None, layer.forward(x)[2])

    return {"forward": forward, "forward+backward": both}


def first_call_ms(cell: str) -> float:
    """Wall time of the very first numba forward+backward of ``cell`` in this process:
    the cache load (or the compile, when nothing is cached)."""
    runner = backend_runner("numba", cell, Shape(2, 2, 2, 3), None)
    t0 = time.perf_counter()
    runner["forward+backward"]()
    return (time.perf_counter() - t0) * 1e3


# ----------------------------------------------------------------------------
# the command


def _split(values: list[str] | None) -> list[str]:
    return [v for item in values or () for v in item.split(",") if v]


def cpu_meta(threads: int, torch_too: bool, first: dict[str, float]) -> dict[str, Any]:
    """The JSON's "meta" of a CPU benchmark: date, commit, CPU, thread count, versions;
    ``first``: cell -> ms of the first numba call (``first_call_ms``)."""
    import numba

    from ..backends.numba_cpu._vec import VECTOR_BYTES

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ""
    info: dict[str, str] = {}
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for ln in f:
                key, _, value = ln.partition(":")
                info.setdefault(key.strip(), value.strip())
    # a guest's model name can hide the generation ("AMD EPYC"); family and model tell it
    # (AMD family 25: Zen 3 and 4, 26: Zen 5)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit,
            "cpu": info.get("model name", platform.processor()),
            "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
            "cores": os.cpu_count(), "threads": threads, "dtype": "float32",
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "numba_first_call_ms": first,
            # the kernels' vector width: AVX2 and AVX-512 run different tiles (``_simd``)
            "vector_bytes": VECTOR_BYTES}
    if torch_too:
        import torch

        meta["torch"] = torch.__version__
    return meta


#: the table's columns: a line per (cell, shape, implementation)
HEAD = ("cell", "shape", "sizes", "impl", "variant", "forward ms", "fwd+bwd ms",
        "torch/impl fwd", "torch/impl fwd+bwd")


def _speedup(rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], float | None]:
    """row -> torch's median over the row's, for the same cell, shape and pass; None for
    torch's own rows and where torch did not run."""
    torch_ms = {(r["cell"], r["shape"], r["pass"]): r["median_ms"] for r in rows
                if r["impl"] == "torch"}

    def ratio(r: dict[str, Any]) -> float | None:
        t = torch_ms.get((r["cell"], r["shape"], r["pass"]))
        return None if t is None or r["impl"] == "torch" else t / r["median_ms"]

    return ratio


def _table_lines(rows: list[dict[str, Any]]) -> str:
    """The Markdown lines under ``HEAD`` of ``rows``: both passes and both ratios."""
    by: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["cell"], r["shape"], r["impl"]), {})[r["pass"]] = r
    ratio = _speedup(rows)
    lines = []
    for (cell, shape, impl), d in by.items():
        f, fb = d["forward"], d["forward+backward"]
        ratios = ["" if (q := ratio(r)) is None else f"{q:.2f}" for r in (f, fb)]
        lines.append(markdown_line([cell, shape, f["sizes"], impl, f["variant"],
                                    f"{f['median_ms']:.4g}", f"{fb['median_ms']:.4g}",
                                    *ratios]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.what == "train":
        from .bench_train import run as run_train

        return run_train(args)
    if args.what == "torch":
        from .bench_torch import run as run_torch

        return run_torch(args)
    names = _split(args.backend)
    if "cupy" in names:
        from .bench_cuda import run_gpu

        return run_gpu(args)
    cpu = [b for b in backends.available() if b != "cupy"]
    names = names or cpu
    for n in names:
        backends.get(n)  # unknown or unavailable -> ValueError naming it
    variants = _split(args.variant)
    if "all" in variants:
        from ..backends.numba_cpu import VARIANTS

        variants = list(VARIANTS)
    if args.repeat < 1:
        raise ValueError(f"repeat: expected a positive number of samples, got {args.repeat}")
    shapes = parse_shapes(args.shapes, SHAPES)
    threads, torch_too = start_threads(args)
    first = {c: first_call_ms(c) for c in CELLS} if "numba" in names else {}
    cells = CELLS if args.cell == "all" else (args.cell,)
    rows = []
    print(markdown_head(HEAD), flush=True)  # the rows follow, one (cell, shape) at a time
    todo = [(cell, shape, shape.title(), None) for shape in shapes for cell in cells]
    if not args.no_layers:
        todo += [(cell, SHAPES[base], label, options)
                 for label, cell, base, options in LAYER_ROWS
                 if cell in cells and SHAPES[base] in shapes]
    for cell, shape, title, options in todo:
        runners = {}
        for n in names:
            if options is not None:
                runners[n] = layer_runner(n, cell, shape, options)
                continue
            for v in (variants or [None]) if n == "numba" else [None]:
                runners[n if v is None else f"{n}:{v}"] = backend_runner(n, cell, shape, v)
        if torch_too:
            runners["torch"] = torch_runner(cell, shape, **(options or {}))
        timings = time_interleaved({(impl, ps): fns[ps] for impl, fns in runners.items()
                                    for ps in PASSES}, args.repeat)
        # the kernel variant each backend ran (chosen by shape unless given)
        used = {impl: fns["variant"]() if "variant" in fns else ""
                for impl, fns in runners.items()}
        new = [{"cell": cell, "shape": title, "sizes": shape.label(),
                "T": shape.T, "B": shape.B, "I": shape.I, "H": shape.H,
                "layer": options or {}, "impl": impl, "variant": used[impl], "pass": ps,
                "median_ms": statistics.median(samples) * 1e3,
                "samples_ms": [s * 1e3 for s in samples]}
               for (impl, ps), samples in timings.items()]
        rows += new
        print(_table_lines(new), flush=True)
    meta = cpu_meta(threads, torch_too, first)
    if first:
        print("\nfirst numba call in this process (cache load or compile), ms: "
              + ", ".join(f"{c} {v:.0f}" for c, v in first.items()))
    if args.json:
        write_json(args.json, meta, rows)
    if args.plot:
        plot(rows, args.plot, _speedup(rows), "torch time / rnnkern time",
             "torch time / rnnkern time per shape (above 1: rnnkern is faster)", one=True)
    return 0
