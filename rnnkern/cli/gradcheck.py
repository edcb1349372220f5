"""``rnnkern gradcheck``: run the gradient-check suite and print one row per tensor."""

from __future__ import annotations

import argparse

from .. import backends
from ..gradcheck import Row, run_suite

_BOTH = {"yes": (True,), "no": (False,), "both": (False, True)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cell", choices=("rnn", "lstm", "gru", "all"), default="all")
    p.add_argument("--backend", action="append", choices=tuple(backends.REGISTRY),
                   help="backend to check (repeatable; default: every available one)")
    p.add_argument("--lengths", choices=tuple(_BOTH), default="both",
                   help="variable-length batches: yes, no or both (default)")
    p.add_argument("--state", choices=tuple(_BOTH), default="both",
                   help="initial state h0/c0 and final-state gradients dhT/dcT: yes, no, both")
    p.add_argument("--size", type=int, nargs=4, metavar=("T", "B", "I", "H"), default=(4, 3, 3, 5))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all-rows", action="store_true",
                   help="print every tensor's row (default: the worst row per case and check)")


def _table(rows: list[Row]) -> str:
    head = ("cell", "activation", "backend", "dtype", "options", "check", "tensor",
            "worst rel err", "tol", "result")
    body = [(r.cell, r.activation, r.backend, r.dtype, r.options, r.check, r.tensor,
             f"{r.error:.2e}", f"{r.tol:.0e}", "pass" if r.ok else "FAIL") for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _worst_per_group(rows: list[Row]) -> list[Row]:
    groups: dict[tuple, Row] = {}
    for r in rows:
        key = (r.cell, r.activation, r.backend, r.dtype, r.options, r.check)
        best = groups.get(key)
        # a failing row always wins, then the larger error ratio
        if best is None or (not r.ok, r.error / r.tol) > (not best.ok, best.error / best.tol):
            groups[key] = r
    return list(groups.values())


def run(args: argparse.Namespace) -> int:
    for name in args.backend or ():
        backends.get(name)  # unavailable -> ValueError -> usage error, exit 2
    cells = ("rnn", "lstm", "gru") if args.cell == "all" else (args.cell,)
    if min(args.size) < 1:
        raise ValueError(f"--size: expected T B I H >= 1, got {' '.join(map(str, args.size))}")
    rows = run_suite(cells, tuple(args.backend) if args.backend else None,
                     _BOTH[args.lengths], _BOTH[args.state], tuple(args.size), args.seed)
    print(_table(rows if args.all_rows else _worst_per_group(rows)))
    failed = [r for r in rows if not r.ok]
    fd = sorted(r.error for r in rows if r.check in ("fd", "per-step"))
    print(f"\n{len(rows)} checks, {len(failed)} failed; finite differences (float64): "
          f"worst {fd[-1]:.1e}, median {fd[len(fd) // 2]:.1e}")
    return 1 if failed else 0
