"""``rnnkern demo [NAME] [--quick] [--out DIR]``: run one of the example tasks.

The examples live in ``rnnkern.examples`` (so that they run from an installed
package); ``examples/*.py`` in the repository are thin scripts calling them.
"""

from __future__ import annotations

import argparse
import importlib

from ..examples import DEFAULT, EXAMPLES
from ..examples._common import add_common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=DEFAULT, choices=sorted(EXAMPLES),
                        metavar="NAME", help="; ".join(f"{k}: {v}" for k, v in EXAMPLES.items())
                        + f" (default: {DEFAULT})")
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    argv = ["--out", args.out, "--seed", str(args.seed)]
    argv += ["--quick"] * args.quick + ["--progress"] * args.progress
    argv += ["--backend", args.backend] if args.backend else []
    importlib.import_module(f"rnnkern.examples.{args.name}").main(argv)
    return 0
