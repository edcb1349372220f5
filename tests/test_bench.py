"""``rnnkern bench`` runs end to end on one tiny shape and writes valid JSON."""

import json

import pytest

from rnnkern import bench, cli


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
    (["--repeat", "0"], "repeat"),
    (["--backend", "nonesuch"], "backend"),
])
def test_bench_rejects_bad_options(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--no-torch", *argv])
    assert e.value.code == 2
    assert match in capsys.readouterr().err
