"""The device checks' plumbing (rnnkern.backends.cupy_cuda.selfcheck), without a GPU: the
cases each check covers, one line per case as it ends, and the exit status."""

import numpy as np
import pytest

from rnnkern.backends.cupy_cuda import VARIANTS, selfcheck


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake_case(cell, activation, size, variant, dtype, lengths=False, h0=True,
                  per_step=False):
        seen.append((cell, activation, size, variant, np.dtype(dtype).name, lengths, h0,
                     per_step))
        if cell == "gru" and size == (1, 1, 1, 1) and lengths:
            raise AssertionError("over 1e-10: {'dR': 0.5}")
        if cell == "lstm" and size == (2, 6, 5, 333):
            raise RuntimeError("cudaErrorLaunchFailure: unspecified launch failure")
        return "worst y=1.00e-16"

    monkeypatch.setattr(selfcheck, "_parity_case", fake_case)
    return seen


def test_parity_covers_every_case_and_reports_each(calls, capsys):
    assert selfcheck.main(["parity", "--variant", "fused-steps"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(calls) + 1
    assert lines[-1] == f"{len(calls) - 6} of {len(calls)} passed"
    assert {c[3] for c in calls} == {"fused-steps"}
    grid = {(c[0], c[1], c[2], c[4], c[5]) for c in calls if c[6] and not c[7]}
    assert grid == {(cell, act, size, dt, ln) for cell, act in selfcheck.CASES
                    for size in selfcheck.PARITY_SIZES for dt in ("float32", "float64")
                    for ln in (False, True)}
    assert {(c[0], c[1], c[4]) for c in calls if c[7]} == {
        (cell, act, dt) for cell, act in selfcheck.CASES for dt in ("float32", "float64")}
    assert {(c[0], c[1]) for c in calls if not c[6]} == set(selfcheck.CASES)
    assert {c[2][1] for c in calls} >= {1, 37, 70} and {c[2][0] for c in calls} >= {1}
    fails = [ln for ln in lines if ln.startswith("FAIL ")]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    assert len(fails) == 2 and "over 1e-10" in fails[0]  # float32 and float64 with lengths
    assert len(errors) == 4 and "RuntimeError: cudaErrorLaunchFailure" in errors[0]


def test_large_runs_every_variant_and_the_automatic_choice(calls, monkeypatch, capsys):
    case = selfcheck._parity_case

    def persistent_unfit(cell, activation, size, variant, dtype, **kw):
        out = case(cell, activation, size, variant, dtype, **kw)
        if variant == "persistent" and np.dtype(dtype) == np.float64:
            raise ValueError("variant: 'persistent' does not fit lstm with B=256")
        if variant == "fused-steps" and cell == "gru":
            raise ValueError("something else")
        return out

    monkeypatch.setattr(selfcheck, "_parity_case", persistent_unfit)
    assert selfcheck.main(["large"]) == 1
    assert {c[3] for c in calls} == {None, *VARIANTS}
    assert {c[2] for c in calls} == {selfcheck.LARGE_SIZE} == {(4, 256, 256, 1024)}
    lines = capsys.readouterr().out.splitlines()
    assert sum(ln.startswith("skip ") for ln in lines) == 3  # persistent float64, each cell
    assert sum(ln.startswith("ERROR") for ln in lines) == 2  # only persistent may be unfit
    assert lines[-1] == f"{len(calls) - 2} of {len(calls)} passed"


def test_parity_needs_a_variant():
    with pytest.raises(SystemExit):
        selfcheck.main(["parity"])
