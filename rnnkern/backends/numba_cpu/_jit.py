"""The compile options every Numba kernel of this backend takes."""

from __future__ import annotations

#: fastmath flags of every kernel: reassociation lets LLVM vectorise the reductions
#: of the fused recurrent product; no nnan/ninf, so NaN and inf still propagate
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
#: options of every kernel: error_model="numpy" drops the ZeroDivisionError check that
#: would otherwise keep every loop containing a division from vectorising
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy"}
#: the rows schedules' LSTM backward kernel, whose pointwise math (``cells``) runs without
#: reassociation: it has no reduction to vectorise, and with it LLVM regrouped the products
#: of the o-gate's and the cell's gradients differently in the function compiled on its own
#: than in its callers' copies of it (optimised again with them); a process that compiles
#: runs the former, one that loads the kernels from Numba's cache the latter, so the two
#: gave different gradients
POINTWISE_JIT = {**JIT, "fastmath": FASTMATH - {"reassoc"}}
