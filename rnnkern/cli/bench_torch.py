"""``rnnkern bench torch``: one PyTorch training step with ``rnnkern.torch.X`` against the
same step with ``torch.nn.X``, per cell and ``_bench.SHAPES`` shape, on the CPU.

A step is what a PyTorch user runs: ``zero_grad``, the module's forward on a (T, B, I)
float32 batch, the MSE against a (T, B, H) target, ``backward``, ``Adam.step``. Both
modules hold the same weights (one ``state_dict``). Beside them, "kernels alone": rnnkern's
own forward+backward at that shape (``bench.backend_runner``), the part of the step that
runs outside torch; a step far above it would show torch's and Numba's thread pools
fighting. Timing is ``bench``'s (``_bench.time_interleaved``): warm-up first, samples of
every implementation interleaved, each after ``_bench.SETTLE_S`` of idle time, medians over
``--repeat``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

from ._bench import (
    CELLS,
    SHAPES,
    Shape,
    markdown_head,
    markdown_line,
    parse_shapes,
    time_interleaved,
    write_json,
)
from .bench import backend_runner, cpu_meta, start_threads

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


#: the table's columns: a line per (cell, shape)
HEAD = ("cell", "shape", "sizes", "rnnkern.torch step ms", "torch.nn step ms",
        "torch.nn / rnnkern.torch", "kernels alone ms")


def table_line(row: dict[str, Any]) -> str:
    """The Markdown line under ``HEAD`` of one row: step times, the ratio, the kernels'."""
    ms = row["median_ms"]
    return markdown_line([row["cell"], row["shape"], row["sizes"],
                          f"{ms['rnnkern.torch']:.4g}", f"{ms['torch.nn']:.4g}",
                          f"{ms['torch.nn'] / ms['rnnkern.torch']:.2f}",
                          f"{ms['kernels alone']:.4g}"])


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise ValueError(f"repeat: expected a positive number of samples, got {args.repeat}")
    if args.no_torch:
        raise ValueError("no-torch: 'bench torch' times torch modules; drop --no-torch")
    try:
        import torch  # noqa: F401 - here only to say what is missing
    except ImportError:
        raise ValueError("what: 'torch' needs PyTorch: pip install 'rnnkern[compare]'"
                         ) from None
    threads, _ = start_threads(args)
    cells = CELLS if args.cell == "all" else (args.cell,)
    rows: list[dict[str, Any]] = []
    print(markdown_head(HEAD), flush=True)  # the rows follow as they come
    for shape in parse_shapes(args.shapes, SHAPES):
        for cell in cells:
            samples = time_interleaved(step_runners(cell, shape), args.repeat)
            row = {"cell": cell, "shape": shape.title(), "sizes": shape.label(), "T": shape.T,
                   "B": shape.B, "I": shape.I, "H": shape.H,
                   "median_ms": {k: statistics.median(v) * 1e3 for k, v in samples.items()},
                   "samples_ms": {k: [t * 1e3 for t in v] for k, v in samples.items()}}
            rows.append(row)
            print(table_line(row), flush=True)
    if args.json:
        meta = cpu_meta(threads, True, {})
        meta.update(step="zero_grad, forward, mse_loss, backward, Adam(lr=1e-3).step",
                    implementations=list(IMPLS))
        write_json(args.json, meta, rows)
    return 0
