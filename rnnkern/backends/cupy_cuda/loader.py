"""Kernel loader: assemble the ``.cu`` sources, compile them once with NVRTC, hand out kernels.

The sources live in ``kernels/`` (shipped as package data). Local ``#include "x.cuh"`` lines
are inlined here rather than resolved with ``-I``, so CuPy's on-disk compile cache, which
keys on the source text, sees every header. Each ``.cu`` file becomes one ``cupy.RawModule``
holding the float and double instantiations of every cell. The persistent kernels use no
cooperative-groups API (their grid barrier is their own), so the module is compiled
without ``enable_cooperative_groups``: some CuPy versions turn that flag into ``-rdc=true``
plus a link against ``libcudadevrt.a``, which pip-only CUDA installs lack. The engine
launches them cooperatively itself (``engine._launch_persistent``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

KERNEL_DIR = Path(__file__).with_name("kernels")

#: C type of each supported dtype
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: rnnkern cell -> the enum constant in common.cuh that selects it in a template
CELL_ENUMS = {"rnn": "rk::RNN", "lstm": "rk::LSTM", "gru": "rk::GRU"}
#: threads per block of the persistent kernels (``PERSISTENT_THREADS`` in persistent.cu)
PERSISTENT_THREADS = 256
#: batch rows one block of the fused-steps kernels computes (``FUSED_ROWS`` in fused.cu)
FUSED_ROWS = 4

#: kernel file -> the template kernels it defines
MODULES = {
    "pointwise.cu": ("cublas_forward_step", "cublas_backward_step"),
    "persistent.cu": ("persistent_forward", "persistent_backward"),
    "fused.cu": ("fused_forward_step", "fused_backward_step"),
}
#: NVRTC options of every module (CuPy adds ``-ftz=true`` and the arch itself)
OPTIONS = ("-std=c++17",)

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$')


def name_expression(kernel: str, dtype: Any, cell: str) -> str:
    """The C++ name of one template instantiation, e.g. ``cublas_forward_step<float, rk::LSTM>``."""
    return f"{kernel}<{CTYPES[np.dtype(dtype)]}, {CELL_ENUMS[cell]}>"


def name_expressions(filename: str) -> list[str]:
    """Every instantiation the loader takes from ``filename``: each kernel x dtype x cell."""
    return [name_expression(k, dt, cell)
            for k in MODULES[filename] for dt in CTYPES for cell in CELL_ENUMS]


def assemble(filename: str) -> str:
    """The source of ``kernels/<filename>`` with its local includes inlined, each once."""
    seen: set[str] = set()

    def expand(name: str) -> list[str]:
        if name in seen:
            return []
        seen.add(name)
        out = []
        for line in (KERNEL_DIR / name).read_text().splitlines():
            m = _INCLUDE.match(line)
            if m:
                out.extend(expand(m.group(1)))
            elif line.strip() != "#pragma once":
                out.append(line)
        return out

    return "\n".join(expand(filename)) + "\n"


@functools.cache
def module(filename: str) -> Any:
    """The compiled ``cupy.RawModule`` of one kernel file (compiled on first use, then cached)."""
    import cupy

    return cupy.RawModule(code=assemble(filename), options=OPTIONS,
                          name_expressions=name_expressions(filename))


@functools.cache
def kernel(name: str, dtype: Any, cell: str) -> Any:
    """The ``cupy.RawKernel`` of one instantiation, e.g.
    ``kernel("persistent_forward", float32, "gru")``."""
    filename = next(f for f, names in MODULES.items() if name in names)
    return module(filename).get_function(name_expression(name, dtype, cell))
