"""Checkpoints and save/load that survive a kill: atomic writes, resume bit-identical to
an uninterrupted run, and clear errors for truncated, corrupt, foreign or newer files.

The kill test runs a small training script in a subprocess, SIGKILLs it at random
moments (at least ``KILLS`` times), checks after every kill that the checkpoint
loads, then lets it finish and compares its final parameters and history with
an uninterrupted run of the same seed: they must be bit-identical.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import rnnkern as rk
from rnnkern import serialize

KILLS = 20
#: one thread everywhere: results are bit-identical for a fixed thread count
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import rnnkern as rk

    ckpt, out, backend, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (10, 48, 1)).astype(np.float32)
    target = np.cumsum(x, 0).astype(np.float32)
    model = rk.Sequential(rk.LSTM(1, 6), rk.Dense(6, 1), backend=backend, seed=0)
    opt = rk.Adam(model.parameters(), lr=1e-2, clip_norm=1.0)
    # the first step of a process loads the compiled update: before the kills' clock
    rk.Adam({"w": np.zeros(1, np.float32)}).step({"w": np.zeros(1, np.float32)})
    print("ready", flush=True)
    t0 = time.perf_counter()
    h = rk.fit(model, opt, x, target, epochs=epochs, batch_size=4, checkpoint=ckpt,
               checkpoint_every=1, resume=True, validation=(x[:, :8].copy(), target[:, :8]),
               progress=False, seed=3)
    print("trained", time.perf_counter() - t0, flush=True)
    np.savez(out, loss=np.array(h["loss"]), val_loss=np.array(h["val_loss"]),
             **model.parameters())
""")


def _start(script, ckpt, out, backend, epochs):
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), backend,
                             str(epochs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _finish(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return float(out.split("trained")[1])


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(CHILD)
    backend = "numpy"
    epochs = 6
    ref_out = tmp_path / "ref.npz"
    duration = _finish(_start(script, tmp_path / "ref-ckpt.npz", ref_out, backend, epochs))

    ckpt, out = tmp_path / "run.npz", tmp_path / "out.npz"
    rng = np.random.default_rng(int(time.time()))
    kills, started = 0, time.perf_counter()
    while kills < KILLS:
        assert time.perf_counter() - started < 240, "the kill loop is taking too long"
        proc = _start(script, ckpt, out, backend, epochs)
        assert proc.stdout.readline().strip() == "ready"
        # the whole of a run's training time is fair game, the early part most often,
        # so that the run is still going and writing checkpoints when the signal lands
        time.sleep(rng.uniform(0, duration / 8))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        if ckpt.exists():  # every kill leaves a checkpoint that loads, or none yet
            serialize.read(ckpt, (serialize.CHECKPOINT_FORMAT,))
            rk.load(ckpt, backend=backend)
        stale = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert stale in ([], [".run.npz.tmp"])
    assert ckpt.exists()
    _finish(_start(script, ckpt, out, backend, epochs))
    assert not (tmp_path / ".run.npz.tmp").exists()
    with np.load(ref_out) as a, np.load(out) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("backend", [b for b in rk.backends.available() if b != "cupy"])
def test_same_seed_in_two_processes_is_bit_identical(tmp_path, backend):
    """Same seed, same thread count, two separate processes: bit-identical history and
    parameters (docs/MEMORY.md says why other thread counts may differ in the last bits)."""
    script = tmp_path / "train.py"
    script.write_text(CHILD)
    outs = [tmp_path / f"out{i}.npz" for i in range(2)]
    for i, out in enumerate(outs):
        _finish(_start(script, tmp_path / f"ckpt{i}.npz", out, backend, 2))
    with np.load(outs[0]) as a, np.load(outs[1]) as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _task(backend="numpy", seed=0):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (6, 20, 1))
    model = rk.Sequential(rk.GRU(1, 4), rk.Dense(4, 1), backend=backend, dtype="float64",
                          seed=seed)
    return model, x, np.cumsum(x, 0)


@pytest.mark.parametrize("every", [1, 3, 7])
def test_resume_mid_epoch_in_process(tmp_path, backend, every):
    """Stop after some batches (a checkpoint written mid-epoch), resume: same result."""
    model, x, target = _task(backend)
    ref = rk.fit(model, rk.Adam(model.parameters(), lr=1e-2), x, target, epochs=3,
                 batch_size=6, progress=False)
    ref_params = {k: v.copy() for k, v in model.parameters().items()}

    path = tmp_path / "c.npz"
    model, x, target = _task(backend)
    opt = rk.Adam(model.parameters(), lr=1e-2)
    rk.fit(model, opt, x, target, epochs=1, batch_size=6, progress=False,
           checkpoint=path, checkpoint_every=every)
    # a fresh model and optimiser in a "new process": everything comes from the file
    model, x, target = _task(backend, seed=99)
    opt = rk.Adam(model.parameters(), lr=1e-2)
    h = rk.fit(model, opt, x, target, epochs=3, batch_size=6, progress=False,
               checkpoint=path, checkpoint_every=every, resume=True)
    assert h == ref
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, ref_params[k])
    assert opt.t == 3 * 4


def test_checkpoint_contents(tmp_path):
    model, x, target = _task()
    opt = rk.Adam(model.parameters(), lr=1e-2)
    path = tmp_path / "c.npz"
    h = rk.fit(model, opt, x, target, epochs=2, batch_size=8, progress=False, checkpoint=path)
    meta, arrays = serialize.read(path, (serialize.CHECKPOINT_FORMAT,))
    assert meta["format"] == "rnnkern-checkpoint" and meta["version"] == serialize.VERSION
    fit_meta = meta["fit"]
    assert fit_meta["t"] == opt.t == 6 and fit_meta["history"] == h
    assert fit_meta["position"]["epoch"] == 2 and fit_meta["rng"]["bit_generator"] == "PCG64"
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(arrays[f"param/{k}"], v)
        np.testing.assert_array_equal(arrays[f"opt/m/{k}"], opt.m[k])
        np.testing.assert_array_equal(arrays[f"opt/v/{k}"], opt.v[k])
    # a finished checkpoint: resuming returns its history, training nothing more
    before = {k: v.copy() for k, v in model.parameters().items()}
    assert rk.fit(model, opt, x, target, epochs=2, batch_size=8, progress=False,
                  checkpoint=path, resume=True) == h
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, before[k])
    # and a checkpoint is also a model file
    np.testing.assert_array_equal(rk.load(path, backend="numpy")(x), model(x))


def test_resume_refuses_other_settings(tmp_path):
    model, x, target = _task()
    path = tmp_path / "c.npz"
    rk.fit(model, rk.Adam(model.parameters()), x, target, epochs=1, batch_size=8,
           progress=False, checkpoint=path)
    cases = [dict(batch_size=5), dict(seed=1), dict(target=target * 2),
             dict(opt_lr=0.5)]
    for change in cases:
        model, x, target = _task()
        opt = rk.Adam(model.parameters(), lr=change.pop("opt_lr", 1e-3))
        kw = dict(epochs=2, batch_size=8, progress=False, checkpoint=path, resume=True)
        kw.update(change)
        t = kw.pop("target", target)
        with pytest.raises(ValueError, match="resume: the checkpoint"):
            rk.fit(model, opt, x, t, **kw)
    with pytest.raises(ValueError, match="resume"):
        rk.fit(model, opt, x, target, epochs=1, batch_size=8, progress=False, resume=True)
    with pytest.raises(ValueError, match="not an rnnkern checkpoint"):
        rk.save(model, tmp_path / "m.npz")
        rk.fit(model, opt, x, target, epochs=1, batch_size=8, progress=False,
               checkpoint=tmp_path / "m.npz", resume=True)


def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    model, _, _ = _task()
    path = tmp_path / "m.npz"
    rk.save(model, path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        rk.save(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def _rewrite(src, dst, **meta_changes):
    with np.load(src) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["__rnnkern__"]))
    meta.update(meta_changes)
    np.savez(dst, **{**arrays, "__rnnkern__": np.array(json.dumps(meta))})


def test_truncated_corrupt_foreign_and_future_files(tmp_path):
    model, x, target = _task()
    path = tmp_path / "c.npz"
    rk.fit(model, rk.Adam(model.parameters()), x, target, epochs=1, batch_size=8,
           progress=False, checkpoint=path)
    good = path.read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in (0, 10, len(good) // 3, len(good) - 10):
        bad.write_bytes(good[:cut])
        with pytest.raises(ValueError, match="not a readable"):
            rk.load(bad)
    with zipfile.ZipFile(path) as zf:  # the last data byte of a parameter array
        info = zf.getinfo("param/0.R.npy")
        last = info.header_offset + 30 + len(info.filename) + len(info.extra) + \
            info.compress_size - 1
    flipped = bytearray(good)
    flipped[last] ^= 0x01  # one bit flipped inside an array: the zip CRC catches it
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="bad.npz"):
        rk.load(bad)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not an rnnkern"):
        rk.load(tmp_path / "one.npy")
    np.savez(bad, __rnnkern__=np.array(5))  # metadata that is not a JSON object
    with pytest.raises(ValueError, match="not an rnnkern"):
        rk.load(bad)
    np.savez(bad, pickled=np.array([{"a": 1}], dtype=object))  # never unpickled
    with pytest.raises(ValueError, match="not a readable"):
        rk.load(bad)
    _rewrite(path, bad, version=2)
    with pytest.raises(ValueError, match="newer rnnkern"):
        rk.load(bad)
    _rewrite(path, bad, version="1")
    with pytest.raises(ValueError, match="version"):
        rk.load(bad)
    _rewrite(path, bad, format="something-else")
    with pytest.raises(ValueError, match="not an rnnkern"):
        rk.load(bad)
    _rewrite(path, bad, model={"type": "Conv", "in_features": 1})
    with pytest.raises(ValueError, match="unknown layer spec"):
        rk.load(bad)
    with pytest.raises(FileNotFoundError):
        rk.load(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="path"):
        rk.load(3)
    assert zipfile.is_zipfile(path)
