"""Learning-rate schedules for ``fit(..., schedule=...)``.

A schedule is a pure function of a counter: ``schedule(base_lr, i) -> lr``, where
``base_lr`` is the optimiser's ``lr`` when ``fit`` starts and ``i`` counts, from the
start of the run, the optimiser steps taken (``per="step"``) or the epochs completed
(``per="epoch"``). ``fit`` sets ``opt.lr`` before every step (or epoch) from it, so a
run resumed from a checkpoint follows the same rates bit for bit.

    rk.schedules.StepDecay(10, gamma=0.5)                 # halve every 10 epochs
    rk.schedules.Cosine(100, min_lr=1e-5, per="step")     # cosine over 100 steps
    rk.schedules.WarmUp(50, then=rk.schedules.Cosine(950, per="step"))

``WarmUp`` counts in its own unit (``per``) and hands over to ``then`` (which must
count in the same unit) with the counter restarted at 0.
"""

from __future__ import annotations

import math
from typing import Any

from ._validate import check_choice, check_int

PER = ("step", "epoch")


def _number(name: str, v: Any, lo: float, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo):
        raise ValueError(f"{name}: expected a finite number {'>' if lo_open else '>='} {lo}, "
                         f"got {v!r}")
    return v


class Schedule:
    """A learning rate as a function of ``(base_lr, i)``; ``per``: what ``i`` counts."""

    per: str = "epoch"

    def __call__(self, base_lr: float, i: int) -> float:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The settings (JSON): a checkpoint resumes only under the same schedule."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args})"


class StepDecay(Schedule):
    """``lr = base_lr * gamma ** (i // step_size)``: multiply by gamma every step_size."""

    def __init__(self, step_size: int, gamma: float = 0.1, per: str = "epoch") -> None:
        self.step_size = check_int("step_size", step_size, 1)
        self.gamma = _number("gamma", gamma, 0.0, lo_open=True)
        self.per = check_choice("per", per, PER)

    def __call__(self, base_lr: float, i: int) -> float:
        return base_lr * self.gamma ** (i // self.step_size)

    def spec(self) -> dict[str, Any]:
        return {"type": "StepDecay", "step_size": self.step_size, "gamma": self.gamma,
                "per": self.per}


class Cosine(Schedule):
    """Cosine annealing from base_lr to ``min_lr`` over ``total`` steps (or epochs),
    ``min_lr`` after: ``min_lr + (base_lr - min_lr) * (1 + cos(pi * i / total)) / 2``."""

    def __init__(self, total: int, min_lr: float = 0.0, per: str = "epoch") -> None:
        self.total = check_int("total", total, 1)
        self.min_lr = _number("min_lr", min_lr, 0.0)
        self.per = check_choice("per", per, PER)

    def __call__(self, base_lr: float, i: int) -> float:
        frac = min(i, self.total) / self.total
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * frac)) / 2

    def spec(self) -> dict[str, Any]:
        return {"type": "Cosine", "total": self.total, "min_lr": self.min_lr, "per": self.per}


class WarmUp(Schedule):
    """Linear warm-up: ``base_lr * (i + 1) / steps`` for the first ``steps`` steps (or
    epochs), then ``then(base_lr, i - steps)`` (base_lr itself when ``then`` is None).
    ``per``: None counts in ``then``'s unit (optimiser steps without ``then``)."""

    def __init__(self, steps: int, then: Schedule | None = None, per: str | None = None
                 ) -> None:
        self.steps = check_int("steps", steps, 1)
        if per is None:  # then's unit, or optimiser steps
            per = "step" if then is None else getattr(then, "per", "step")
        self.per = check_choice("per", per, PER)
        if then is not None:
            if not isinstance(then, Schedule):
                raise TypeError(f"then: expected a schedule or None, got {type(then).__name__}")
            if then.per != self.per:
                raise ValueError(f"then: counts per {then.per!r}, but the warm-up per "
                                 f"{self.per!r}; give both the same per=")
        self.then = then

    def __call__(self, base_lr: float, i: int) -> float:
        if i < self.steps:
            return base_lr * (i + 1) / self.steps
        return base_lr if self.then is None else self.then(base_lr, i - self.steps)

    def spec(self) -> dict[str, Any]:
        return {"type": "WarmUp", "steps": self.steps, "per": self.per,
                "then": None if self.then is None else self.then.spec()}


def check_schedule(schedule: Any) -> Schedule | None:
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected an rnnkern.schedules schedule (StepDecay, Cosine, "
                        f"WarmUp) or None, got {type(schedule).__name__}")
    return schedule
