"""Every CUDA kernel file compiles with nvcc (sm_90, warnings as errors), GPU or not.

Each test compiles exactly the source the loader hands to NVRTC (``loader.assemble``:
the ``.cu`` file with its headers inlined) plus a host function that takes the address of
every template instantiation the loader asks for, so that each one is compiled. Runs
wherever ``nvcc`` is on the PATH; needs neither CuPy nor a GPU.
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
    proc = subprocess.run([NVCC, *FLAGS, str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kernels = set(re.findall(rb"\.text\.(_Z\w+)", out.read_bytes()))
    assert len(kernels) == len(names), sorted(kernels)
