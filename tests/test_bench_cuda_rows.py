"""The GPU benchmark's bookkeeping, without a GPU: implementations stand in for CuPy and
torch, some of them failing, and the rows, the printed table and the JSON are checked."""

import argparse
import json

import pytest

from rnnkern.backends import cupy_cuda
from rnnkern.cli import bench_cuda
from rnnkern.cli._bench import GPU_SHAPES, SHAPE_GROUPS, Shape
from rnnkern.cli._bench import parse_shapes as parse_any


def parse_shapes(items):
    """--shapes as ``rnnkern bench --backend cupy`` reads it."""
    return parse_any(items, SHAPE_GROUPS, varlen=True)


class FakeCudaError(RuntimeError):
    """What CuPy's CUDARuntimeError is: a RuntimeError."""


SHAPES = ["4,2,3,5", "6,1,2,3", "3,3,3,3,varlen"]


@pytest.fixture
def fake_bench(monkeypatch, tmp_path):
    seen_on_disk = []  # shapes in the JSON on disk when each new shape starts
    path = tmp_path / "bench.json"

    def cupy_runner(cell, shape, variant, lengths, rng):
        if variant == "cublas-steps":
            seen_on_disk.append(
                sorted({r["shape"] for r in json.loads(path.read_text())["rows"]})
                if path.exists() else [])
        if variant == "persistent":
            raise ValueError("variant: 'persistent' does not fit")

        def crash():
            raise FakeCudaError("cudaErrorIllegalAddress: an illegal memory access")

        return {"forward": crash if variant == "fused-steps" else (lambda: None),
                "forward+backward": lambda: None}

    def torch_runner(cell, shape, device, lengths):
        assert device == "cuda"
        if shape.H == 3:
            raise FakeCudaError("CUDNN_STATUS_EXECUTION_FAILED")
        return {"forward": lambda: None, "forward+backward": lambda: None}

    monkeypatch.setattr(cupy_cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_cuda, "_device_info", lambda torch_too: {"device": "stand-in"})
    monkeypatch.setattr(bench_cuda, "_torch_usable", lambda no_torch: not no_torch)
    monkeypatch.setattr(bench_cuda, "cupy_runner", cupy_runner)
    monkeypatch.setattr(bench_cuda, "torch_runner", torch_runner)
    monkeypatch.setattr(bench_cuda, "time_events", lambda fn, repeat, event: (fn(), 1.5)[1])
    return path, seen_on_disk


def _args(path, **kw):
    return argparse.Namespace(**{"cell": "all", "shapes": SHAPES, "repeat": 2,
                                 "json": str(path), "plot": None, "no_torch": False,
                                 "variant": None, **kw})


def test_failures_become_rows_and_the_run_goes_on(fake_bench, capsys):
    pytest.importorskip("torch")
    path, seen_on_disk = fake_bench
    assert bench_cuda.run_gpu(_args(path)) == 1  # a row failed
    rows = json.loads(path.read_text())["rows"]
    impls = ["cupy-cublas-steps", "cupy-fused-steps", "cupy-persistent", "torch-cudnn-tf32off",
             "torch-cudnn-default"]
    assert len(rows) == len(SHAPES) * 3 * len(impls) * 2  # every (shape, cell, impl, pass)
    by = {(r["shape"], r["cell"], r["impl"], r["pass"]): r for r in rows}
    for shape in parse_shapes(SHAPES):
        for cell in ("rnn", "lstm", "gru"):
            key = (shape.label(), cell)
            assert by[(*key, "cupy-cublas-steps", "forward")]["status"] == "ok"
            assert by[(*key, "cupy-cublas-steps", "forward")]["median_ms"] == 1.5
            crashed = by[(*key, "cupy-fused-steps", "forward")]
            assert crashed["status"] == "failed" and crashed["median_ms"] is None
            assert "FakeCudaError: cudaErrorIllegalAddress" in crashed["note"]
            assert by[(*key, "cupy-fused-steps", "forward+backward")]["status"] == "ok"
            for pass_ in ("forward", "forward+backward"):
                unfit = by[(*key, "cupy-persistent", pass_)]
                assert unfit["status"] == "unsupported" and "does not fit" in unfit["note"]
                torch_row = by[(*key, "torch-cudnn-tf32off", pass_)]
                assert torch_row["status"] == ("failed" if shape.H == 3 else "ok")
    # the JSON is rewritten after every shape: each new shape found the earlier ones on disk
    labels = [s.label() for s in parse_shapes(SHAPES)]
    firsts = seen_on_disk[::3]  # the first cell of each shape
    assert firsts == [[], sorted(labels[:1]), sorted(labels[:2])]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == bench_cuda.TABLE_HEAD and len(out) == 1 + len(rows)
    assert any("failed: FakeCudaError" in line for line in out)


def test_exit_status_is_zero_when_nothing_failed(fake_bench):
    path, _ = fake_bench
    assert bench_cuda.run_gpu(_args(path, variant="cublas-steps,persistent", no_torch=True)) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {r["impl"] for r in rows} == {"cupy-cublas-steps", "cupy-persistent"}
    assert {r["status"] for r in rows} == {"ok", "unsupported"}


def test_shape_groups_hold_every_shape_once():
    flat = [s for g in SHAPE_GROUPS.values() for s in g]
    assert len(flat) == len(set(flat)) == len(GPU_SHAPES) == 18
    assert parse_shapes(["batch256", "1,2,3,4"]) == [*SHAPE_GROUPS["batch256"], Shape(1, 2, 3, 4)]
    grid = {(s.B, s.H) for s in GPU_SHAPES if s.T == 256 and s.I == s.H and not s.varlen}
    assert grid == {(B, H) for B in (1, 8, 64, 256) for H in (64, 256, 1024)}
    with pytest.raises(ValueError, match="shapes: expected a name"):
        parse_shapes(["huge"])


def test_variant_names():
    assert bench_cuda._variants("all") == tuple(cupy_cuda.VARIANTS)
    assert bench_cuda._variants(["cublas-steps,fused-steps"]) == ("cublas-steps", "fused-steps")
    with pytest.raises(ValueError, match="variant: expected"):
        bench_cuda._variants("v3")


def test_plot_from_json_files(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"cell": c, "shape": "T4 B2 I3 H5", "impl": i, "pass": p, "median_ms": ms}
            for c in ("lstm", "gru")
            for i, ms in (("cupy-cublas-steps", 1.0), ("cupy-persistent", None))
            for p in ("forward", "forward+backward")]
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"run{k}.json")
        paths[-1].write_text(json.dumps({"meta": {}, "rows": rows[k::2]}))
    out = tmp_path / "chart.png"
    assert bench_cuda.main(["plot", str(out), *map(str, paths)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
