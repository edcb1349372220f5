"""``rnnkern bench torch``: one PyTorch training step with ``rnnkern.torch.X`` against the
same step with ``torch.nn.X``, per cell and ``bench.SHAPES`` shape, on the CPU.

A step is what a PyTorch user runs: ``zero_grad``, the module's forward on a (T, B, I)
float32 batch, the MSE against a (T, B, H) target, ``backward``, ``Adam.step``. Both
modules hold the same weights (one ``state_dict``). Beside them, "kernels alone": rnnkern's
own forward+backward at that shape (``bench.backend_runner``), the part of the step that
runs outside torch; a step far above it would show torch's and Numba's thread pools
fighting. Timing is ``bench``'s: warm-up first, samples of every implementation
interleaved, each after ``bench.SETTLE_S`` of idle time, medians over ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from .bench import (
    CELLS,
    SETTLE_S,
    Shape,
    _calls_per_sample,
    _meta,
    _sample,
    backend_runner,
    parse_shapes,
    set_threads,
)

IMPLS = ("rnnkern.torch", "torch.nn", "kernels alone")
LR = 1e-3


def step_runners(cell: str, s: Shape) -> dict[str, Callable[[], Any]]:
    """impl -> one training step (or, for "kernels alone", rnnkern's forward+backward)."""
    import torch

    import rnnkern.torch as rkt

    name = cell.upper()
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(s.I, s.H)
    ours = getattr(rkt, name)(s.I, s.H)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s.T, s.B, s.I, generator=g)
    target = torch.randn(s.T, s.B, s.H, generator=g)

    def step(module: Any) -> Callable[[], Any]:
        opt = torch.optim.Adam(module.parameters(), lr=LR)

        def run() -> Any:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(module(x)[0], target).backward()
            opt.step()

        return run

    kernels = backend_runner("numba", cell, s, None)["forward+backward"]
    return {"rnnkern.torch": step(ours), "torch.nn": step(ref), "kernels alone": kernels}


def measure(runners: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """Seconds per call of every runner, ``repeat`` interleaved samples each."""
    for fn in runners.values():  # compile or cache load, first touch, Adam's state
        fn()
        fn()
    calls = {k: _calls_per_sample(fn) for k, fn in runners.items()}
    out: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeat):
        for k, fn in runners.items():
            time.sleep(SETTLE_S)
            fn()  # untimed: caches and clocks back up after the idle time
            out[k].append(_sample(fn, calls[k]))
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: a line per (cell, shape): step times, the ratio, the kernels' share."""
    head = ["cell", "shape", "sizes", "rnnkern.torch step ms", "torch.nn step ms",
            "torch.nn / rnnkern.torch", "kernels alone ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms = r["median_ms"]
        lines.append(f"| {r['cell']} | {r['shape']} | {r['sizes']} | "
                     f"{ms['rnnkern.torch']:.4g} | {ms['torch.nn']:.4g} | "
                     f"{ms['torch.nn'] / ms['rnnkern.torch']:.2f} | "
                     f"{ms['kernels alone']:.4g} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise ValueError(f"repeat: expected a positive number of samples, got {args.repeat}")
    if args.no_torch:
        raise ValueError("no-torch: 'bench torch' times torch modules; drop --no-torch")
    try:
        import torch  # noqa: F401 - before Numba's pool starts (see set_threads)
    except ImportError:
        raise ValueError("what: 'torch' needs PyTorch: pip install 'rnnkern[compare]'"
                         ) from None
    threads = args.threads or os.cpu_count() or 1
    set_threads(threads, True)
    cells = CELLS if args.cell == "all" else (args.cell,)
    rows: list[dict[str, Any]] = []
    print("\n".join(table([]).split("\n")[:2]), flush=True)  # the rows follow as they come
    for shape in parse_shapes(args.shapes):
        for cell in cells:
            samples = measure(step_runners(cell, shape), args.repeat)
            row = {"cell": cell, "shape": shape.name, "sizes": shape.label(), "T": shape.T,
                   "B": shape.B, "I": shape.I, "H": shape.H,
                   "median_ms": {k: statistics.median(v) * 1e3 for k, v in samples.items()},
                   "samples_ms": {k: [t * 1e3 for t in v] for k, v in samples.items()}}
            rows.append(row)
            print(table([row]).split("\n", 2)[-1], flush=True)
    if args.json:
        meta = _meta(threads, True, {})
        meta.update(step="zero_grad, forward, mse_loss, backward, Adam(lr=1e-3).step",
                    implementations=list(IMPLS))
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0
