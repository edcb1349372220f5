"""The gradient-check suite itself: it passes on correct code, catches a one-line bug
in a backward, and the ``rnnkern gradcheck`` command reports both."""

import inspect
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkern import backends
from rnnkern import gradcheck as gc
from rnnkern.backends import numpy_ref
from rnnkern.cli import main

# one realistic slip per cell: (cell, line in numpy_ref, the broken line)
MUTATIONS = [
    ("rnn", "np.where(active[t], dy[t] + dh, 0) * act_grad(a[t])",
     "np.where(active[t], dy[t], 0) * act_grad(a[t])"),
    ("lstm", "dc = np.where(active[t], dc_new * f, dc)", "dc = np.where(active[t], dc_new, dc)"),
    ("gru", "dgh[t, :, 2 * H :] = dn * r", "dgh[t, :, 2 * H :] = dn"),
]


@pytest.fixture
def broken_backend(monkeypatch, request):
    """Register "broken": numpy_ref with one line of one backward changed."""
    _, line, bad = request.param
    src = inspect.getsource(numpy_ref)
    assert src.count(line) == 1, line
    mod = types.ModuleType("rnnkern.backends.broken_ref")
    mod.__package__ = "rnnkern.backends"
    exec(compile(src.replace(line, bad), "broken_ref.py", "exec"), mod.__dict__)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(backends.REGISTRY, "broken", mod.__name__)
    return request.param[0]


@pytest.mark.parametrize("broken_backend", MUTATIONS, indirect=True, ids=[m[0] for m in MUTATIONS])
def test_fd_check_catches_a_broken_backward(broken_backend):
    p = gc.make_problem(broken_backend, lengths=True)
    assert max(gc.fd_check(p, "numpy").values()) <= gc.FD_TOL
    assert max(gc.fd_check(p, "broken").values()) > 1e-3


@pytest.mark.parametrize("broken_backend", MUTATIONS, indirect=True, ids=[m[0] for m in MUTATIONS])
def test_cli_exits_nonzero_on_a_broken_backward(broken_backend, capsys):
    code = main(["gradcheck", "--backend", "broken", "--cell", broken_backend,
                 "--lengths", "no", "--state", "yes"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "failed" in out


def test_cli_passes_and_prints_the_table(capsys):
    code = main(["gradcheck", "--backend", "numpy", "--cell", "gru", "--lengths", "yes",
                 "--all-rows"])
    out = capsys.readouterr().out
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:4] == ["cell", "activation", "backend", "dtype"]
    assert "worst" in header and "result" in header
    for tensor in ("x", "h0", "W", "R", "b", "b_hn"):
        assert any(line.split()[7] == tensor for line in out.splitlines()[2:-2] if line.strip())
    assert "FAIL" not in out and "0 failed" in out


@pytest.mark.parametrize("argv", [["gradcheck", "--cell", "elman"],
                                  ["gradcheck", "--backend", "torch"],
                                  ["gradcheck", "--size", "0", "1", "1", "1"],
                                  ["gradcheck", "--size", "1"],
                                  ["frobnicate"]])
def test_cli_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "rnnkern" in capsys.readouterr().err


def test_suite_rows_cover_every_check():
    rows = gc.run_suite(("lstm",), ("numpy",), (True,), (True,))
    checks = {r.check for r in rows}
    assert checks == {"fd", "per-step", "per-step-sum"}
    assert {r.tensor for r in rows if r.check == "fd"} == {"x", "h0", "c0", "W", "R", "b"}
    assert all(r.ok for r in rows)


def test_row_with_nan_fails():
    row = gc.Row("rnn", "tanh", "numpy", "float64", "", "fd", "W", float("nan"), 1e-6)
    assert not row.ok


def test_rel_error_floor():
    assert gc.rel_error(np.array([1e-12]), np.array([0.0])) == pytest.approx(1e-12 / gc.FLOOR)
    assert gc.rel_error(np.array([1.0 + 1e-9]), np.array([1.0])) == pytest.approx(1e-9, rel=1e-3)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_directional_check_on_a_larger_problem(backend, cell):
    p = gc.make_problem(cell, T=30, B=4, I=16, H=24, lengths=True, seed=8)
    assert max(gc.directional_check(p, backend).values()) <= gc.FD_TOL


@settings(max_examples=25, deadline=None)
@given(cell=st.sampled_from(gc.CASES), T=st.integers(1, 6), B=st.integers(1, 4),
       I=st.integers(1, 5), H=st.integers(1, 6), lengths=st.booleans(), state=st.booleans(),
       seed=st.integers(0, 2**16))
def test_hypothesis_random_shapes(cell, T, B, I, H, lengths, state, seed):  # noqa: E741
    """Random small shapes and options: directional derivatives agree with the
    backward on every backend, and every backend agrees with the oracle."""
    p = gc.make_problem(cell[0], T, B, I, H, activation=cell[1], lengths=lengths, h0=state,
                        dstate=state, seed=seed)
    for name in backends.available():
        assert max(gc.directional_check(p, name, seed=seed).values()) <= gc.FD_TOL
        if name != "numpy":
            assert max(gc.parity(p, name, np.float64).values()) <= gc.PARITY_TOL["float64"]
