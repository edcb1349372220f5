"""GPU benchmark: every CuPy kernel variant beside torch.nn.RNN/LSTM/GRU on cuDNN.

``run_gpu(args)`` is what ``rnnkern bench`` calls when "cupy" is among the requested
backends. All implementations run in the same process on the same shapes in float32;
each time is the median of ``args.repeat`` runs measured with CUDA events, after warm-up
runs that are not counted. Torch appears twice: with ``cudnn.allow_tf32 = False`` (the
same arithmetic as ours) and with PyTorch's default setting.

Rows of the JSON (``args.json``): one per (shape, cell, implementation, pass) with
``median_ms`` (None with a ``note`` when an implementation cannot run that shape).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from .backends import cupy_cuda
from .backends.cupy_cuda.variants import VARIANTS
from .bench import CELLS, PASSES
from .gradcheck import PARAMS

WARMUP = 3


class Shape(NamedTuple):
    T: int
    B: int
    I: int  # noqa: E741 - the contract's name
    H: int
    varlen: bool = False  # lengths uniform in [T/4, T]

    def label(self) -> str:
        return f"T{self.T} B{self.B} I{self.I} H{self.H}" + (" varlen" if self.varlen else "")


#: the GPU shape set: B x H grid at T=256, I=H; the named extra rows; one variable-length row
GPU_SHAPES = (
    [Shape(256, B, H, H) for B in (1, 8, 64, 256) for H in (64, 256, 1024)]
    + [Shape(100, 64, 125, 320), Shape(150, 16, 256, 256), Shape(25, 64, 512, 512),
       Shape(1000, 16, 128, 128), Shape(512, 1, 256, 512), Shape(256, 64, 256, 256, True)]
)


def parse_shapes(shapes: Any) -> list[Shape]:
    """None -> GPU_SHAPES; otherwise each item "T,B,I,H" (or a 4-tuple), optional ",varlen"."""
    if shapes is None:
        return list(GPU_SHAPES)
    out = []
    for s in shapes:
        parts = s.replace("x", ",").split(",") if isinstance(s, str) else list(s)
        varlen = bool(parts) and str(parts[-1]).strip() == "varlen"
        nums = parts[:-1] if varlen else parts
        try:
            dims = [int(p) for p in nums]
        except ValueError:
            dims = []
        if len(dims) != 4 or min(dims) < 1:
            raise ValueError(f"shapes: expected 'T,B,I,H' (optionally ',varlen') with positive "
                             f"sizes, got {s!r}")
        out.append(Shape(*dims, varlen))
    return out


def _cells(cell: Any) -> tuple[str, ...]:
    if cell in (None, "all"):
        return CELLS
    names = (cell,) if isinstance(cell, str) else tuple(cell)
    bad = [c for c in names if c not in CELLS]
    if bad:
        raise ValueError(f"cell: expected 'all' or some of {CELLS}, got {bad}")
    return names


def _variants(variant: Any) -> tuple[str, ...]:
    if variant is None:
        return tuple(VARIANTS)
    names = (variant,) if isinstance(variant, str) else tuple(variant)
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ValueError(f"variant: expected some of {tuple(VARIANTS)}, got {bad}")
    return names


def time_events(fn: Callable[[], Any], repeat: int, event: Callable[[], Any]) -> float:
    """Median milliseconds of ``fn`` over ``repeat`` runs, by CUDA events, warm-up excluded."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeat):
        start, end = event(), event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) if hasattr(start, "elapsed_time")
                     else _cupy_elapsed(start, end))
    return statistics.median(times)


def _cupy_elapsed(start: Any, end: Any) -> float:
    import cupy

    return cupy.cuda.get_elapsed_time(start, end)


def _lengths(shape: Shape, rng: np.random.Generator) -> np.ndarray | None:
    if not shape.varlen:
        return None
    return rng.integers(max(1, shape.T // 4), shape.T + 1, size=shape.B)


# ----------------------------------------------------------------------------
# the implementations


def cupy_runner(cell: str, shape: Shape, variant: str, lengths: Any,
                rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    """pass -> a function running the CuPy backend once (forward, or forward + backward)."""
    import cupy

    from .gradcheck import make_problem

    p = make_problem(cell, T=shape.T, B=shape.B, I=shape.I, H=shape.H, h0=False,
                     dstate=False, seed=int(rng.integers(1 << 30))).astype(np.float32)
    x = cupy.asarray(p.inputs["x"])
    params = [cupy.asarray(p.params[k]) for k in PARAMS[cell]]
    dy = cupy.asarray(p.out_grads["dy"])
    lens = None if lengths is None else cupy.asarray(lengths)
    fwd = getattr(cupy_cuda, f"{cell}_forward")
    bwd = getattr(cupy_cuda, f"{cell}_backward")
    state = (None, None) if cell == "lstm" else (None,)

    def forward() -> Any:  # an inference pass, as torch's under no_grad
        return fwd(x, *state, *params, lengths=lens, training=False, variant=variant)

    def both() -> Any:
        _, _, cache = fwd(x, *state, *params, lengths=lens, variant=variant)
        return bwd(dy, None, cache, variant=variant)

    return {"forward": forward, "forward+backward": both}


def torch_runner(cell: str, shape: Shape, lengths: Any) -> dict[str, Callable[[], Any]]:
    """pass -> a function running torch.nn.<cell> on CUDA (cuDNN) once."""
    import torch

    mod = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    net = mod(shape.I, shape.H).cuda()
    x = torch.randn(shape.T, shape.B, shape.I, device="cuda", requires_grad=True)
    if lengths is None:
        def run() -> Any:
            return net(x)[0]
    else:
        lens = torch.as_tensor(lengths)
        pack = torch.nn.utils.rnn.pack_padded_sequence

        def run() -> Any:
            return net(pack(x, lens, enforce_sorted=False))[0].data
    dy = torch.randn_like(run())

    def forward() -> Any:
        with torch.no_grad():
            return run()

    def both() -> Any:
        run().backward(dy)

    return {"forward": forward, "forward+backward": both}


def _cupy_event() -> Any:
    import cupy

    return cupy.cuda.Event()


def _torch_event() -> Any:
    import torch

    return torch.cuda.Event(enable_timing=True)


def bench_shape(cell: str, shape: Shape, variants: Iterable[str], repeat: int, torch_too: bool,
                seed: int = 0) -> list[dict[str, Any]]:
    """Rows for one (cell, shape): every variant, then torch (TF32 off, then default)."""
    rng = np.random.default_rng(seed)
    lengths = _lengths(shape, rng)
    rows = []

    def row(impl: str, pass_: str, ms: float | None, note: str = "") -> None:
        rows.append({"cell": cell, "shape": shape.label(), "T": shape.T, "B": shape.B,
                     "I": shape.I, "H": shape.H, "varlen": shape.varlen, "dtype": "float32",
                     "impl": impl, "pass": pass_, "median_ms": ms, "note": note})

    for variant in variants:
        fns = cupy_runner(cell, shape, variant, lengths, rng)
        for pass_ in PASSES:
            try:
                row(f"cupy-{variant}", pass_, time_events(fns[pass_], repeat, _cupy_event))
            except ValueError as e:  # v2 asked for a shape whose R does not fit on chip
                row(f"cupy-{variant}", pass_, None, str(e))
    if torch_too:
        import torch

        default_tf32 = torch.backends.cudnn.allow_tf32
        for impl, tf32 in (("torch-cudnn-tf32off", False), ("torch-cudnn-default", default_tf32)):
            torch.backends.cudnn.allow_tf32 = tf32
            try:
                fns = torch_runner(cell, shape, lengths)
                for pass_ in PASSES:
                    row(impl, pass_, time_events(fns[pass_], repeat, _torch_event))
            finally:
                torch.backends.cudnn.allow_tf32 = default_tf32
    return rows


def _device_info(torch_too: bool) -> dict[str, Any]:
    import cupy

    info = {"device": cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
            .decode(), "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime
            .runtimeGetVersion(), "python": platform.python_version(),
            "variants": dict(VARIANTS), "warmup": WARMUP}
    if torch_too:
        import torch

        info.update(torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                    torch_default_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return info


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """One panel per (cell, pass): median ms per shape, one bar per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["cell"], r["pass"]) for r in rows})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 3.2 * len(panels)), squeeze=False)
    for ax, (cell, pass_) in zip(axes[:, 0], panels):
        sel = [r for r in rows if r["cell"] == cell and r["pass"] == pass_]
        shapes = list(dict.fromkeys(r["shape"] for r in sel))
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            ms = {r["shape"]: r["median_ms"] for r in sel if r["impl"] == impl}
            xs = [i + k * width for i, s in enumerate(shapes) if ms.get(s) is not None]
            ys = [ms[s] for s in shapes if ms.get(s) is not None]
            ax.bar(xs, ys, width, label=impl)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes,
                      rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("median ms")
        ax.set_title(f"{cell} {pass_} (float32)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'cell':5} {'shape':28} {'impl':22} {'pass':17} {'median ms':>10}"]
    for r in rows:
        ms = "-" if r["median_ms"] is None else f"{r['median_ms']:.3f}"
        lines.append(f"{r['cell']:5} {r['shape']:28} {r['impl']:22} {r['pass']:17} {ms:>10}")
    return "\n".join(lines)


def run_gpu(args: argparse.Namespace) -> int:
    """Benchmark the CuPy backend (and torch on CUDA); print a table, write JSON and plot.

    args: cell ("all" | name | list), shapes (None | ["T,B,I,H[,varlen]", ...]),
    repeat (timed runs per median), json (path or None), plot (path or None),
    no_torch (bool), variant (None | name | list).
    """
    if not cupy_cuda.is_available():
        raise ValueError("backend: 'cupy' is not available on this machine (no CUDA GPU "
                         "answers or CuPy is not installed)")
    cells, shapes = _cells(getattr(args, "cell", None)), parse_shapes(args.shapes)
    variants = _variants(getattr(args, "variant", None))
    repeat = int(args.repeat)
    if repeat < 1:
        raise ValueError(f"repeat: expected a positive number of runs, got {repeat}")
    torch_too = not getattr(args, "no_torch", False)
    if torch_too:
        try:
            import torch
        except ImportError:
            torch_too = False
        else:
            torch_too = torch.cuda.is_available()
    rows = []
    for shape in shapes:
        for cell in cells:
            rows.extend(bench_shape(cell, shape, variants, repeat, torch_too))
    print(_table(rows))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"meta": _device_info(torch_too), "rows": rows}, f, indent=1)
    if getattr(args, "plot", None):
        plot(rows, args.plot)
    return 0
