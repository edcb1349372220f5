"""Every example in quick mode (as CI runs them): the loss falls and the PNG is written."""

import importlib

import numpy as np
import pytest

from rnnkern import cli
from rnnkern.examples import EXAMPLES

pytest.importorskip("matplotlib")


def run(name, tmp_path):
    return importlib.import_module(f"rnnkern.examples.{name}").main(
        ["--quick", "--out", str(tmp_path)])


def png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["seq2seq", "seq2one"])
def test_loss_falls(name, tmp_path):
    res = run(name, tmp_path)
    assert res["history"]["loss"][-1] < res["history"]["loss"][0]
    assert png(res["plot"])


def test_seeded_continuation_quick(tmp_path):
    res = run("seeded_continuation", tmp_path)
    # val_loss is closed loop in every phase (training loss changes meaning with feedback)
    loss = res["history"]["val_loss"]
    assert loss[-1] < loss[0]
    assert res["free_running_mse"] < res["flat_mse"]  # already beats repeating the last seed
    assert png(res["plot"])


def test_sum_sequence_quick(tmp_path):
    res = run("sum_sequence", tmp_path)
    for act in ("identity", "tanh"):
        assert res[act]["history"]["loss"][-1] < res[act]["history"]["loss"][0]
    assert png(res["plot"])


def test_gradient_accumulation(tmp_path):
    res = run("gradient_accumulation", tmp_path)
    assert res["max_step_error"] < 1e-8  # per-step BPTT contributions vs untied FD
    assert res["max_sum_error"] < 1e-12  # their sum is the tied gradient
    assert png(res["plot"])


def test_gradient_flow(tmp_path):
    res = run("gradient_flow", tmp_path)
    ratios = res["ratios"]
    assert ratios["tanh RNN"] < 1e-15  # vanished over 100 steps
    assert ratios["LSTM, forget bias 3"] > 1e-3  # carried along the cell state
    assert all(n.shape == (100,) and np.all(n > 0) for n in res["norms"].values())
    assert png(res["plot"])


def test_demo_command_runs_the_default_example(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert "closed-loop validation MSE" in capsys.readouterr().out
    assert (tmp_path / "seeded_continuation.png").exists()


def test_every_example_is_listed():
    for name in EXAMPLES:
        assert callable(importlib.import_module(f"rnnkern.examples.{name}").main)


def test_char_lm_quick(tmp_path):
    res = run("char_lm", tmp_path)
    curve = [bpc for _, _, bpc in res["rnnkern"]["curve"]]
    assert res["rnnkern"]["steps"] == 60 and curve[-1] < curve[0]
    assert res["vocab"] == 103 and 4.5 < res["unigram_bpc"] < 4.8
    for text in res["samples"].values():
        assert text.startswith("The return statement ") and len(text) > 40
    assert png(res["plot"])


def test_char_lm_quick_is_reproducible(tmp_path):
    a, b = run("char_lm", tmp_path), run("char_lm", tmp_path)
    assert a["rnnkern"]["train_bpc"] == b["rnnkern"]["train_bpc"]
    assert a["samples"] == b["samples"]


def test_speakers_quick(tmp_path):
    pytest.importorskip("sktime", reason="the speakers example reads sktime's bundled "
                                         "JapaneseVowels (pip install 'rnnkern[data]')")
    res = run("speakers", tmp_path)
    acc = res["runs"][0]["history"]["val_accuracy"]
    assert len(acc) == 3 and acc[-1] > 0.5  # 9 speakers: chance is 11%
    assert res["confusion"].sum() == 370
    assert png(res["plot"])


def test_torch_dropin_trains_the_same(tmp_path):
    pytest.importorskip("torch")
    res = run("torch_dropin", tmp_path)
    ref, ours = res["history"]["torch.nn.GRU"], res["history"]["rnnkern.torch.GRU"]
    assert ours[-1] < ours[0] and len(ours) == len(ref)
    assert res["max_loss_difference"] < 1e-4  # the same curve, to float32 round-off
    assert png(res["plot"])


def test_torch_dropin_skips_without_torch(tmp_path, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert run("torch_dropin", tmp_path) == {"skipped": "torch is not installed"}
    assert "PyTorch is not installed" in capsys.readouterr().out
