"""Every CUDA kernel file compiles with nvcc (sm_90, warnings as errors, no spills), GPU or
not.

Each test compiles exactly the source the loader hands to NVRTC (``loader.assemble``:
the ``.cu`` file with its headers inlined) plus a host function that takes the address of
every template instantiation the loader asks for, so that each one is compiled. Runs
wherever ``nvcc`` is on the PATH; needs neither CuPy nor a GPU. The same sources also go
through NVRTC (what CuPy's RawModule uses at run time) with the loader's options, wherever
CuPy's NVRTC binding loads: NVRTC compiles without a GPU too.
"""

import re
import shutil
import subprocess

import pytest

from rnnkern.backends.cupy_cuda import loader

NVCC = shutil.which("nvcc")
FLAGS = ["-arch=sm_90", "-std=c++17", "-Werror", "all-warnings", "-Xptxas", "-Werror",
         "--cubin"]
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")


def test_every_kernel_file_is_loaded():
    on_disk = {p.name for p in loader.KERNEL_DIR.glob("*.cu")}
    assert on_disk == set(loader.MODULES)


def test_headers_are_inlined():
    src = loader.assemble("persistent.cu")
    assert '#include "' not in src
    assert src.count("struct FwdArgs {") == 1  # cells.cuh once, though two files include it


@needs_nvcc
@pytest.mark.parametrize("filename", sorted(loader.MODULES))
def test_nvcc_compiles(filename, tmp_path):
    names = loader.name_expressions(filename)
    uses = "\n".join(f"    (void)&{n};" for n in names)
    src = tmp_path / f"check_{filename}"
    src.write_text(loader.assemble(filename) + f"\nvoid rk_instantiate() {{\n{uses}\n}}\n")
    out = tmp_path / "out.cubin"
    proc = subprocess.run([NVCC, *FLAGS, "-Xptxas", "-v", str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kernels = set(re.findall(rb"\.text\.(_Z\w+)", out.read_bytes()))
    assert len(kernels) == len(names), sorted(kernels)
    # every kernel keeps its per-thread arrays (register tiles, gate sums) in registers:
    # ptxas reports no stack frame and no spills for any of them
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                        r"loads", proc.stdout + proc.stderr)
    assert len(frames) == len(names) and all(f == ("0", "0", "0") for f in frames), frames


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception:  # no CuPy, or no NVRTC library next to it
        return None
    return nvrtc


NVRTC = _nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="CuPy's NVRTC binding does not load here")
@pytest.mark.parametrize("filename", sorted(loader.MODULES))
def test_nvrtc_compiles_without_warnings(filename):
    names = loader.name_expressions(filename)
    prog = NVRTC.createProgram(loader.assemble(filename), filename, (), ())
    for n in names:
        NVRTC.addNameExpression(prog, n)
    # CuPy adds -ftz=true and the device's arch to the loader's options
    options = (*loader.OPTIONS, "-ftz=true", "-arch=sm_90")
    try:
        NVRTC.compileProgram(prog, options)
    except Exception as e:
        raise AssertionError(NVRTC.getProgramLog(prog)) from e
    assert NVRTC.getProgramLog(prog).strip("\x00 \n") == ""  # no warnings either
    lowered = {NVRTC.getLoweredName(prog, n) for n in names}
    assert len(lowered) == len(names) and all(m.startswith("_Z") for m in lowered)
