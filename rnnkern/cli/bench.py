"""``rnnkern bench``: time forward and forward+backward per backend and shape on the CPU,
with torch.nn.RNN/LSTM/GRU beside them when torch is installed.

Every implementation runs in the same process on the same float32 data with the same
thread count (Numba's pool, the OpenBLAS pools of NumPy and SciPy, and torch's intra-op
pool are all set to ``--threads``). The first calls (JIT compile or cache load) are warm-up
and are not counted; each timed sample repeats a call until it has run for at least
``MIN_SAMPLE_S`` and the table reports the median over ``--repeat`` samples. Samples of
all implementations are interleaved, so that load from other processes on a shared
machine hits them alike, and each starts after ``SETTLE_S`` of idle time, so that no
implementation's spinning worker threads run against the next. With ``--backend cupy``
the GPU benchmark (``bench_cuda``) runs.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .. import backends
from .._validate import PARAMS
from ..gradcheck import make_problem

CELLS = ("rnn", "lstm", "gru")
PASSES = ("forward", "forward+backward")
#: a timed sample repeats the call until it has taken at least this long
MIN_SAMPLE_S = 0.02
#: idle time before every sample, so that the worker threads of whatever ran before it
#: have gone to sleep: SciPy's OpenBLAS workers spin for ~0.1 s after a threaded call and,
#: on a small machine, take cores from the next implementation's threads (measured: torch
#: LSTM forward at B64 T100 I256 H256, 50 ms alone, 130 ms right after a numba call)
SETTLE_S = 0.25


class Shape(NamedTuple):
    name: str
    T: int
    B: int
    I: int  # noqa: E741 - the contract's name for the input width
    H: int

    def label(self) -> str:
        return f"T{self.T} B{self.B} I{self.I} H{self.H}"  # the order --shapes takes


#: the CPU benchmark shapes, by name
SHAPES = {s.name: s for s in (
    Shape("seed", 10, 16, 1, 3),
    Shape("stream", 1000, 1, 8, 32),
    Shape("small", 100, 32, 32, 64),
    Shape("medium", 100, 64, 256, 256),
    Shape("large", 20, 64, 512, 1024),
    Shape("wide", 100, 64, 125, 320),
)}


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
# runners: name -> {pass: zero-argument callable}


def _problem(cell: str, s: Shape, seed: int = 0) -> Any:
    return make_problem(cell, T=s.T, B=s.B, I=s.I, H=s.H, h0=False, dstate=False,
                        seed=seed).astype(np.float32)


def backend_runner(name: str, cell: str, s: Shape, variant: str | None
                   ) -> dict[str, Callable[[], Any]]:
    """Forward and forward+backward of one backend (``variant``: a numba kernel or None).
    The forward is an inference pass (``training=False``), as torch's runs under no_grad;
    the forward of forward+backward keeps its cache."""
    be = backends.get(name)
    p = _problem(cell, s)
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


def torch_runner(cell: str, s: Shape) -> dict[str, Callable[[], Any]]:
    """torch.nn.RNN/LSTM/GRU on the same sizes; forward under no_grad, backward to x too."""
    import torch

    torch.manual_seed(0)
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](s.I, s.H)
    p = _problem(cell, s)
    x = torch.from_numpy(p.inputs["x"]).requires_grad_(True)
    dy = torch.from_numpy(p.out_grads["dy"])

    def forward() -> Any:
        with torch.no_grad():
            return module(x)

    def both() -> Any:
        for t in (x, *module.parameters()):
            t.grad = None
        y, _ = module(x)
        y.backward(dy)

    return {"forward": forward, "forward+backward": both}


# ----------------------------------------------------------------------------
# timing


def _calls_per_sample(fn: Callable[[], Any]) -> int:
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    return max(1, int(MIN_SAMPLE_S / max(once, 1e-7)))


def _sample(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def time_interleaved(runners: dict[str, dict[str, Callable[[], Any]]], repeat: int
                     ) -> dict[tuple[str, str], list[float]]:
    """Seconds per call of every (implementation, pass), ``repeat`` samples each.

    Two untimed warm-up calls per runner first (compile or cache load, first-touch of
    buffers); then the samples go round-robin over all runners, each after ``SETTLE_S``
    of idle time and one more untimed call.
    """
    for passes in runners.values():
        for ps in PASSES:
            passes[ps]()
            passes[ps]()
    calls = {(impl, ps): _calls_per_sample(passes[ps])
             for impl, passes in runners.items() for ps in PASSES}
    out: dict[tuple[str, str], list[float]] = {k: [] for k in calls}
    for _ in range(repeat):
        for (impl, ps), n in calls.items():
            time.sleep(SETTLE_S)
            runners[impl][ps]()  # untimed: caches and clocks back up after the idle time
            out[impl, ps].append(_sample(runners[impl][ps], n))
    return out


def first_call_ms(cell: str) -> float:
    """Wall time of the very first numba forward+backward of ``cell`` in this process:
    the cache load (or the compile, when nothing is cached)."""
    runner = backend_runner("numba", cell, Shape("first", 2, 2, 2, 3), None)
    t0 = time.perf_counter()
    runner["forward+backward"]()
    return (time.perf_counter() - t0) * 1e3


# ----------------------------------------------------------------------------
# the command


def parse_shapes(names: list[str] | None) -> list[Shape]:
    if not names:
        return list(SHAPES.values())
    out = []
    for n in names:
        if n in SHAPES:
            out.append(SHAPES[n])
            continue
        try:
            T, B, I, H = (int(v) for v in n.split(","))  # noqa: E741
        except ValueError:
            raise ValueError(f"shapes: expected one of {', '.join(SHAPES)} or 'T,B,I,H', "
                             f"got {n!r}") from None
        if min(T, B, I, H) < 1:
            raise ValueError(f"shapes: expected positive sizes, got {n!r}")
        out.append(Shape(f"T{T}B{B}I{I}H{H}", T, B, I, H))
    return out


def _split(values: list[str] | None) -> list[str]:
    return [v for item in values or () for v in item.split(",") if v]


def _meta(threads: int, torch_too: bool, first: dict[str, float]) -> dict[str, Any]:
    import numba

    from ..backends.numba_cpu._vec import VECTOR_BYTES

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit,
            "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "dtype": "float32",
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "numba_first_call_ms": first,
            # the kernels' vector width: AVX2 and AVX-512 run different tiles (``_simd``)
            "vector_bytes": VECTOR_BYTES}
    if torch_too:
        import torch

        meta["torch"] = torch.__version__
    return meta


def _table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (cell, shape, implementation), both passes and both ratios."""
    by = {}
    for r in rows:
        by.setdefault((r["cell"], r["shape"], r["impl"]), {})[r["pass"]] = r
    torch_ms = {(c, s, r["pass"]): r["median_ms"] for (c, s, i), d in by.items()
                if i == "torch" for r in d.values()}
    head = ["cell", "shape", "sizes", "impl", "variant", "forward ms", "fwd+bwd ms",
            "torch/impl fwd", "torch/impl fwd+bwd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (cell, shape, impl), d in by.items():
        f, fb = d["forward"], d["forward+backward"]
        ratios = []
        for ps, r in (("forward", f), ("forward+backward", fb)):
            t = torch_ms.get((cell, shape, ps))
            ratios.append("" if t is None or impl == "torch" else f"{t / r['median_ms']:.2f}")
        lines.append(f"| {cell} | {shape} | {f['sizes']} | {impl} | {f['variant']} | "
                     f"{f['median_ms']:.4g} | {fb['median_ms']:.4g} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Bars of torch time / rnnkern time per shape, one panel per cell and pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    torch_ms = {(r["cell"], r["shape"], r["pass"]): r["median_ms"] for r in rows
                if r["impl"] == "torch"}
    impls = sorted({r["impl"] for r in rows if r["impl"] != "torch"})
    cells = [c for c in CELLS if any(r["cell"] == c for r in rows)]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(len(cells), 2, figsize=(11, 3 * len(cells)), squeeze=False)
    width = 0.8 / max(1, len(impls))
    for i, cell in enumerate(cells):
        for j, ps in enumerate(PASSES):
            ax = axes[i][j]
            for k, impl in enumerate(impls):
                vals = [torch_ms[cell, s, ps] / r["median_ms"]
                        for s in shapes for r in rows
                        if (r["cell"], r["shape"], r["impl"], r["pass"]) == (cell, s, impl, ps)
                        and (cell, s, ps) in torch_ms]
                ax.bar(np.arange(len(vals)) + k * width, vals, width, label=impl)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_yscale("log")
            # plain numbers (1.1, not 1.1x10^0): ratios often span less than a decade, where
            # the default labels the minor ticks in scientific notation; over more than
            # one, the decades alone are labelled
            plain = FuncFormatter(lambda v, _: f"{v:.3g}")
            lo, hi = ax.get_ylim()
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())
            ax.set_xticks(np.arange(len(shapes)) + width * (len(impls) - 1) / 2, shapes)
            ax.set_title(f"{cell} {ps}")
            ax.set_ylabel("torch time / rnnkern time")
            ax.legend(fontsize=8)
    fig.suptitle("torch time / rnnkern time per shape (above 1: rnnkern is faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    threads, torch_too = start_threads(args)
    first = {c: first_call_ms(c) for c in CELLS} if "numba" in names else {}
    cells = CELLS if args.cell == "all" else (args.cell,)
    rows = []
    # the table is printed as it fills, one shape at a time, and only once
    print("\n".join(_table([]).split("\n")[:2]), flush=True)
    for shape in parse_shapes(args.shapes):
        for cell in cells:
            runners = {}
            for n in names:
                for v in (variants or [None]) if n == "numba" else [None]:
                    runners[n if v is None else f"{n}:{v}"] = backend_runner(n, cell, shape, v)
            if torch_too:
                runners["torch"] = torch_runner(cell, shape)
            timings = time_interleaved(runners, args.repeat)
            # the kernel variant each backend ran (chosen by shape unless given)
            used = {impl: fns["variant"]() if "variant" in fns else ""
                    for impl, fns in runners.items()}
            for (impl, ps), samples in timings.items():
                rows.append({"cell": cell, "shape": shape.name, "sizes": shape.label(),
                             "T": shape.T, "B": shape.B, "I": shape.I, "H": shape.H,
                             "impl": impl, "variant": used[impl], "pass": ps,
                             "median_ms": statistics.median(samples) * 1e3,
                             "samples_ms": [s * 1e3 for s in samples]})
            print(_table([r for r in rows if (r["cell"], r["shape"]) == (cell, shape.name)]
                         ).split("\n", 2)[-1], flush=True)
    meta = _meta(threads, torch_too, first)
    if first:
        print("\nfirst numba call in this process (cache load or compile), ms: "
              + ", ".join(f"{c} {v:.0f}" for c, v in first.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return 0
