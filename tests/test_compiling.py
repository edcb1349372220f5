"""The first call that compiles rnnkern's kernels says so on stderr, once; a process that
loads them from the cache says nothing."""

import os
import subprocess
import sys

CHILD = """
import numpy as np
import rnnkern as rk
p = {"w": np.zeros(3, np.float32)}
opt = rk.Adam(p)
for _ in range(2):
    opt.step({"w": np.ones(3, np.float32)})
"""


def _stderr(cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_compile_notice_once_then_silent_from_the_cache(tmp_path):
    cold = _stderr(tmp_path)
    assert cold.count("rnnkern: compiling the Numba kernels") == 1, cold
    assert "compil" not in _stderr(tmp_path)
