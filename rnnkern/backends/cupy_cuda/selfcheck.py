"""Device checks of the CuPy backend, one per process (``benchmarks/run_gpu.sh`` runs them).

``python -m rnnkern.backends.cupy_cuda.selfcheck CHECK`` with CHECK one of:

- ``env``: device, driver, CUDA runtime, NVRTC, cuBLAS, CuPy and torch versions (JSON),
  then ``cupy.show_config()``;
- ``compile``: compile and load every kernel instantiation the loader can hand out, with
  its registers and static shared memory;
- ``parity --variant V``: every cell and activation, odd sizes (B=1, T=1, H up to 333),
  with and without lengths and initial state, float32 and float64, per-step gradients,
  against the float64 NumPy oracle with ``gradcheck.PARITY_TOL``;
- ``large``: B256 H1024 (T=4, I=256) in float32 and float64, every variant ("persistent" "skip"s
  where it does not fit the device);
- ``tiny-persistent``: one small persistent forward and backward per cell (a target for
  ``compute-sanitizer --tool racecheck``).

Each case prints one line as soon as it is done (``ok`` / ``FAIL`` / ``ERROR`` with the
error), so a process killed part-way keeps what it printed; the exit status is 1 when
any case did not pass. A CUDA fault can leave the device unusable for the rest of the
process: that is why each check, and each variant's parity, is a process of its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import loader
from .variants import VARIANTS

#: (cell, activation) pairs every parity check covers
CASES = (("rnn", "tanh"), ("rnn", "relu"), ("rnn", "identity"), ("lstm", "tanh"), ("gru", "tanh"))
#: (T, B, I, H) of the parity checks: B=1, T=1, odd sizes, partial slices and row chunks of
#: "persistent"
PARITY_SIZES = ((1, 1, 1, 1), (1, 3, 2, 5), (9, 1, 4, 7), (7, 5, 3, 13), (5, 37, 19, 67),
                (3, 70, 11, 131), (2, 6, 5, 333))
#: (T, B, I, H) of the large check
LARGE_SIZE = (4, 256, 256, 1024)
DTYPES = (np.float32, np.float64)


def device_info() -> dict[str, Any]:
    """Versions of everything the backend runs on; a query that fails records its error."""
    import cupy

    def ask(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # one missing version must not lose the rest
            return f"unknown ({type(e).__name__}: {e})"

    def cublas_version() -> int:
        from cupy_backends.cuda.libs import cublas

        return cublas.getVersion(cupy.cuda.device.get_cublas_handle())

    rt = cupy.cuda.runtime
    props = ask(lambda: rt.getDeviceProperties(cupy.cuda.Device().id))
    return {
        "device": props["name"].decode() if isinstance(props, dict) else props,
        "compute_capability": ask(lambda: cupy.cuda.Device().compute_capability),
        "sm_count": props.get("multiProcessorCount") if isinstance(props, dict) else None,
        "driver": ask(rt.driverGetVersion), "cuda_runtime": ask(rt.runtimeGetVersion),
        "nvrtc": ask(cupy.cuda.nvrtc.getVersion), "cublas": ask(cublas_version),
        "cupy": cupy.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "torch": ask(_torch_versions),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": os.environ.get("RNNKERN_COMMIT", "unknown"),
    }


def _torch_versions() -> dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "gpu": torch.cuda.is_available()}


#: what "persistent" says when a shape does not fit the device (choose_variant,
#: engine._launch_persistent)
UNFIT = ("does not fit", "cannot all be resident")


def _report(name: str, fn: Callable[[], str], unfit_ok: bool = False) -> bool:
    """Run one case, print its line; True when it passed (or, with ``unfit_ok``, when the
    variant refused a shape that does not fit the device: "skip")."""
    t0 = time.perf_counter()
    try:
        detail = fn()
    except AssertionError as e:
        status, detail = "FAIL", str(e)
    except Exception as e:  # recorded; the next case runs
        unfit = unfit_ok and isinstance(e, (ValueError, RuntimeError)) and any(
            u in str(e) for u in UNFIT)
        status, detail = "skip" if unfit else "ERROR", f"{type(e).__name__}: {e}"
    else:
        status = "ok"
    print(f"{status:5} {name} ({time.perf_counter() - t0:.2f} s) {detail}", flush=True)
    return status in ("ok", "skip")


def check_compile() -> Iterator[bool]:
    for filename, kernels in loader.MODULES.items():
        yield _report(f"module {filename}", lambda f=filename: (loader.module(f), "")[1])
        for name in kernels:
            for dtype in loader.CTYPES:
                for cell in loader.CELL_ENUMS:
                    def load(name: str = name, dtype: Any = dtype, cell: str = cell) -> str:
                        k = loader.kernel(name, dtype, cell)
                        return (f"regs={k.num_regs} local={k.local_size_bytes} "
                                f"static_smem={k.shared_size_bytes} "
                                f"max_threads={k.max_threads_per_block}")
                    yield _report(f"kernel {loader.name_expression(name, dtype, cell)}", load)


def _parity_case(cell: str, activation: str, size: tuple, variant: str | None, dtype: Any,
                 lengths: bool = False, h0: bool = True, per_step: bool = False) -> str:
    from ...gradcheck import PARITY_TOL, make_problem, parity

    T, B, I, H = size
    p = make_problem(cell, activation=activation, T=T, B=B, I=I, H=H, lengths=lengths, h0=h0,
                     dstate=h0, seed=T + B + H)
    p.options = {} if variant is None else {"variant": variant}
    errors = parity(p, "cupy", dtype, per_step=per_step)
    tol = PARITY_TOL[np.dtype(dtype).name]
    worst = max(errors, key=errors.get)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"over {tol:g}: {bad}"
    return f"worst {worst}={errors[worst]:.2e}"


def check_parity(variant: str) -> Iterator[bool]:
    for cell, act in CASES:
        for size in PARITY_SIZES:
            for lengths in (False, True):
                for dtype in DTYPES:
                    name = (f"parity {variant} {cell}/{act} T{size[0]} B{size[1]} I{size[2]} "
                            f"H{size[3]} lengths={lengths} {np.dtype(dtype).name}")
                    yield _report(name, lambda c=cell, a=act, s=size, ln=lengths, dt=dtype:
                                  _parity_case(c, a, s, variant, dt, lengths=ln))
        for dtype in DTYPES:
            yield _report(f"parity {variant} {cell}/{act} per_step {np.dtype(dtype).name}",
                          lambda c=cell, a=act, dt=dtype:
                          _parity_case(c, a, (6, 3, 2, 5), variant, dt, lengths=True,
                                       per_step=True))
        yield _report(f"parity {variant} {cell}/{act} no initial state float64",
                      lambda c=cell, a=act: _parity_case(c, a, (5, 4, 3, 6), variant,
                                                         np.float64, h0=False))


def check_large() -> Iterator[bool]:
    for cell in ("rnn", "lstm", "gru"):
        for variant in (None, *VARIANTS):
            for dtype in DTYPES:
                name = f"large {variant or 'auto'} {cell} {LARGE_SIZE} {np.dtype(dtype).name}"
                yield _report(name, lambda c=cell, v=variant, dt=dtype:
                              _parity_case(c, "tanh", LARGE_SIZE, v, dt, lengths=True),
                              unfit_ok=variant == "persistent")


def check_tiny_persistent() -> Iterator[bool]:
    for cell in ("rnn", "lstm", "gru"):
        yield _report(f"tiny persistent {cell}", lambda c=cell: _parity_case(
            c, "tanh", (3, 5, 2, 7), "persistent", np.float32, lengths=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnkern.backends.cupy_cuda.selfcheck",
                                description=__doc__.splitlines()[0])
    p.add_argument("check", choices=("env", "compile", "parity", "large", "tiny-persistent"))
    p.add_argument("--variant", choices=tuple(VARIANTS), help="the variant (parity)")
    args = p.parse_args(argv)
    if args.check == "env":
        import cupy

        print(json.dumps(device_info(), indent=1), flush=True)
        cupy.show_config()
        return 0
    if args.check == "parity" and args.variant is None:
        p.error("parity needs --variant")
    cases = {"compile": check_compile, "large": check_large,
             "tiny-persistent": check_tiny_persistent,
             "parity": lambda: check_parity(args.variant)}[args.check]()
    results = list(cases)
    print(f"{sum(results)} of {len(results)} passed", flush=True)
    return int(not all(results))


if __name__ == "__main__":
    sys.exit(main())
