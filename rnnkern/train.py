"""Training: ``value_and_grad``, ``evaluate`` and the ``fit`` loop.

    loss, grads = value_and_grad(model, x, target, mask=masks.from_step(4, T), feedback=4)
    history = fit(model, Adam(model.parameters(), lr=3e-3), x, target, epochs=50,
                  batch_size=32, validation=(x_val, t_val))

``fit`` is split into ``train_batch`` (the optimiser steps of one batch: one, or
one per chunk with ``tbptt``) and the epoch loop, which owns shuffling,
non-finite handling and checkpoints. Arguments are validated once at entry; the
inner loops trust them.

Long runs (DESIGN.md, "Training"):

- ``tbptt=k``: every batch runs in chunks of k steps, the state carried forward
  (detached) from one chunk to the next, one optimiser step per chunk, gradients
  cut at chunk borders. Works with masks and ``lengths`` (a chunk whose mask
  selects nothing only carries the state forward); ``feedback=n`` is supported
  when every fed-back step lies in the last chunk (without ``lengths``).
- ``checkpoint=path, checkpoint_every=N``: after every N batches (and at the end)
  the parameters, the optimiser's buffers and step count, the shuffling
  generator's state, the position (epoch, batch, the epoch's order and running
  loss) and the history are written atomically; ``resume=True`` continues from
  the file, bit-identically to a run that was never interrupted.
- ``on_nonfinite``: the loss and the gradient norm are checked at every step.
  "raise" stops with ``FloatingPointError`` (``optim.NonFiniteError``) naming the
  epoch and batch; "skip" drops the batch and counts it in ``history["skipped"]``.
  Either way the parameters and optimiser state stay at their last finite values.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import losses, serialize
from ._threads import one_pool
from ._validate import (
    Call,
    array_module,
    as_array,
    check_bool,
    check_choice,
    check_finite,
    check_inputs,
    check_int,
    check_model,
)
from .callbacks import Callback, check_callbacks
from .generate import Sampler, backprop, run, stream
from .layers import Layer, drawing_from, move
from .optim import NonFiniteError, Optimizer
from .schedules import Schedule, check_schedule

ON_NONFINITE = ("raise", "skip")


def _value_and_grad(model: Layer, x: Any, target: Any, loss_fn: losses.LossFn, m: Any,
                    lengths: Any, state: Any, feedback: int) -> tuple[float, dict, Any]:
    """Loss, gradients and final state for validated arguments; ``m``: resolved (T, B)
    weights. The gradient of the initial state is dropped (cut there)."""
    y, state, tape = run(model, x, state, lengths, feedback, record=True)
    value, dy = losses.apply(loss_fn, y, target, m)
    grads, _ = backprop(model, dy, tape)
    return value, grads, state


def _no_token_feedback(model: Layer, feedback: int, name: str = "feedback") -> None:
    """Training free-running feeds outputs back through their gradient; a model that
    starts with Embedding would feed back ids drawn from its outputs, and a draw has no
    gradient: refused (``evaluate(..., feedback=n, sampler=...)`` runs that loop)."""
    if feedback and model.tokens:
        raise ValueError(f"{name}: a model that starts with Embedding feeds back ids drawn "
                         f"from its outputs, which have no gradient, so it trains "
                         f"teacher-forced only (got {name}={feedback}); run the self-driven "
                         f"phase with evaluate(..., feedback=n, sampler='greedy')")


def _feed(model: Layer, feedback: int, sampler: Any) -> Sampler | None:
    """What ``evaluate`` feeds back: outputs as they are (None), or a Sampler's ids."""
    if sampler is None:
        if feedback and model.tokens:
            raise ValueError("sampler: a model that starts with Embedding needs 'greedy', "
                             "'categorical' or a callable to feed its outputs back as ids "
                             f"(feedback={feedback}), got None")
        return None
    if not feedback:
        raise ValueError(f"sampler: only used for the fed-back steps, but feedback=0; "
                         f"pass feedback=n or leave sampler=None (got {sampler!r})")
    return Sampler(model, sampler, seed=0)


def _scores(model: Layer, c: Call, loss_fn: losses.LossFn, m: Any, feedback: int,
            feed: Sampler | None, metrics: tuple[str, ...]) -> dict[str, float]:
    """{"loss": ..., metric: ...} of one streamed forward over validated arguments."""
    y, _, _ = run(model, c.x, c.state, c.lengths, feedback, record=False, feed=feed)
    out = {"loss": losses.apply(loss_fn, y, c.target, m)[0]}
    for name in metrics:
        out[name] = losses.METRICS[name](y, c.target, m)
    return out


def _resolved(model: Layer, c: Call, mask: Any) -> Any:
    T, B = c.x.shape[:2]
    return losses.resolve_mask(mask, c.lengths, T, B, model.dtype, array_module(x=c.x))


def _is_seq2one(target: Any) -> bool:
    """Whether ``target`` is 2-d values: (B, O), one per row (a list counts by its nesting;
    2-d integers are (T, B) class ids, cross-entropy's targets)."""
    if isinstance(target, (list, tuple)):
        try:
            target = np.asarray(target)
        except ValueError:  # ragged: the full check names it
            return False
    return getattr(target, "ndim", None) == 2 and getattr(target, "dtype", None) is not None \
        and target.dtype.kind not in "iub"


def _checked(model: Layer, x: Any, target: Any, lengths: Any, feedback: int, state: Any,
             mask: Any) -> tuple[Call, Any]:
    """``check_inputs`` and the resolved (T, B) loss weights of ``mask``.

    A (B, O) target is sequence-to-one: the value each row's output should have at its
    last true step (``data.last_step``); it becomes the (T, B, O) target with that value
    there and the mask of those steps (``masks.last_step``). ``mask`` must then be None.
    """
    if not _is_seq2one(target):
        c = check_inputs(model, x, target, lengths, feedback, state)
        return c, _resolved(model, c, mask)
    c = check_inputs(model, x, None, lengths, feedback, state)
    T, B = c.x.shape[:2]
    O = model.out_features
    try:
        t1 = as_array("target", target, (("B", B), ("out_features", O)), model.dtype,
                      contiguous=False)
    except ValueError as e:
        raise ValueError(f"{e}; a 2-d target is sequence-to-one, one (O,) value per row for "
                         f"its last true step; for one value per step pass (T={T}, B={B}, "
                         f"O={O})") from None
    if mask is not None:
        raise ValueError("mask: a (B, O) target already selects each row's last true step; "
                         "pass mask=None, or a (T, B, O) target with the mask")
    xp = array_module(x=c.x, target=t1)
    last = xp.full(B, T - 1) if c.lengths is None else xp.asarray(c.lengths) - 1
    full = xp.zeros((T, B, O), model.dtype)
    full[last, xp.arange(B)] = t1
    m = (xp.arange(T)[:, None] == last[None, :]).astype(model.dtype)
    return c._replace(target=full), m


@one_pool
def value_and_grad(model: Layer, x: Any, target: Any, loss: Any = "mse", mask: Any = None,
                   lengths: Any = None, state: Any = None, feedback: int = 0
                   ) -> tuple[float, dict[str, Any]]:
    """The loss and its gradient for every parameter (names as ``model.parameters()``).

    Time-major: x: (T, B, I) (batch-first data: ``data.from_batch_first``)
    target: (T, B, O), or (B, O) for sequence-to-one (each row's last true step; mask
    then None)   mask: (T, B) or (T, 1) or None (every true step)
    lengths: (B,) int or None   state: initial state (None: zeros)
    feedback: the last ``feedback`` inputs of each row are the model's own previous
    outputs, and the gradient flows back through that loop.
    """
    c, m = _checked(model, x, target, lengths, feedback, state, mask)
    _no_token_feedback(model, feedback)
    loss_fn = losses.get(loss)
    value, grads, _ = _value_and_grad(model, c.x, c.target, loss_fn, m, c.lengths, c.state,
                                      feedback)
    return value, grads


@one_pool
def evaluate(model: Layer, x: Any, target: Any, loss: Any = "mse", mask: Any = None,
             lengths: Any = None, state: Any = None, feedback: int = 0, sampler: Any = None,
             metrics: tuple[str, ...] = ()) -> float | dict[str, float]:
    """The loss without gradients; ``feedback=n``: the model drives itself for the last
    ``n`` steps of each row (the validation phase of free-running training).

    Time-major: x: (T, B, I)   target: (T, B, O) or (B, O) (sequence-to-one); the other
    arguments as ``value_and_grad``.
    sampler: how a fed-back output becomes the next input (see ``generate``): None as it
    is; "greedy", "categorical" (temperature 1, from a generator seeded with 0: the
    same result every call) or a callable ``(output (B, O), rng) -> next input``. A
    model that starts with Embedding needs one with ``feedback``.
    metrics: names from ``losses.METRICS`` ("accuracy": the mask-weighted share of
    steps whose largest output is the target class). Returns the loss, or with
    metrics a dict ``{"loss": ..., name: ...}``.

    Streams: the forward runs in pieces (``generate.STREAM_CHUNK`` steps) and keeps
    no caches, so memory is the outputs (T, B, O) plus one piece's work. NaN or inf
    in ``x`` or ``target`` is refused up front.
    """
    c, m = _checked(model, x, target, lengths, feedback, state, mask)
    check_finite("x", c.x)
    check_finite("target", c.target)
    loss_fn = losses.get(loss)
    metrics = losses.check_metrics(metrics)
    feed = _feed(model, feedback, sampler)
    out = _scores(model, c, loss_fn, m, feedback, feed, metrics)
    return out if metrics else out["loss"]


@dataclass
class Batch:
    """Training data sliced along B: x: (T, B, I), target: (T, B, O), mask: (T, B) weights."""

    x: Any
    target: Any
    mask: Any
    lengths: Any

    def take(self, idx: Any) -> Batch:
        xp = array_module(x=self.x)
        idx = move(idx, xp)
        return Batch(xp.take(self.x, idx, axis=1), xp.take(self.target, idx, axis=1),
                     xp.take(self.mask, idx, axis=1),
                     None if self.lengths is None else self.lengths[idx])


def _step(opt: Optimizer, value: float, grads: dict[str, Any],
          before: Callable[[], None] | None = None) -> None:
    """``opt.step`` after checking the loss is finite (the step checks the gradients) and
    calling ``before``, which sets a per-step learning rate."""
    if not math.isfinite(value):
        raise NonFiniteError(f"the loss is {value}")
    if before is not None:
        before()
    opt.step(grads)


def train_batch(model: Layer, opt: Optimizer, batch: Batch, loss_fn: losses.LossFn,
                feedback: int, tbptt: int | None = None,
                before_step: Callable[[], None] | None = None) -> float:
    """The optimiser steps of one batch; returns the batch's loss before them.
    ``before_step`` runs before every optimiser step (a per-step schedule).

    tbptt=k: chunks of k steps, one step each, the state carried (detached); the
    loss returned is the chunks' losses weighted by the weight each chunk's mask
    holds (the batch's loss when every chunk saw the same parameters).
    Raises NonFiniteError (nothing updated by that step) on a NaN/inf.
    """
    T = batch.x.shape[0]
    if tbptt is None or tbptt >= T:
        value, grads, _ = _value_and_grad(model, batch.x, batch.target, loss_fn, batch.mask,
                                          batch.lengths, None, feedback)
        _step(opt, value, grads, before_step)
        return value
    xp = array_module(x=batch.x)
    state, total, weight = None, 0.0, 0.0
    for s in range(0, T, tbptt):
        e = min(s + tbptt, T)
        # rows that ended before this chunk run one padding step; their mask is zero
        lengths = None if batch.lengths is None else xp.clip(batch.lengths - s, 1, e - s)
        m = batch.mask[s:e]
        n = float(m.sum())
        if n == 0:  # nothing to learn here: carry the state forward only
            _, state = stream(model, batch.x[s:e], state, lengths)
            continue
        value, grads, state = _value_and_grad(model, batch.x[s:e], batch.target[s:e], loss_fn,
                                              m, lengths, state, feedback if e == T else 0)
        _step(opt, value, grads, before_step)
        total += value * n
        weight += n
    return total / weight


def _validation_set(validation: Any, model: Layer, mask: Any, feedback: int) -> Batch:
    """(x, target[, mask[, lengths]]) checked; a (T, 1) training mask serves it too."""
    if not isinstance(validation, (tuple, list)):
        raise TypeError("validation: expected (x, target), (x, target, mask) or "
                        f"(x, target, mask, lengths), got {type(validation).__name__}")
    if not 2 <= len(validation) <= 4:
        raise ValueError("validation: expected (x, target), (x, target, mask) or "
                         f"(x, target, mask, lengths), got {len(validation)} entries")
    x, target, *rest = validation
    seq2one = _is_seq2one(target)  # its own mask: the training mask does not serve it
    v_mask = rest[0] if rest else None if seq2one else mask
    if not rest and not seq2one and mask is not None and np.shape(mask)[1:] != (1,):
        raise ValueError("validation: the training mask is per row (T, B); pass the "
                         "validation mask as validation=(x, target, mask)")
    try:
        c, m = _checked(model, x, target, rest[1] if len(rest) > 1 else None, feedback, None,
                        v_mask)
        check_finite("x", c.x)
        check_finite("target", c.target)
    except (TypeError, ValueError) as e:
        raise type(e)(f"validation: {e}") from e
    return Batch(c.x, c.target, m, c.lengths)


# ----------------------------------------------------------------------------
# the position of a run, and checkpoints


#: the counters of a Position that a checkpoint stores (besides order and history)
COUNTERS = ("epoch", "batch", "total", "rows", "skipped")
#: the same for a schedule and callbacks: absent from older checkpoints (defaults then)
RUN_COUNTERS = ("stopped", "t0", "base_lr")


@dataclass
class Position:
    """Where a run stands: everything besides parameters and optimiser a resume needs.

    epoch: epochs completed   batch: batches of the current epoch done
    order: the current epoch's row order (None before it is drawn)
    total, rows: the running sum of batch loss x rows, and the rows it covers
    skipped: batches skipped this epoch   history: per-epoch results so far
    stopped: 1 once a callback stopped the run
    t0, base_lr: the optimiser's step count and learning rate when the run started
    (what a schedule counts from and scales)
    """

    history: dict[str, list]
    epoch: int = 0
    batch: int = 0
    order: np.ndarray | None = None
    total: float = 0.0
    rows: int = 0
    skipped: int = 0
    stopped: int = 0
    t0: int = 0
    base_lr: float = 0.0

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batch, self.order, self.total, self.rows, self.skipped = 0, None, 0.0, 0, 0


def _crc(*arrays: Any) -> int:
    """A checksum of the training data: resuming on other data is refused."""
    crc = 0
    for a in arrays:
        if a is not None:
            crc = zlib.crc32(np.ascontiguousarray(move(a, np)).view(np.uint8).ravel(), crc)
    return crc


def _write_checkpoint(path: str, model: Layer, opt: Optimizer, rng: np.random.Generator,
                      pos: Position, settings: dict[str, Any], cbs: list[Callback]) -> None:
    arrays = {**serialize.param_arrays(model), **serialize.optimizer_arrays(opt)}
    if pos.order is not None:
        arrays["order"] = pos.order
    cb_meta = []
    for i, cb in enumerate(cbs):
        m, a = cb.state()
        cb_meta.append(m)
        arrays.update({f"callback/{i}/{k}": v for k, v in a.items()})
    meta = serialize.model_meta(model, serialize.CHECKPOINT_FORMAT)
    # the run's starting learning rate: a schedule changes opt.lr, the optimiser a resume
    # is given is made with the rate the run started from
    meta["fit"] = {"settings": settings, "optimizer": {**opt.hyperparameters(),
                                                       "lr": pos.base_lr},
                   "t": opt.t, "lr": opt.lr, "rng": rng.bit_generator.state,
                   "history": pos.history,
                   "position": {k: getattr(pos, k) for k in COUNTERS + RUN_COUNTERS},
                   "callbacks": cb_meta}
    serialize.write_atomic(path, arrays, meta)


def _resume(path: str, model: Layer, opt: Optimizer, rng: np.random.Generator,
            settings: dict[str, Any], cbs: list[Callback]) -> Position:
    """Load the checkpoint at ``path`` into model, opt and rng; returns the position."""
    meta, arrays = serialize.read(path, (serialize.CHECKPOINT_FORMAT,))
    fit_meta = meta.get("fit")
    if not isinstance(fit_meta, dict):
        raise ValueError(f"{path}: corrupt checkpoint (no 'fit' metadata)")
    for what, saved, now in (("model", meta.get("model"), model.spec()),
                             ("dtype", meta.get("dtype"), str(model.dtype)),
                             ("optimiser", fit_meta.get("optimizer"), opt.hyperparameters()),
                             ("fit settings", fit_meta.get("settings"), settings)):
        if saved != now:
            raise ValueError(f"resume: the checkpoint {path} was written with another {what} "
                             f"({saved!r}, now {now!r}); resume with the same model, "
                             f"optimiser, data and fit arguments, or start a new checkpoint")
    try:
        model.load_parameters({k.removeprefix("param/"): v for k, v in arrays.items()
                               if k.startswith("param/")})
        serialize.load_optimizer(opt, arrays, fit_meta["t"])
        opt.lr = float(fit_meta.get("lr", opt.lr))  # where a schedule had taken it
        rng.bit_generator.state = fit_meta["rng"]
        saved = fit_meta["position"]
        pos = Position(fit_meta["history"], **{k: saved[k] for k in COUNTERS},
                       **{k: saved[k] for k in RUN_COUNTERS if k in saved})
        if "base_lr" not in saved:
            pos.base_lr, pos.t0 = opt.lr, 0
        for i, (cb, m) in enumerate(zip(cbs, fit_meta.get("callbacks", [{}] * len(cbs)),
                                        strict=True)):
            prefix = f"callback/{i}/"
            cb.load_state(m, {k.removeprefix(prefix): v for k, v in arrays.items()
                              if k.startswith(prefix)})
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from e
    pos.order = arrays.get("order")
    return pos


# ----------------------------------------------------------------------------
# fit



def _check_tbptt(tbptt: Any, model: Layer, c: Call, feedback: int) -> int | None:
    if tbptt is None:
        return None
    tbptt = check_int("tbptt", tbptt, 1)
    T = c.x.shape[0]
    if tbptt < T and not model.causal:
        raise ValueError(f"tbptt: the model reads its inputs backwards too (a bidirectional "
                         f"layer), so it cannot train in chunks of steps; got tbptt={tbptt} "
                         f"< T={T}, expected None")
    if feedback and tbptt < T:
        last = (T - 1) // tbptt * tbptt  # start of the last chunk
        if c.lengths is not None or T - feedback - 1 < last:
            raise ValueError(f"tbptt: with feedback={feedback} every fed-back step and the "
                             f"output fed into the first of them must lie in the last chunk "
                             f"(steps {last}..{T - 1}) and lengths must be None; got "
                             f"tbptt={tbptt}, T={T}" + (", lengths" if c.lengths is not None
                                                        else ""))
    return tbptt


@one_pool
def fit(model: Layer, opt: Optimizer, x: Any, target: Any, epochs: int, batch_size: int,
        mask: Any = None, lengths: Any = None, feedback: int = 0, validation: Any = None,
        shuffle: bool = True, seed: int = 0, progress: bool = True, loss: Any = "mse",
        val_feedback: int | None = None, tbptt: int | None = None,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1,
        resume: bool = False, on_nonfinite: str = "raise", callbacks: Any = None,
        schedule: Schedule | None = None, verbose: bool = False,
        metrics: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """Train ``model`` with ``opt`` for ``epochs`` passes of mini-batches along B.

    Time-major: x: (T, B, I) (batch-first data: ``data.from_batch_first``)
    target: (T, B, O), or (B, O) for sequence-to-one (the value of each row's output at
    its last true step, ``data.last_step``; mask then None)
    mask: (T, B) or (T, 1) or None   lengths: (B,)
    Arrays may be strided views (``x[:, :32]``): each is copied once at entry.
    feedback: free-running training, the last n inputs fed back (see value_and_grad).
    validation: (x, target[, mask[, lengths]]), evaluated after every epoch with
    ``val_feedback`` (default: ``feedback``) steps driven by the model itself.
    shuffle: a new order every epoch from ``np.random.default_rng(seed)``, the generator
    dropout masks are drawn from too (the only randomness: same seed, same data, same
    model -> bit-identical history on CPU with the same thread count).
    progress: a tqdm bar over epochs showing the losses.
    verbose: print one line per epoch (losses, learning rate, seconds), beside or
    without the bar.
    callbacks: a list of ``callbacks.Callback`` (e.g. ``EarlyStopping``) or callables
    ``(epoch, history) -> bool | None``, run after every epoch's validation; True from
    any stops the run there.
    schedule: a ``schedules`` schedule: ``opt.lr`` is set from it before every step or
    epoch (its ``per``), scaling the rate ``opt`` had when the run started; the
    history then has "lr", the rate of each epoch's last step.
    tbptt, checkpoint, checkpoint_every, resume, on_nonfinite: see the module doc; a
    checkpoint carries the callbacks' and the schedule's state, so a resumed run equals
    one that never stopped.
    metrics: names from ``losses.METRICS``, measured on the validation set after every
    epoch as ``history["val_<name>"]`` (and shown in the progress bar).
    A model that starts with Embedding (x: (T, B) ids) trains teacher-forced:
    ``feedback``/``val_feedback`` > 0 are refused, since the ids it would feed back are
    drawn from its outputs and a draw has no gradient; ``evaluate(..., feedback=n,
    sampler=...)`` measures the self-driven phase.
    ``epochs`` counts from the start of the run, so a resumed run trains the
    epochs that are left; a finished checkpoint returns its history at once.

    NaN or inf in the data, and a mask row that selects no step, are refused up
    front. Returns the history: {"loss": [...], "val_loss": [...] (with
    validation), "skipped": [...] (with on_nonfinite="skip")}, one entry per epoch.
    """
    check_model(model)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    opt = serialize.check_optimizer(opt, model)
    c, m = _checked(model, x, target, lengths, feedback, None, mask)
    check_finite("x", c.x)
    check_finite("target", c.target)
    loss_fn = losses.get(loss)
    val_feedback = feedback if val_feedback is None else check_int("val_feedback",
                                                                   val_feedback, 0)
    _no_token_feedback(model, feedback)
    _no_token_feedback(model, val_feedback, "val_feedback")
    metrics = losses.check_metrics(metrics)
    if metrics and validation is None:
        raise ValueError(f"metrics: measured on the validation set, but validation=None "
                         f"(got metrics={metrics!r})")
    shuffle, progress = check_bool("shuffle", shuffle), check_bool("progress", progress)
    seed = check_int("seed", seed, 0)
    tbptt = _check_tbptt(tbptt, model, c, feedback)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    resume = check_bool("resume", resume)
    on_nonfinite = check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
    cbs = check_callbacks(callbacks)
    schedule = check_schedule(schedule)
    verbose = check_bool("verbose", verbose)
    if checkpoint is not None:
        checkpoint = serialize._fspath(checkpoint)
    elif resume:
        raise ValueError("resume: expected a checkpoint=path to resume from, got checkpoint=None")
    T, B = c.x.shape[:2]
    empty = np.flatnonzero(move(~m.any(axis=0), np))
    if empty.size:
        raise ValueError(f"mask: rows {empty[:10].tolist()} select no step; every row fit "
                         f"trains on must count in the loss (leave those rows out)")
    data = Batch(c.x, c.target, m, c.lengths)
    val = None if validation is None else _validation_set(validation, model, mask, val_feedback)

    rng = np.random.default_rng(seed)
    history: dict[str, list] = {"loss": []}
    if val is not None:
        history["val_loss"] = []
        history.update({f"val_{name}": [] for name in metrics})
    if on_nonfinite == "skip":
        history["skipped"] = []
    if schedule is not None:
        history["lr"] = []
    pos = Position(history, t0=opt.t, base_lr=opt.lr)
    settings = {"batch_size": batch_size, "shuffle": shuffle, "seed": seed,
                "feedback": feedback, "val_feedback": val_feedback, "tbptt": tbptt,
                "on_nonfinite": on_nonfinite, "loss": loss if isinstance(loss, str) else None,
                "shape": [T, B], "data_crc32": _crc(c.x, c.target, m, c.lengths)} \
        if checkpoint is not None else {}
    if checkpoint is not None:  # only when used: checkpoints without them still resume
        if schedule is not None:
            settings["schedule"] = schedule.spec()
        if cbs:
            settings["callbacks"] = [type(cb).__name__ for cb in cbs]
    if resume and os.path.exists(checkpoint):
        pos = _resume(checkpoint, model, opt, rng, settings, cbs)

    def set_step_lr() -> None:
        opt.lr = schedule(pos.base_lr, opt.t - pos.t0)

    per_step = set_step_lr if schedule is not None and schedule.per == "step" else None
    n_batches = -(-B // batch_size)
    if progress:  # tqdm is imported only when a bar is shown
        from tqdm import tqdm
    else:
        def tqdm(**_: Any) -> contextlib.nullcontext:
            quiet = SimpleNamespace(update=lambda n: None, set_postfix=lambda shown: None)
            return contextlib.nullcontext(quiet)

    with tqdm(total=epochs, initial=min(pos.epoch, epochs), unit="epoch") as bar:
        while pos.epoch < epochs and not pos.stopped:
            started = time.perf_counter()
            if schedule is not None and schedule.per == "epoch":
                opt.lr = schedule(pos.base_lr, pos.epoch)
            if pos.order is None:
                pos.order = rng.permutation(B) if shuffle else np.arange(B)
            while pos.batch < n_batches:
                idx = pos.order[pos.batch * batch_size : (pos.batch + 1) * batch_size]
                try:
                    with drawing_from(rng):  # dropout masks: one seed fixes the whole run
                        value = train_batch(model, opt, data.take(idx), loss_fn, feedback,
                                            tbptt, per_step)
                except NonFiniteError as e:
                    if on_nonfinite == "raise":
                        raise NonFiniteError(
                            f"fit: epoch {pos.epoch + 1}, batch {pos.batch + 1} of {n_batches}: "
                            f"{e}; training stopped, the parameters and optimiser state are "
                            f"their last finite values (on_nonfinite='skip' skips such "
                            f"batches)") from e
                    pos.skipped += 1
                else:
                    pos.total += value * len(idx)
                    pos.rows += len(idx)
                pos.batch += 1
                if checkpoint is not None and (pos.epoch * n_batches + pos.batch) \
                        % checkpoint_every == 0:
                    _write_checkpoint(checkpoint, model, opt, rng, pos, settings, cbs)
            shown = _end_epoch(model, pos, val, loss_fn, val_feedback, metrics, cbs,
                               None if schedule is None else opt.lr)
            bar.update(1)
            bar.set_postfix(shown)
            if verbose:
                (tqdm.write if progress else print)(f"epoch {pos.epoch}/{epochs}: " + ", ".join(
                    f"{k} {v}" for k, v in shown.items())
                    + f" [{time.perf_counter() - started:.2f} s]"
                    + (" (stopped by a callback)" if pos.stopped else ""))
    for cb in cbs:
        cb.on_train_end(pos.history, model)
    if checkpoint is not None:
        _write_checkpoint(checkpoint, model, opt, rng, pos, settings, cbs)
    return pos.history


def _end_epoch(model: Layer, pos: Position, val: Batch | None, loss_fn: losses.LossFn,
               val_feedback: int, metrics: tuple[str, ...], cbs: list[Callback],
               lr: float | None) -> dict[str, str]:
    """An epoch's history entries, validation and callbacks; the position moves to the
    next epoch (``pos.stopped`` set when a callback asks). Returns what the bar shows."""
    history = pos.history
    history["loss"].append(pos.total / pos.rows if pos.rows else math.nan)
    shown = {"loss": f"{history['loss'][-1]:.4g}"}
    if "skipped" in history:
        history["skipped"].append(pos.skipped)
    if val is not None:
        scores = _scores(model, Call(val.x, val.target, val.lengths, None), loss_fn, val.mask,
                         val_feedback, None, metrics)
        for name, value in scores.items():
            history[f"val_{name}"].append(value)
            shown[f"val_{name}"] = f"{value:.4g}"
    if lr is not None:
        history["lr"].append(lr)
        shown["lr"] = f"{lr:.3g}"
    epoch = pos.epoch + 1
    stop = [bool(cb.on_epoch_end(epoch, history, model)) for cb in cbs]  # every one runs
    pos.end_epoch()
    pos.stopped = int(any(stop))
    return shown
