"""The compile options every Numba kernel of this backend takes."""

from __future__ import annotations

#: fastmath flags of every kernel: reassociation lets LLVM vectorise the reductions
#: of the fused recurrent product; no nnan/ninf, so NaN and inf still propagate
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
#: options of every kernel: error_model="numpy" drops the ZeroDivisionError check that
#: would otherwise keep every loop containing a division from vectorising
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy"}
#: the rows schedules' kernels (``_forward_rows``, ``_backward_rows``), whose pointwise math
#: (``cells``) runs without reassociation: it has no reduction to vectorise, and a kernel
#: called from two places (serially and from its parallel loop) is compiled on its own and
#: again inside each caller; with reassociation LLVM regrouped the LSTM's gradients
#: differently in the two, and a process that compiles runs the former while one that
#: loads Numba's cache runs the latter, so the two gave different bits
POINTWISE_JIT = {**JIT, "fastmath": FASTMATH - {"reassoc"}}
