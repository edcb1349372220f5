"""GPU benchmark: every CuPy kernel variant beside torch.nn.RNN/LSTM/GRU on cuDNN.

``run_gpu(args)`` is what ``rnnkern bench`` calls when "cupy" is among the requested
backends. All implementations run in the same process on the same shapes in float32;
each time is the median of ``args.repeat`` runs measured with CUDA events, after warm-up
runs that are not counted. Torch appears twice: with ``cudnn.allow_tf32 = False`` (the
same arithmetic as ours) and with PyTorch's default setting.

Rows of the JSON (``args.json``): one per (cell, shape, implementation, pass) with
``median_ms`` and ``status``: "ok"; "unsupported" (a ValueError: "persistent" asked for a
shape whose R does not fit on chip) or "failed" (any other error: a CUDA error,
"persistent" refusing a grid that cannot be resident), both with median_ms None and the
error in ``note``. One failure costs only its own rows: each row is printed as it is
measured, and the JSON is rewritten after every shape, so a run killed part-way keeps every
shape it finished.

``python -m rnnkern.cli.bench_cuda plot OUT.png RUN.json [RUN.json ...]`` draws the chart from
JSON files (the GPU machine has no matplotlib).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._validate import PARAMS
from ..backends import cupy_cuda
from ..backends.cupy_cuda.variants import VARIANTS
from ._bench import (
    CELLS,
    PASSES,
    SHAPE_GROUPS,
    Runner,
    Shape,
    parse_shapes,
    plot,
    problem,
    torch_runner,
    write_json,
)

WARMUP = 3


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
    names = tuple(v.strip() for item in ((variant,) if isinstance(variant, str) else variant)
                  for v in item.split(","))
    if "all" in names:
        return tuple(VARIANTS)
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
                rng: np.random.Generator) -> Runner:
    """pass -> a function running the CuPy backend once (forward, or forward + backward).

    lengths: (B,) or None; the problem's seed is drawn from ``rng``.
    """
    import cupy

    p = problem(cell, shape, seed=int(rng.integers(1 << 30)))
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


def _cupy_event() -> Any:
    import cupy

    return cupy.cuda.Event()


def _torch_event() -> Any:
    import torch

    return torch.cuda.Event(enable_timing=True)


def _failure(e: BaseException) -> tuple[str, str]:
    """(status, note) of a row whose implementation raised ``e``."""
    status = "unsupported" if isinstance(e, ValueError) else "failed"
    return status, f"{type(e).__name__}: {e}"


def bench_shape(cell: str, shape: Shape, variants: Iterable[str], repeat: int, torch_too: bool,
                seed: int = 0, emit: Callable[[dict[str, Any]], None] | None = None
                ) -> list[dict[str, Any]]:
    """Rows for one (cell, shape): every variant, then torch (TF32 off, then default).

    Whatever an implementation raises, while being set up or timed, becomes a row (see the
    module doc) and the next implementation runs. ``emit(row)`` is called for each row as
    soon as it is measured.
    """
    rng = np.random.default_rng(seed)
    lengths = _lengths(shape, rng)
    rows = []

    def row(impl: str, pass_: str, ms: float | None, status: str = "ok", note: str = "") -> None:
        rows.append({"cell": cell, "shape": shape.label(), "T": shape.T, "B": shape.B,
                     "I": shape.I, "H": shape.H, "varlen": shape.varlen, "dtype": "float32",
                     "impl": impl, "pass": pass_, "median_ms": ms, "status": status,
                     "note": note})
        if emit is not None:
            emit(rows[-1])

    def measure(impl: str, make: Callable[[], Runner],
                event: Callable[[], Any]) -> None:
        try:
            fns = make()
        except Exception as e:  # recorded as a row; the run goes on
            for pass_ in PASSES:
                row(impl, pass_, None, *_failure(e))
            return
        for pass_ in PASSES:
            try:
                row(impl, pass_, time_events(fns[pass_], repeat, event))
            except Exception as e:  # recorded as a row; the run goes on
                row(impl, pass_, None, *_failure(e))

    for variant in variants:
        measure(f"cupy-{variant}", lambda v=variant: cupy_runner(cell, shape, v, lengths, rng),
                _cupy_event)
    if torch_too:
        import torch

        default_tf32 = torch.backends.cudnn.allow_tf32
        for impl, tf32 in (("torch-cudnn-tf32off", False), ("torch-cudnn-default", default_tf32)):
            torch.backends.cudnn.allow_tf32 = tf32
            try:
                measure(impl, lambda: torch_runner(cell, shape, "cuda", lengths), _torch_event)
            finally:
                torch.backends.cudnn.allow_tf32 = default_tf32
    return rows


def _device_info(torch_too: bool) -> dict[str, Any]:
    """Device, driver and library versions (selfcheck.device_info) and the run's settings."""
    from ..backends.cupy_cuda.selfcheck import device_info

    info = {**device_info(), "variants": dict(VARIANTS), "warmup": WARMUP}
    if torch_too:
        import torch

        info["torch_default_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return info


TABLE_HEAD = f"{'cell':5} {'shape':28} {'impl':22} {'pass':17} {'median ms':>10}  status"


def _table_row(r: dict[str, Any]) -> str:
    ms = "-" if r["median_ms"] is None else f"{r['median_ms']:.3f}"
    line = f"{r['cell']:5} {r['shape']:28} {r['impl']:22} {r['pass']:17} {ms:>10}  {r['status']}"
    return line if r["status"] == "ok" else f"{line}: {r['note']}"


def _torch_usable(no_torch: bool) -> bool:
    if no_torch:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def run_gpu(args: argparse.Namespace) -> int:
    """Benchmark the CuPy backend (and torch on CUDA); print the table row by row, rewrite
    the JSON after every shape, plot at the end if asked.

    args: cell ("all" | name | list), shapes (None | [group or "T,B,I,H[,varlen]", ...]),
    repeat (timed runs per median), json (path or None), plot (path or None),
    no_torch (bool), variant (None | name | list, comma-separated or "all").
    Returns 0 when every row is "ok" or "unsupported", 1 when any "failed".
    """
    if not cupy_cuda.is_available():
        raise ValueError("backend: 'cupy' is not available here (no CUDA GPU "
                         "answers or CuPy is not installed)")
    cells = _cells(getattr(args, "cell", None))
    shapes = parse_shapes(args.shapes, SHAPE_GROUPS, varlen=True)
    variants = _variants(getattr(args, "variant", None))
    repeat = int(args.repeat)
    if repeat < 1:
        raise ValueError(f"repeat: expected a positive number of runs, got {repeat}")
    torch_too = _torch_usable(getattr(args, "no_torch", False))
    json_path = getattr(args, "json", None)
    meta = _device_info(torch_too)

    def emit(r: dict[str, Any]) -> None:
        print(_table_row(r), flush=True)

    print(TABLE_HEAD, flush=True)
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        for cell in cells:
            rows.extend(bench_shape(cell, shape, variants, repeat, torch_too, emit=emit))
        if json_path:
            write_json(json_path, meta, rows)
    if getattr(args, "plot", None):
        plot_rows(rows, args.plot)
    return int(any(r["status"] == "failed" for r in rows))


def plot_rows(rows: list[dict[str, Any]], path: str) -> None:
    """Median ms per shape, a bar per implementation, a panel per (cell, pass); rows that
    did not run ("unsupported", "failed") have no bar."""
    plot(rows, path, lambda r: r["median_ms"], "median ms", "median ms per shape (float32)")


def plot_files(out: str, paths: Iterable[str]) -> None:
    """The chart of ``plot_rows`` over the rows of every JSON file in ``paths``."""
    rows = []
    for path in paths:
        with open(path) as f:
            rows.extend(json.load(f)["rows"])
    plot_rows(rows, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnkern.cli.bench_cuda",
                                description="plot GPU benchmark JSON files")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("plot", help="draw the chart of one or more JSON files")
    q.add_argument("out", help="image path (.png)")
    q.add_argument("json", nargs="+", help="JSON files written by rnnkern bench --backend cupy")
    args = p.parse_args(argv)
    plot_files(args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
