"""fit's callbacks (early stopping, plain callables), learning-rate schedules and verbose
lines; checkpoint-resume carries their state bit for bit."""

import math

import numpy as np
import pytest

import rnnkern as rk
from rnnkern.schedules import Cosine, StepDecay, WarmUp


def task(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 12, 2))
    return x, np.roll(x, -1, axis=0)


def model(backend="numpy"):
    return rk.Sequential(rk.Dense(2, 4, "tanh"), rk.GRU(4, 4), rk.Dense(4, 2),
                         backend=backend, dtype="float64", seed=1)


def params_equal(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------
# schedules


def test_schedule_values():
    s = StepDecay(3, gamma=0.5)
    assert [s(1.0, i) for i in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    c = Cosine(4, min_lr=0.1)
    assert c(1.0, 0) == 1.0 and c(1.0, 2) == pytest.approx(0.55) and c(1.0, 4) == 0.1
    assert c(1.0, 9) == 0.1  # held at min_lr after total
    w = WarmUp(4)
    assert [w(2.0, i) for i in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    wc = WarmUp(2, then=Cosine(2, per="step"))
    assert wc.per == "step"
    assert [wc(1.0, i) for i in range(5)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert WarmUp(2, then=StepDecay(1)).per == "epoch"  # then's unit
    assert "Cosine(total=4, min_lr=0.1, per='epoch')" == repr(c)


def test_schedule_errors():
    with pytest.raises(ValueError, match="step_size: expected an integer >= 1"):
        StepDecay(0)
    with pytest.raises(ValueError, match="gamma: expected a finite number > 0"):
        StepDecay(2, gamma=0)
    with pytest.raises(ValueError, match="per: expected one of 'step', 'epoch'"):
        Cosine(3, per="batch")
    with pytest.raises(ValueError, match="then: counts per 'epoch', but the warm-up"):
        WarmUp(2, then=Cosine(3), per="step")
    with pytest.raises(TypeError, match="then: expected a schedule"):
        WarmUp(2, then=lambda lr, i: lr)
    m = model()
    x, t = task()
    with pytest.raises(TypeError, match="schedule: expected an rnnkern.schedules"):
        rk.fit(m, rk.Adam(m.parameters()), x, t, epochs=1, batch_size=4,
               schedule=lambda lr, i: lr, progress=False)


@pytest.mark.parametrize("per", ["step", "epoch"])
def test_schedule_sets_the_rate_of_every_step(monkeypatch, per):
    """Per step: step k (from 0, tbptt chunks included) runs at schedule(base, k); per
    epoch: every step of epoch e at schedule(base, e)."""
    x, t = task()
    m = model()
    opt = rk.SGD(m.parameters(), lr=0.1)
    seen = []
    real = opt.step
    monkeypatch.setattr(opt, "step", lambda g: seen.append(opt.lr) or real(g))
    sched = Cosine(7, min_lr=0.01, per=per)
    h = rk.fit(m, opt, x, t, epochs=3, batch_size=6, tbptt=4, schedule=sched,
               progress=False)
    steps_per_epoch = 2 * 2  # two batches of two chunks
    assert len(seen) == 3 * steps_per_epoch
    want = [sched(0.1, k if per == "step" else k // steps_per_epoch) for k in range(12)]
    assert seen == want
    assert h["lr"] == [want[(e + 1) * steps_per_epoch - 1] for e in range(3)]


# ----------------------------------------------------------------------------
# callbacks


def test_plain_callable_sees_the_history_and_stops():
    x, t = task()
    m = model()
    calls = []

    def cb(epoch, history):
        calls.append((epoch, len(history["loss"]), len(history["val_loss"])))
        return epoch == 3

    h = rk.fit(m, rk.Adam(m.parameters()), x, t, epochs=10, batch_size=6,
               validation=(x, t), callbacks=[cb], progress=False)
    assert calls == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    assert len(h["loss"]) == 3


def test_early_stopping_restores_the_best_epoch():
    x, t = task()
    m = model()
    snapshots = []
    # a large rate makes the validation loss rise again within a few epochs
    stop = rk.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    record = rk.callbacks.Callback()
    record.on_epoch_end = lambda epoch, history, model: snapshots.append(
        {k: v.copy() for k, v in model.parameters().items()})
    h = rk.fit(m, rk.Adam(m.parameters(), lr=0.5), x, t, epochs=40, batch_size=4,
               validation=(x, t), callbacks=[record, stop], progress=False)
    val = h["val_loss"]
    best = int(np.argmin(val))
    assert stop.best == val[best] and stop.best_epoch == best + 1
    assert 0 < stop.stopped_epoch == len(val) < 40  # it stopped the run
    assert len(val) == best + 1 + 3  # patience 2: the third epoch without improvement
    assert params_equal(m.parameters(), snapshots[best])


def test_early_stopping_modes_and_errors():
    s = rk.callbacks.EarlyStopping("loss", patience=1, min_delta=0.1, mode="max")
    m = model()
    h = {"loss": []}
    stops = []
    for v in (1.0, 1.05, 1.2, 1.25, 1.3):
        h["loss"].append(v)
        stops.append(s.on_epoch_end(len(h["loss"]), h, m))
    assert stops == [False, False, False, False, True] and s.best == 1.2
    with pytest.raises(ValueError, match="monitor: 'val_loss' is not in the history"):
        rk.callbacks.EarlyStopping().on_epoch_end(1, {"loss": [1.0]}, m)
    with pytest.raises(ValueError, match="mode: expected one of 'min', 'max'"):
        rk.callbacks.EarlyStopping(mode="lower")
    x, t = task()
    with pytest.raises(TypeError, match=r"callbacks\[0\]: expected an rnnkern.callbacks"):
        rk.fit(m, rk.Adam(m.parameters()), x, t, epochs=1, batch_size=4, callbacks=[3],
               progress=False)


def test_verbose_prints_a_line_per_epoch(capsys):
    x, t = task()
    m = model()
    rk.fit(m, rk.Adam(m.parameters()), x, t, epochs=3, batch_size=6, validation=(x, t),
           schedule=StepDecay(2), verbose=True, progress=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3: loss ") and "val_loss " in lines[0]
    assert "lr 0.001" in lines[0] and "lr 0.0001" in lines[2]


# ----------------------------------------------------------------------------
# checkpoint and resume


class Interrupt(Exception):
    pass


def counting_mse(limit):
    """mse that raises Interrupt at its ``limit``-th call (a kill mid-epoch)."""
    calls = [0]

    def loss(y, target, mask):
        calls[0] += 1
        if calls[0] == limit:
            raise Interrupt
        return rk.losses.mse(y, target, mask)

    return loss


SETUPS = {
    "schedule-step": lambda: {"schedule": WarmUp(3, then=Cosine(10, per="step"))},
    "schedule-epoch": lambda: {"schedule": StepDecay(2, gamma=0.5)},
    "early-stopping": lambda: {"callbacks": [rk.callbacks.EarlyStopping(
        patience=1, min_delta=0.01, restore_best=True)]},
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
# 4 loss calls an epoch (3 batches, the validation): at epoch 2's validation, and in
# epoch 4's first batch
@pytest.mark.parametrize("limit", [8, 13])
def test_resume_is_bit_identical(tmp_path, setup, limit):
    x, t = task()

    def run(loss_limit, resume):
        m = model()
        opt = rk.Adam(m.parameters(), lr=0.2)
        kw = SETUPS[setup]()
        h = rk.fit(m, opt, x, t, epochs=12, batch_size=4, validation=(x, t),
                   loss=counting_mse(loss_limit), checkpoint=tmp_path / f"{setup}.npz",
                   resume=resume, progress=False, **kw)
        return h, m.parameters(), opt, kw

    h1, p1, opt1, kw1 = run(math.inf, False)
    (tmp_path / f"{setup}.npz").unlink()
    with pytest.raises(Interrupt):
        run(limit, False)
    h2, p2, opt2, kw2 = run(math.inf, True)
    assert h1 == h2 and params_equal(p1, p2)
    assert opt1.t == opt2.t and opt1.lr == opt2.lr
    assert params_equal(opt1.m, opt2.m) and params_equal(opt1.v, opt2.v)
    if setup == "early-stopping":
        a, b = kw1["callbacks"][0], kw2["callbacks"][0]
        assert (a.best, a.best_epoch, a.stopped_epoch) == (b.best, b.best_epoch,
                                                           b.stopped_epoch)
        assert 0 < a.stopped_epoch < 12
    # a finished run resumes to its result at once
    h3, p3, _, _ = run(1, True)
    assert h3 == h1 and params_equal(p3, p1)


def test_resume_refuses_another_schedule(tmp_path):
    x, t = task()
    m = model()
    rk.fit(m, rk.Adam(m.parameters()), x, t, epochs=1, batch_size=6,
           checkpoint=tmp_path / "c.npz", schedule=StepDecay(2), progress=False)
    m = model()
    with pytest.raises(ValueError, match="another fit settings"):
        rk.fit(m, rk.Adam(m.parameters()), x, t, epochs=2, batch_size=6,
               checkpoint=tmp_path / "c.npz", resume=True, schedule=StepDecay(3),
               progress=False)
