"""``rnnkern bench train``: seconds per optimiser step of ``fit`` against an idiomatic
PyTorch training loop on the same model, data, batch size, loss and thread count.

Each workload is Dense(F, H, tanh) -> cell(H) -> Dense(H, F), trained with Adam (lr 1e-3,
global-norm clipping 1.0) on the MSE over every step of random (T, B, F) float32 data.
One sample is one epoch of ``STEPS_MIN_S`` or more of optimiser steps: ``fit(..., epochs=1)``
over a data set of whole batches for rnnkern (its shuffling, batching and checks
included), and for torch the loop a PyTorch user writes (``randperm``, index the batch,
``zero_grad``, forward, ``mse_loss``, ``backward``, ``clip_grad_norm_``, ``step``). Samples
of the two are interleaved, after warm-up and ``bench.SETTLE_S`` of idle time each, and the
table reports medians. Beside them, "stack alone": the same model's forward, loss and
backward on one batch called directly (no optimiser, no ``fit``), the work ``fit`` wraps.
``--busy N`` runs the whole measurement again with N other processes spinning on the CPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .._threads import held
from ._bench import (
    SETTLE_S,
    calls_per_sample,
    markdown_head,
    markdown_line,
    seconds_per_call,
    write_json,
)
from .bench import cpu_meta, start_threads


class Workload(NamedTuple):
    name: str
    cell: str  # "rnn" | "lstm" | "gru"
    F: int  # input and output features
    H: int  # the Dense layer's width and the cell's hidden size
    T: int
    B: int  # batch size

    def label(self) -> str:
        return (f"Dense({self.F},{self.H},tanh) -> {self.cell.upper()}({self.H}) -> "
                f"Dense({self.H},{self.F}), T{self.T} B{self.B}")


WORKLOADS = {w.name: w for w in (
    Workload("seed", "lstm", 1, 32, 9, 16),
    Workload("medium", "lstm", 64, 256, 64, 32),
    Workload("long", "gru", 8, 64, 256, 8),
    Workload("wide", "lstm", 125, 320, 100, 64),
)}

#: a sample runs optimiser steps for at least this long (one fit call, one epoch)
STEPS_MIN_S = 0.25
LR, CLIP = 1e-3, 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``rnnkern bench train`` (beside bench's --threads, --repeat, --json,
    --no-torch)."""
    g = p.add_argument_group("bench train")
    g.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), metavar="NAME",
                   help=f"training workloads ({', '.join(WORKLOADS)}; default: all)")
    g.add_argument("--busy", type=int, default=0, metavar="N",
                   help="also measure with N other processes spinning on the CPU")


def _data(w: Workload, batches: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (w.T, w.B * batches, w.F)
    return (rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(shape).astype(np.float32))


def rnnkern_runner(w: Workload, batches: int, backend: str = "numba"
                   ) -> dict[str, Callable[[], Any]]:
    """"fit": one epoch of ``batches`` optimiser steps; "alone": forward, loss, backward of
    one batch, no optimiser."""
    import rnnkern as rk

    cell = {"rnn": rk.RNN, "lstm": rk.LSTM, "gru": rk.GRU}[w.cell]
    model = rk.Sequential(rk.Dense(w.F, w.H, "tanh"), cell(w.H, w.H), rk.Dense(w.H, w.F),
                          backend=backend, seed=0)
    opt = rk.Adam(model.parameters(), lr=LR, clip_norm=CLIP)
    x, target = _data(w, batches)
    xb, tb = np.ascontiguousarray(x[:, :w.B]), np.ascontiguousarray(target[:, :w.B])
    every_step = np.ones((w.T, w.B), np.float32)

    def fit() -> Any:
        return rk.fit(model, opt, x, target, epochs=1, batch_size=w.B, progress=False)

    def alone() -> Any:
        with held(model):  # as fit holds it: one thread pool in charge
            y, _, cache = model.forward(xb)
            _, dy = rk.losses.mse(y, tb, every_step)
            return model.backward(dy, None, cache)

    return {"fit": fit, "alone": alone}


def torch_runner(w: Workload, batches: int) -> dict[str, Callable[[], Any]]:
    import torch

    torch.manual_seed(0)
    cell = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[w.cell]

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = torch.nn.Linear(w.F, w.H)
            self.rnn = cell(w.H, w.H)
            self.out = torch.nn.Linear(w.H, w.F)

        def forward(self, x: Any) -> Any:
            return self.out(self.rnn(torch.tanh(self.inp(x)))[0])

    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    x, target = (torch.from_numpy(a) for a in _data(w, batches))

    def fit() -> Any:
        for idx in torch.randperm(x.shape[1]).split(w.B):
            xb, tb = x[:, idx], target[:, idx]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), tb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()

    def alone() -> Any:
        for p in model.parameters():
            p.grad = None
        torch.nn.functional.mse_loss(model(x[:, :w.B]), target[:, :w.B]).backward()

    return {"fit": fit, "alone": alone}


def measure(w: Workload, repeat: int, torch_too: bool) -> dict[str, dict[str, list[float]]]:
    """impl -> {"fit": seconds per step, "alone": seconds per call}, ``repeat`` samples."""
    probe = rnnkern_runner(w, 2)
    for _ in range(2):  # compile or cache load, first touch
        probe["fit"]()
    per_step = seconds_per_call(probe["fit"]) / 2
    batches = max(4, math.ceil(STEPS_MIN_S / max(per_step, 1e-6)))
    runners = {"rnnkern": rnnkern_runner(w, batches)}
    if torch_too:
        runners["torch"] = torch_runner(w, batches)
    for fns in runners.values():
        fns["fit"]()
        fns["alone"]()
    alone_calls = {impl: calls_per_sample(f["alone"], 0.05) for impl, f in runners.items()}
    out: dict[str, dict[str, list[float]]] = {i: {"fit": [], "alone": []} for i in runners}
    for _ in range(repeat):
        for impl, fns in runners.items():
            time.sleep(SETTLE_S)
            out[impl]["fit"].append(seconds_per_call(fns["fit"]) / batches)
            time.sleep(SETTLE_S)
            out[impl]["alone"].append(seconds_per_call(fns["alone"], alone_calls[impl]))
    return out


def _rows(load: int, w: Workload, samples: dict[str, dict[str, list[float]]]) -> list[dict]:
    return [{"workload": w.name, "model": w.label(), "busy": load, "impl": impl,
             "fit_ms_per_step": statistics.median(s["fit"]) * 1e3,
             "alone_ms": statistics.median(s["alone"]) * 1e3,
             "fit_samples_ms": [v * 1e3 for v in s["fit"]],
             "alone_samples_ms": [v * 1e3 for v in s["alone"]]}
            for impl, s in samples.items()]


#: the table's columns: a line per (busy, workload)
HEAD = ("busy", "workload", "rnnkern fit ms/step", "rnnkern stack alone ms", "fit / alone",
        "torch fit ms/step", "torch/rnnkern")


def table_lines(rows: list[dict]) -> str:
    """The Markdown lines under ``HEAD``: a line per (busy, workload) of ``rows``, both
    implementations and the ratio."""
    by = {(r["busy"], r["workload"], r["impl"]): r for r in rows}
    lines = []
    for busy, name in dict.fromkeys((r["busy"], r["workload"]) for r in rows):
        ours, theirs = by[busy, name, "rnnkern"], by.get((busy, name, "torch"))
        fit = ours["fit_ms_per_step"]
        t = "" if theirs is None else f"{theirs['fit_ms_per_step']:.4g}"
        ratio = "" if theirs is None else f"{theirs['fit_ms_per_step'] / fit:.2f}"
        lines.append(markdown_line([busy, name, f"{fit:.4g}", f"{ours['alone_ms']:.4g}",
                                    f"{fit / ours['alone_ms']:.2f}", t, ratio]))
    return "\n".join(lines)


def _spinners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise ValueError(f"repeat: expected a positive number of samples, got {args.repeat}")
    if args.busy < 0:
        raise ValueError(f"busy: expected a number of processes >= 0, got {args.busy}")
    threads, torch_too = start_threads(args)
    workloads = [WORKLOADS[n] for n in args.workloads or WORKLOADS]
    rows: list[dict] = []
    print(markdown_head(HEAD), flush=True)  # the rows follow as they come
    for load in sorted({0, args.busy}):
        spinning = _spinners(load)
        try:
            for w in workloads:
                new = _rows(load, w, measure(w, args.repeat, torch_too))
                rows += new
                print(table_lines(new), flush=True)
        finally:
            for p in spinning:
                p.kill()
                p.wait()
    if args.json:
        meta = cpu_meta(threads, torch_too, {})
        meta["workloads"] = {w.name: w.label() for w in workloads}
        write_json(args.json, meta, rows)
    return 0
