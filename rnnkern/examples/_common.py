"""What every example shares: its command line, timing, the plot file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from .. import backends


def parser(description: str) -> argparse.ArgumentParser:
    """--quick, --out DIR, --backend NAME, --seed N, --progress."""
    p = argparse.ArgumentParser(description=description)
    add_common(p)
    return p


def _backend(name: str) -> str:
    try:
        backends.get(name)
    except ValueError as e:  # bad option values get the usage message and exit code 2
        raise argparse.ArgumentTypeError(str(e)) from e
    return name


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _out(path: str) -> str:
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"expected a directory, got the file {path!r}")
    return path


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a few epochs only (CI, tests): checks that the loss falls")
    p.add_argument("--out", type=_out, default=".", metavar="DIR",
                   help="where to save the PNG plot")
    p.add_argument("--backend", type=_backend, default=None,
                   help=f"kernel backend (default: {backends.default()}, the fastest here)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of data, model and shuffling")
    p.add_argument("--progress", action="store_true", help="show tqdm progress bars")


def save_plot(out: str, name: str, draw: Callable[[Any], Any]) -> str | None:
    """Draw with ``draw(pyplot) -> figure`` and save ``out/name.png``; returns the path.

    Without matplotlib (it is the optional ``plot`` extra) the metrics still print
    and the plot is left out with a note saying how to get it.
    """
    try:
        import matplotlib
    except ImportError:
        print("plot: not saved, matplotlib is not installed (pip install 'rnnkern[plot]')")
        return None
    matplotlib.use("Agg")  # file output only: examples run headless (CI)
    import matplotlib.pyplot as plt

    fig = draw(plt)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"plot: {path}")
    return path
