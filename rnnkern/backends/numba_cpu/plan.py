"""Which schedule a kernel call runs, and on how many row blocks.

A schedule is the way a call walks the batch and makes its products; the thread count is
a separate setting (``threads``): the rows schedules split the batch into row blocks, one
per Numba thread, each running every step of its rows. ``choose`` picks both by shape
where they are not given; the thresholds below are its rules, each with the measurement
behind it in benchmarks/README.md.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba

from ._vec import VECTOR_BYTES

#: schedule -> one-line description
VARIANTS = {
    "rows-fused": "the recurrent product in the kernel's own loop, row by row (no BLAS per "
                  "step), x @ W for all steps before the loop",
    "batch-inner": "forward and backward with the batch as the innermost axis, on explicit "
                   "vectors over rows padded to whole vectors, the cache kept in that layout "
                   "(for tiny H, where a row of H units is shorter than a vector)",
    "rows-packed": "the per-step product on a register-blocked SIMD micro-kernel over R "
                   "packed once per call (``_simd``), x @ W for all steps before the loop",
    "rows-packed-stepped": "as rows-packed, each step's input part x[t] @ W on the "
                           "micro-kernel too, over a packed W (a step's gates stay in cache)",
    "lone-row": "forward one row at a time (for a lone row, B = 1), each step's "
                "pre-activations in registers a block of units at a time over W and R packed "
                "by unit blocks (``lone_row``); the backward as rows-packed where H is a "
                "multiple of PACKED_LONE_ROW_H, else as rows-fused",
}

#: the schedules that split the batch into row blocks over the threads
ROWS = ("rows-fused", "rows-packed", "rows-packed-stepped")


class Plan(NamedTuple):
    """How a kernel call runs: the schedule, its row blocks, and what they mean for the
    kernels."""

    name: str
    chunks: int  # row blocks, one per Numba thread in parallel when > 1
    fused: bool  # the per-step product in the kernel's own loop, row by row
    packed: bool  # the per-step product on ``_simd``'s micro-kernel over a packed R
    stepped: bool  # the input part x[t] @ W made in each step (packed), not before the loop


#: (fused, packed, stepped) of each schedule (batch-inner: rows-fused's, for a backward on
#: rows, see ``numba_cpu._rows_layout``; lone-row: set by H in ``_shape_plan``)
_FLAGS = {"rows-fused": (True, False, False), "batch-inner": (True, False, False),
          "rows-packed": (False, True, False), "rows-packed-stepped": (False, True, True),
          "lone-row": (False, True, False)}

#: hidden sizes up to this run rows-fused: a product call per step costs more than it saves
FUSED_MAX_H = 32
#: hidden sizes up to this run rows-fused in row blocks wherever there are two rows per
#: thread: its own loop beats a BLAS call per step (B32 H64: 1.1-1.4x)
FUSED_PARALLEL_MAX_H = 64
#: with AVX-512, float32 hidden sizes in (FUSED_MAX_H, FUSED_PARALLEL_MAX_H] that are
#: whole pairs of the micro-kernel's panels (H64) run rows-packed-stepped instead: the
#: 4 x 2-panel tile there beats the fused loop (LSTM B32 H64 forward 1.5x; see
#: benchmarks/README.md, packed products at small H); other sizes, float64 (whose pointwise
#: math dominates) and AVX2 stay fused
PACKED_SMALL_H_VECTOR_BYTES = 64
#: W and R of at most this many bytes together, (I + H) * G*H * itemsize, have the input
#: part made in each step (rows-packed-stepped), where each row block is whole 4-row tiles:
#: beyond it W no longer stays in cache beside R (see benchmarks/README.md, input part in
#: the steps)
STEPPED_MAX_BYTES = 10 << 20
#: rows per row block from which the input part is made in each step: a step's fewer rows
#: stream all of W for too little work (LSTM B32 H256 in blocks of 16: 1.1x slower)
STEPPED_MIN_ROWS = 32
#: a lone row (B=1) with H up to this runs lone-row; from H128 the rows schedules are as
#: fast (see benchmarks/README.md, lone row in registers)
UNITS_MAX_H = 64
#: a lone row's backward with H a multiple of this (R.T then whole panels of the packed
#: product, no columns left over) runs on the packed product, else on the fused loop: with
#: columns left over (H=24) the packed product ran 2x slower
PACKED_LONE_ROW_H = 16
#: inputs up to this many have lone-row's steps make their own input part, more have it
#: made for all steps before the loop (``lone_row.pack_units``)
UNITS_IN_STEP_MAX_I = 16
#: hidden sizes up to this, with at least BATCH_INNER_MIN_B rows, run batch-inner
BATCH_INNER_MAX_H = 8
BATCH_INNER_MIN_B = 8
#: rows x gate columns per step below which threads cost more than they save
PARALLEL_MIN_WORK = 16384
#: multiply-adds of a whole call, T * B * G*H * (H + I), below which a call chosen by shape
#: runs serially: one wait for a descheduled thread on a busy machine costs more than a
#: second thread saves on a call this short (B16 H64 GRU beside one busy process: 6x slower
#: split)
PARALLEL_MIN_CALL_MACS = 1 << 24
#: multiply-adds of a product over all steps (input projection, weight gradients) from
#: which it is split into row blocks over the Numba threads where OpenBLAS runs one thread:
#: below it a product takes less time serially than a parallel region can cost on a busy
#: machine, waiting for a descheduled thread
GEMM_PARALLEL_MIN_MACS = 1 << 23
#: multiply-adds of a weight-gradient or Dense product over all steps from which it runs on
#: the packed micro-kernel (``_simd.product``), below it on BLAS: so small a product gains
#: nothing measurable from it (RNN B1 T1000 H32 backward, 1.3e6: within noise), and a
#: model whose calls are all this small compiles without the micro-kernel, which is most
#: of a first run's compilation (``rnnkern demo`` on a fresh install: 53 -> 35-39 s)
PACKED_MIN_MACS = 1 << 21


def _choices(name: str, values: tuple) -> str:
    return f"{name}: expected None or one of {', '.join(map(repr, values))}"


def check_variant(variant: object) -> str | None:
    """``variant`` of a backend call: None (chosen by shape) or a name of ``VARIANTS``."""
    if variant is not None and (not isinstance(variant, str) or variant not in VARIANTS):
        raise ValueError(f"{_choices('variant', tuple(VARIANTS))}, got {variant!r}")
    return variant


def check_threads(threads: object) -> int | None:
    """``threads`` of a backend call: None (chosen by shape and ``numba.get_num_threads``)
    or an int >= 1, the row blocks of a rows schedule (1: serial; capped at B)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads: expected None or an int >= 1, got {threads!r}")
    return threads


def choose(variant: str | None, threads: int | None, B: int, H: int, G: int, I: int,
           itemsize: int, T: int) -> Plan:
    """The plan of schedule ``variant`` on ``threads`` row blocks, each picked by shape
    where None (B rows, H units, G gates, I inputs of ``itemsize`` bytes, T steps).
    batch-inner and lone-row always run one block."""
    check_variant(variant)
    check_threads(threads)
    plan, parallel = _shape_plan(variant, B, H, G, I, itemsize)
    if plan.name not in ROWS:
        return plan
    if threads is not None:
        chunks = min(B, threads)
    elif not parallel:
        chunks = 1
    else:
        # asked only here: numba.get_num_threads() costs microseconds
        n = numba.get_num_threads()
        small = B < 2 * n or T * B * G * H * (H + I) < PARALLEL_MIN_CALL_MACS
        chunks = 1 if n < 2 or B < 2 or (variant is None and small) else min(B, n)
    plan = plan._replace(chunks=chunks)
    few_rows = B // chunks < STEPPED_MIN_ROWS and H > FUSED_PARALLEL_MAX_H
    if variant is None and plan.stepped and (B % (4 * chunks) or few_rows):
        # rows past a multiple of 4 in a block run the input part one row at a time, each
        # streaming all of W (few rows: too little work for streaming a big W): one GEMM
        # before the loop is faster
        plan = plan._replace(name="rows-packed", stepped=False)
    return plan


def _whole_panel_pairs(H: int, itemsize: int) -> bool:
    """Whether H float32 columns (and so G*H) are whole pairs of 2-vector panels on
    AVX-512."""
    return VECTOR_BYTES == PACKED_SMALL_H_VECTOR_BYTES and itemsize == 4 \
        and H % (4 * VECTOR_BYTES // itemsize) == 0


@functools.lru_cache(maxsize=1024)
def _shape_plan(variant: str | None, B: int, H: int, G: int, I: int,
                itemsize: int) -> tuple[Plan, bool]:
    """``choose`` less the thread count: the plan on one block, and whether by shape it may
    run in row blocks (remembered per shape: the decision took ~0.3 us of a ~7 us call at
    the smallest shapes).

    It also starts Numba's thread pool, so that the pool runs before the process's first
    kernel call, whatever the plan. Why: Numba starts it when it loads a ``parallel=True``
    function from the cache, but a serial kernel compiled beside parallel callees that had
    themselves come from the cache is cached without that step (Numba 0.68 keeps a cached
    library's start-up functions out of the libraries that link it); loaded in a later
    process whose pool had not started, such a kernel segfaulted at its first call
    (``tests/test_numba.py::test_kernel_from_cache_starts_threads``). Once per process
    and shape, here, rather than in ``choose``: it costs microseconds.
    """
    numba.get_num_threads()
    parallel = True
    if variant is not None:
        name = variant
    elif B == 1 and H <= UNITS_MAX_H:
        name = "lone-row"
    elif H <= BATCH_INNER_MAX_H and B >= BATCH_INNER_MIN_B:
        name = "batch-inner"
    elif H <= FUSED_MAX_H:
        name, parallel = "rows-fused", B * G * H >= PARALLEL_MIN_WORK
    elif H <= FUSED_PARALLEL_MAX_H:
        name = "rows-packed-stepped" if _whole_panel_pairs(H, itemsize) else "rows-fused"
    elif (I + H) * G * H * itemsize <= STEPPED_MAX_BYTES:
        name = "rows-packed-stepped"
    else:
        name = "rows-packed"
    fused, packed, stepped = _FLAGS[name]
    if name == "lone-row":
        packed = H % PACKED_LONE_ROW_H == 0
        fused = not packed
    return Plan(name, 1, fused, packed, stepped), parallel and name in ROWS
