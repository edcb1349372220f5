"""benchmarks/run_gpu.sh's plumbing, without a GPU (DRY_RUN=1: every step's command is
replaced by a stub that prints it): the output folder's layout, the order of the steps,
their time limits inside the budget, and a hung step killed without taking the rest down."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rnnkern.backends.cupy_cuda import VARIANTS
from rnnkern.cli._bench import SHAPE_GROUPS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run_gpu.sh"
#: the steps, most telling first, with their own limits in seconds
STEPS = ([("nvidia-smi", 15), ("env", 40), ("compile", 120)]
         + [(f"parity-{v}", 60) for v in VARIANTS]
         + [("gradcheck", 90), ("large", 60), ("tests", 120)]
         + [(f"bench-{g}", 90) for g in SHAPE_GROUPS] + [("racecheck", 90)])

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _run(script, **env):
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DRY_RUN": "1", **env})
    return proc, time.monotonic() - t0


def _steps(out):
    lines = (out / "steps.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["step", "name", "limit_s", "rc", "wall_s"]
    return [dict(zip(("step", "name", "limit_s", "rc", "wall_s"), ln.split("\t")))
            for ln in lines[1:]]


def test_dry_run_layout_order_and_limits(tmp_path):
    proc, wall = _run(SCRIPT, OUT=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    steps = _steps(tmp_path)
    assert [(s["name"], int(s["limit_s"])) for s in steps] == STEPS
    assert [int(s["step"]) for s in steps] == list(range(1, len(STEPS) + 1))
    assert all(s["rc"] == "0" for s in steps)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted([f"{i:02d}-{name}.txt" for i, (name, _) in enumerate(STEPS, 1)]
                           + ["steps.tsv"])
    text = {name: (tmp_path / f"{i:02d}-{name}.txt").read_text()
            for i, (name, _) in enumerate(STEPS, 1)}
    assert all(t.startswith("DRY_RUN: ") for t in text.values())
    for v in VARIANTS:
        assert text[f"parity-{v}"].split()[-3:] == ["parity", "--variant", v]
    for i, (name, _) in enumerate(STEPS, 1):  # each benchmark group writes its own JSON
        if name.startswith("bench-"):
            group = name[len("bench-"):]
            assert f"--shapes {group} " in text[name]
            assert f"--json {tmp_path}/{i:02d}-{name}.json" in text[name]
    assert f"--junitxml {tmp_path}/" in text["tests"]
    assert "gradcheck --backend cupy" in text["gradcheck"]
    assert "--tool racecheck" in text["racecheck"]
    assert text["racecheck"].endswith("tiny-persistent\n")
    assert sum(1 for t in text.values() if "rnnkern gradcheck" in t) == 1  # no step twice
    assert "-k not test_parity and not gradcheck_command" in text["tests"]


def test_hung_step_is_killed_and_the_budget_holds(tmp_path):
    budget = 14
    proc, wall = _run(SCRIPT, OUT=str(tmp_path), RUN_GPU_BUDGET_S=str(budget),
                      DRY_RUN_HANG="compile")
    assert proc.returncode == 124
    steps = {s["name"]: s for s in _steps(tmp_path)}
    assert list(steps) == [name for name, _ in STEPS]  # every step accounted for, in order
    assert steps["env"]["rc"] == "0"
    hung = steps["compile"]
    assert hung["rc"] == "124" and int(hung["limit_s"]) <= budget - 5
    assert "killed by timeout" in (tmp_path / "03-compile.txt").read_text()
    later = [steps[name] for name, _ in STEPS[3:]]
    assert all(s["rc"] == "skipped" for s in later)  # nothing left of the budget
    assert wall < budget + 3


def test_budget_cuts_every_limit(tmp_path):
    budget = 14
    proc, _ = _run(SCRIPT, OUT=str(tmp_path), RUN_GPU_BUDGET_S=str(budget), DRY_RUN_HANG="all")
    steps = _steps(tmp_path)
    ran = [s for s in steps if s["rc"] != "skipped"]
    assert ran and all(s["rc"] == "124" for s in ran)
    assert sum(int(s["limit_s"]) for s in ran) <= budget - 5
    assert proc.returncode == 124


def test_default_output_folder(tmp_path):
    copy = tmp_path / "tree" / "benchmarks" / "run_gpu.sh"
    copy.parent.mkdir(parents=True)
    shutil.copy(SCRIPT, copy)
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", str(copy)], capture_output=True, text=True, timeout=60,
                          env={**env, "DRY_RUN": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(_steps(tmp_path / "tree" / "gpu_results")) == len(STEPS)
