"""Kernel variants of the CuPy backend and the choice between them (pure Python, no GPU).

``VARIANTS`` is the one table of variants. ``plan_persistent`` decides whether the
persistent kernel fits a shape on a device and how to lay it out; ``choose_variant`` picks
the variant for a call. Both take the device's limits as plain numbers so that they are
tested on machines without a GPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..._validate import GATES
from .loader import PERSISTENT_THREADS

#: every kernel variant, by what it does, with its one-line description; None picks by shape
VARIANTS = {
    "cublas-steps": "cuBLAS GEMMs (input projection for all steps, h @ R per step) + one "
                    "fused pointwise kernel per step; weight gradients as GEMMs over all steps",
    "fused-steps": "for small shapes: one fused kernel per step (the recurrent product in "
                   "registers + the pointwise step, no cuBLAS), the step loop captured once in "
                   "a CUDA graph and replayed while the call's buffers are the same (an LRU of "
                   "graphs keyed by shape and pointers)",
    "persistent": "one cooperative launch runs the whole time loop, R's slices stay in shared "
                  "memory, blocks exchange states through L2 behind a grid barrier",
}
#: the persistent kernel is chosen automatically up to this batch size
PERSISTENT_MAX_BATCH = 64
#: rows of the batch staged in shared memory at once, at most
PERSISTENT_MAX_ROWS = 64
#: the fewest reduction elements one thread of the persistent kernel's matmul takes
PERSISTENT_MIN_SPLIT = 8


class DeviceLimits(NamedTuple):
    """What the variant choice needs to know about a GPU."""

    sm_count: int           # streaming multiprocessors: one persistent block each
    smem_per_block: int     # bytes of shared memory one block may opt in to
    cooperative: bool       # cooperative launches supported


class PersistentPlan(NamedTuple):
    """Layout of one persistent launch (forward or backward).

    Block i owns hidden units [i*HS, i*HS + HS); it stages BB batch rows at a time and
    splits its matmul's reduction K = H (forward) or G*H (backward) into KS slices.
    """

    blocks: int
    HS: int
    BB: int
    KS: int
    smem_bytes: int


def _round4(n: int) -> int:
    return (n + 3) // 4 * 4


def plan_persistent(cell: str, B: int, H: int, itemsize: int, limits: DeviceLimits,
                    direction: str) -> PersistentPlan | None:
    """The persistent kernel's layout for these sizes, or None when R's slices do not fit.

    direction: "forward" (block slice R[:, gate columns of its units], reduction over H)
    or "backward" (slice R[its units, :], reduction over G*H). Mirrors the shared-memory
    carve-up of persistent.cu: Ws (K, NCP) + As (K, BBP + 1) + part (KS, BBP, NCP), where
    NCP and BBP are NC and BB padded to multiples of 4 and As's odd row stride keeps its
    staging free of bank conflicts.
    """
    if not limits.cooperative or limits.sm_count < 1:
        return None
    G = GATES[cell]
    HS = math.ceil(H / limits.sm_count)
    blocks = math.ceil(H / HS)
    K, NC = (H, G * HS) if direction == "forward" else (G * H, HS)
    NCP = _round4(NC)
    for BB in range(min(B, PERSISTENT_MAX_ROWS), 0, -1):
        BBP = _round4(BB)
        tasks = (BBP // 4) * (NCP // 4)
        KS = max(1, min(PERSISTENT_THREADS // tasks, K // PERSISTENT_MIN_SPLIT))
        smem = (K * NCP + K * (BBP + 1) + KS * BBP * NCP) * itemsize
        if smem <= limits.smem_per_block:
            return PersistentPlan(blocks, HS, BB, KS, smem)
    return None


def choose_variant(cell: str, B: int, H: int, itemsize: int, limits: DeviceLimits | None,
                   direction: str, variant: str | None = None) -> tuple[str, PersistentPlan | None]:
    """(variant, plan) for one call; plan is None for cublas-steps and fused-steps.

    variant=None: "persistent" when B <= PERSISTENT_MAX_BATCH and R's slices fit on chip,
    else "cublas-steps". An explicit "persistent" that does not fit raises ValueError rather
    than running "cublas-steps" in its place.
    """
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant: expected None or one of {', '.join(map(repr, VARIANTS))}, "
                         f"got {variant!r}")
    if variant in ("cublas-steps", "fused-steps"):
        return variant, None
    plan = None if limits is None else plan_persistent(cell, B, H, itemsize, limits, direction)
    if variant == "persistent":
        if plan is None:
            raise ValueError(
                f"variant: 'persistent' does not fit {cell} with B={B}, H={H}, "
                f"itemsize={itemsize} on this device ({limits}); use 'cublas-steps' or None")
        return "persistent", plan
    if plan is not None and B <= PERSISTENT_MAX_BATCH:
        return "persistent", plan
    return "cublas-steps", None
