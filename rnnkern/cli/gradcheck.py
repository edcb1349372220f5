"""``rnnkern gradcheck``: run the gradient-check suite and print one row per tensor.

``rnnkern gradcheck --model m.npz --data d.npz``: check a saved model's gradients
instead (``gradcheck.check_model``), one row per parameter. The data file (``.npz``)
holds ``x`` and ``target``, and optionally ``mask`` and ``lengths``.
"""

from __future__ import annotations

import argparse
import os
import zipfile

import numpy as np

from .. import backends
from ..gradcheck import Row, check_model, format_table, run_suite
from ..serialize import load

#: the arrays a --data file holds: required, then optional
DATA_KEYS = (("x", "target"), ("mask", "lengths"))

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
    model = p.add_argument_group("a saved model instead of the suite")
    model.add_argument("--model", metavar="M.NPZ",
                       help="check this model's gradients (a file of rnnkern.save), on "
                            "--backend if given once (default: the default backend)")
    model.add_argument("--data", metavar="D.NPZ",
                       help="with --model: .npz with x, target and optional mask, lengths")
    model.add_argument("--loss", choices=("mse", "cross_entropy"), default="mse")
    model.add_argument("--feedback", type=int, default=0, metavar="N",
                       help="free-running: the last N inputs are the model's own outputs")


def _table(rows: list[Row]) -> str:
    head = ("cell", "activation", "backend", "dtype", "options", "check", "tensor",
            "worst rel err", "tol", "result")
    body = [(r.cell, r.activation, r.backend, r.dtype, r.options, r.check, r.tensor,
             f"{r.error:.2e}", f"{r.tol:.0e}", "pass" if r.ok else "FAIL") for r in rows]
    return format_table(head, body)


def _worst_per_group(rows: list[Row]) -> list[Row]:
    groups: dict[tuple, Row] = {}
    for r in rows:
        key = (r.cell, r.activation, r.backend, r.dtype, r.options, r.check)
        best = groups.get(key)
        # a failing row always wins, then the larger error ratio
        if best is None or (not r.ok, r.error / r.tol) > (not best.ok, best.error / best.tol):
            groups[key] = r
    return list(groups.values())


def _read_data(path: str) -> dict[str, np.ndarray]:
    """x, target (and mask, lengths where present) of the --data file."""
    if not os.path.isfile(path):
        raise ValueError(f"--data: no such file {path!r}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"--data: {path} is not a readable .npz file ({e})") from e
    required, optional = DATA_KEYS
    wanted = (f"the arrays {', '.join(required)} and optionally {', '.join(optional)} "
              f"(np.savez(path, x=..., target=...))")
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"--data: {path} is a single array; expected an .npz of {wanted}")
    with z:
        data = {k: z[k] for k in z.files}
    missing = [k for k in required if k not in data]
    extra = sorted(set(data) - set(required) - set(optional))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        problems.append(f"unknown {', '.join(extra)}")
    if problems:
        raise ValueError(f"--data: {path} must hold {wanted}; {'; '.join(problems)}")
    return data


def run_model(args: argparse.Namespace) -> int:
    """``--model`` and ``--data``: print check_model's table; 1 when a parameter fails."""
    if args.model is None or args.data is None:
        raise ValueError("--model and --data: expected both (a saved model and its data), "
                         f"got only --{'model' if args.data is None else 'data'}")
    if args.backend and len(args.backend) > 1:
        raise ValueError(f"--backend: with --model, the one backend to load the model on, "
                         f"got {len(args.backend)}: {', '.join(args.backend)}")
    if not os.path.isfile(args.model):
        raise ValueError(f"--model: no such file {args.model!r}")
    model = load(args.model, backend=args.backend[0] if args.backend else None)
    report = check_model(model, **_read_data(args.data), loss=args.loss,
                         feedback=args.feedback, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


def run(args: argparse.Namespace) -> int:
    if args.model is not None or args.data is not None:
        return run_model(args)
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
