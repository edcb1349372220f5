"""``rnnkern bench`` runs end to end on one tiny shape and writes valid JSON."""

import json

import pytest

from rnnkern import cli
from rnnkern.cli import bench


@pytest.fixture(autouse=True)
def _threads_back():
    """The commands set every pool's thread count (--threads): give Numba's back after."""
    import numba

    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--backend", "numpy,numba", "--cell", "gru", "--shapes", "3,2,2,4",
                     "--repeat", "1", "--threads", "1", "--no-torch", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["impl"], r["pass"]) for r in rows} == {
        (impl, ps) for impl in ("numpy", "numba") for ps in bench.PASSES}
    assert all(r["cell"] == "gru" and (r["T"], r["B"], r["I"], r["H"]) == (3, 2, 2, 4)
               and r["median_ms"] > 0 and len(r["samples_ms"]) == 1 for r in rows)
    assert data["meta"]["threads"] == 1
    assert set(data["meta"]["numba_first_call_ms"]) == set(bench.CELLS)
    assert data["meta"]["vector_bytes"] in (32, 64)
    assert "| gru | T3B2I2H4 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--shapes", "huge"], "shapes"),
    (["--shapes", "1,2,0,4"], "shapes"),
    (["--shapes", "3,2,2,4,varlen"], "shapes"),  # lengths are the GPU benchmark's alone
    (["--repeat", "0"], "repeat"),
    (["--backend", "nonesuch"], "backend"),
])
def test_bench_rejects_bad_options(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--no-torch", *argv])
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_bench_times_whole_layers_after_the_kernels(tmp_path, monkeypatch, capsys):
    from rnnkern.cli import _bench

    tiny = _bench.Shape(3, 2, 2, 4, name="small")
    monkeypatch.setitem(_bench.SHAPES, "small", tiny)
    out = tmp_path / "b.json"
    code = cli.main(["bench", "--backend", "numba", "--cell", "lstm", "--shapes", "small",
                     "--repeat", "1", "--threads", "1", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    layered = {(r["shape"], r["impl"], r["pass"]): r for r in rows if r["layer"]}
    for shape, options in (("small bidirectional", {"bidirectional": True}),
                           ("small 2 layers", {"num_layers": 2})):
        impls = {"numba", "torch"} if _torch() else {"numba"}
        assert {(s, i) for s, i, _ in layered if s == shape} == {(shape, i) for i in impls}
        assert all(r["layer"] == options for (s, _, _), r in layered.items() if s == shape)
    assert "| lstm | small bidirectional |" in capsys.readouterr().out
    code = cli.main(["bench", "--backend", "numba", "--cell", "lstm", "--shapes", "small",
                     "--repeat", "1", "--threads", "1", "--no-layers", "--json", str(out)])
    assert not any(r["layer"] for r in json.loads(out.read_text())["rows"])


def _torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_torch_runner_packs_lengths_and_takes_layer_options():
    pytest.importorskip("torch")
    from rnnkern.cli._bench import Shape, torch_runner

    for layer, width in (({}, 5), ({"bidirectional": True, "num_layers": 2}, 10)):
        fns = torch_runner("lstm", Shape(4, 3, 2, 5), lengths=[4, 2, 1], **layer)
        y = fns["forward"]()
        assert tuple(y.shape) == (4 + 2 + 1, width) and not y.requires_grad
        fns["forward+backward"]()


def test_bench_train_writes_json(tmp_path, monkeypatch, capsys):
    from rnnkern.cli import bench_train

    monkeypatch.setattr(bench_train, "STEPS_MIN_S", 0.01)
    monkeypatch.setattr(bench_train, "SETTLE_S", 0.0)
    out = tmp_path / "train.json"
    code = cli.main(["bench", "train", "--workloads", "seed", "--repeat", "2", "--threads",
                     "1", "--no-torch", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["workload"], r["impl"], r["busy"]) for r in rows] == [("seed", "rnnkern", 0)]
    r = rows[0]
    assert r["fit_ms_per_step"] > 0 and r["alone_ms"] > 0 and len(r["fit_samples_ms"]) == 2
    printed = capsys.readouterr().out
    assert printed.count("| 0 | seed |") == 1  # each row once


@pytest.mark.parametrize("argv,match", [
    (["--workloads", "huge"], "workloads"),
    (["--busy", "-1"], "busy"),
])
def test_bench_train_rejects_bad_options(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "train", "--no-torch", *argv])
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_bench_torch_writes_json(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from rnnkern.cli import _bench, bench_torch

    monkeypatch.setattr(_bench, "SETTLE_S", 0.0)
    out = tmp_path / "torch.json"
    code = cli.main(["bench", "torch", "--cell", "gru", "--shapes", "3,2,2,4", "--repeat", "2",
                     "--threads", "1", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    (r,) = data["rows"]
    assert (r["cell"], r["T"], r["B"], r["I"], r["H"]) == ("gru", 3, 2, 2, 4)
    assert set(r["median_ms"]) == set(bench_torch.IMPLS)
    assert all(v > 0 for v in r["median_ms"].values())
    assert all(len(v) == 2 for v in r["samples_ms"].values())
    assert "torch" in data["meta"]
    assert capsys.readouterr().out.count("| gru | T3B2I2H4 |") == 1


def test_bench_torch_refuses_no_torch(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "torch", "--no-torch"])
    assert e.value.code == 2
    assert "no-torch" in capsys.readouterr().err
