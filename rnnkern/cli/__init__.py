"""The ``rnnkern`` command: ``gradcheck``, ``bench`` (kernels, ``train``, ``torch``) and ``demo``.

Each subcommand lives in its own module with ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up. Bad arguments get argparse's
usage message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
COMMANDS = {
    "gradcheck": ("rnnkern.cli.gradcheck",
                  "run the gradient-check suite, or check a saved model's gradients "
                  "(--model, --data); non-zero exit on failure"),
    "demo": ("rnnkern.cli.demo", "train an example task, print its metrics, save a plot"),
    "bench": ("rnnkern.cli.bench", "time forward and forward+backward per backend, vs PyTorch"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkern", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args)
    except ValueError as e:  # a bad option value that argparse could not see
        args._parser.error(str(e))  # the subcommand's usage line, then exit 2


if __name__ == "__main__":
    sys.exit(main())
