"""The compile options every Numba kernel of this backend takes."""

from __future__ import annotations

#: fastmath flags of every kernel: reassociation lets LLVM vectorise the reductions
#: of the fused recurrent product; no nnan/ninf, so NaN and inf still propagate
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
#: options of every kernel: error_model="numpy" drops the ZeroDivisionError check that
#: would otherwise keep every loop containing a division from vectorising
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy"}
