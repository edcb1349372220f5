"""Character-level language model of Python's reference documentation (LSTM).

The text is ``pydoc_data.topics`` (the help texts every CPython ships: about 465k
characters, 103 distinct), the topics joined in sorted order; the last 10% is held
out for validation. ``Embedding(V, 64) -> LSTM(64, 256) -> Dense(256, V)`` reads 64
characters and predicts each next one (cross-entropy at every step), trained with
Adam on random windows, batch 32, for a wall-clock budget (``--budget`` seconds,
validation time not counted; ``--steps N`` trains exactly N steps instead, which is
reproducible bit for bit): Adam with betas (0.9, 0.99), lr 7e-3, falling linearly to
7e-4 over the last 30% of the budget.
Reported: validation bits per character (the mean
cross-entropy over 64-character windows, in bits) against the unigram baseline, and
samples at temperatures 0.5 and 1.0 from a primer. With PyTorch installed the same
model trained by PyTorch for the same budget runs beside it (``--no-torch`` skips it).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

import rnnkern as rk

from ._common import parser, save_plot

PRIMER = "The return statement "
#: Adam's moment decays: the second moment's shorter memory (0.99, not 0.999) learns faster
#: in a short budget
BETAS = (0.9, 0.99)


def corpus() -> str:
    """The text of Python's help topics, in sorted topic order."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def windows(ids: np.ndarray, T: int, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``ids`` from ``starts`` -> x: (T, N) ids, target: (T, N) the next ids."""
    idx = starts[None, :] + np.arange(T + 1)[:, None]
    w = ids[idx]
    return w[:-1], w[1:]


def unigram_bpc(train: np.ndarray, val: np.ndarray, V: int) -> float:
    """Bits per character of the training set's character frequencies on ``val``
    (add-one smoothed: every character has a probability)."""
    p = (np.bincount(train, minlength=V) + 1) / (len(train) + V)
    return float(-np.log2(p[val]).mean())


def bpc(model: rk.Sequential, x: np.ndarray, target: np.ndarray) -> float:
    """Validation bits per character, evaluated in batches of 256 windows."""
    total = 0.0
    for s in range(0, x.shape[1], 256):
        total += rk.evaluate(model, x[:, s : s + 256], target[:, s : s + 256],
                             loss="cross_entropy") * x[:, s : s + 256].shape[1]
    return total / x.shape[1] / math.log(2)


def rate(lr: float, done: float) -> float:
    """The learning rate once the share ``done`` of training is done: ``lr`` for the
    first 70%, then falling linearly to ``lr / 10``."""
    return lr * (1 - 0.9 * max(0.0, done - 0.7) / 0.3)


def loop(step: Any, val_bpc: Any, ids: np.ndarray, args: Any, seed: int) -> dict[str, Any]:
    """Train by ``step(x, target, lr) -> training loss (nats)`` on random windows for
    ``args.budget`` seconds (or exactly ``args.steps`` steps when set: reproducible),
    the learning rate by ``rate``; ``val_bpc()`` after every sixth of
    it (its time not counted). Returns the curve of (seconds, steps, validation bpc)."""
    rng = np.random.default_rng(seed)
    curve = [(0.0, 0, val_bpc())]
    spent, steps, losses = 0.0, 0, []
    for part in range(1, 7):
        t0 = time.perf_counter()
        while True:
            now = spent + time.perf_counter() - t0
            done = steps / args.steps if args.steps else now / args.budget
            if done >= part / 6:
                break
            x, t = windows(ids, args.T, rng.integers(0, len(ids) - args.T - 1, args.batch))
            losses.append(step(x, t, rate(args.lr, done)) / math.log(2))
            steps += 1
        spent += time.perf_counter() - t0
        curve.append((spent, steps, val_bpc()))
    return {"curve": curve, "train_bpc": losses, "steps": steps, "seconds": spent,
            "steps_per_s": steps / spent, "val_bpc": curve[-1][2]}


def train(model: rk.Sequential, ids: np.ndarray, x_val: np.ndarray, t_val: np.ndarray,
          args: Any, seed: int) -> dict[str, Any]:
    """rnnkern: value_and_grad and Adam (gradient norm clipped at 5)."""
    opt = rk.Adam(model.parameters(), lr=args.lr, betas=BETAS, clip_norm=5.0)

    def step(x: np.ndarray, t: np.ndarray, lr: float) -> float:
        opt.lr = lr
        value, grads = rk.value_and_grad(model, x, t, loss="cross_entropy")
        opt.step(grads)
        return value

    return loop(step, lambda: bpc(model, x_val, t_val), ids, args, seed)


def train_torch(V: int, ids: np.ndarray, x_val: np.ndarray, t_val: np.ndarray, args: Any,
                seed: int) -> dict[str, Any] | None:
    """The same model, data and loop in PyTorch (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(seed)
    F = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(V, args.embed)
            self.lstm = torch.nn.LSTM(args.embed, args.hidden)
            self.out = torch.nn.Linear(args.hidden, V)

        def forward(self, x: Any) -> Any:
            return self.out(self.lstm(self.emb(x))[0])

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=BETAS)
    xv, tv = torch.from_numpy(x_val), torch.from_numpy(t_val)

    def val_bpc() -> float:
        with torch.no_grad():
            total = sum(F.cross_entropy(net(xv[:, s : s + 256]).reshape(-1, V),
                                        tv[:, s : s + 256].reshape(-1), reduction="sum").item()
                        for s in range(0, xv.shape[1], 256))
        return total / tv.numel() / math.log(2)

    def step(x: np.ndarray, t: np.ndarray, lr: float) -> float:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss = F.cross_entropy(net(torch.from_numpy(x)).reshape(-1, V),
                               torch.from_numpy(t).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        return loss.item()

    return loop(step, val_bpc, ids, args, seed)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds of training (validation not counted; default 60)")
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps instead of --budget (reproducible)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch run beside it")
    args = p.parse_args(argv)
    if args.quick:  # a small model, 60 steps: the loss falls, sampling works
        args.steps, args.embed, args.hidden, args.T, args.batch = 60, 16, 64, 32, 16
    else:
        args.embed, args.hidden, args.T, args.batch = 64, 256, 64, 32
    args.lr = 7e-3
    text = corpus()
    chars = sorted(set(text))
    V = len(chars)
    code = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((code[c] for c in text), np.int64, len(text))
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    n_val = (len(val_ids) - 1) // args.T
    if args.quick:
        n_val = min(n_val, 64)
    x_val, t_val = windows(val_ids, args.T, np.arange(n_val) * args.T)
    base = unigram_bpc(train_ids, val_ids, V)

    model = rk.Sequential(rk.Embedding(V, args.embed), rk.LSTM(args.embed, args.hidden),
                          rk.Dense(args.hidden, V), backend=args.backend, seed=args.seed)
    ours = train(model, train_ids, x_val, t_val, args, args.seed)
    print(f"{len(text)} characters, {V} distinct; unigram baseline {base:.2f} bpc")
    print(f"rnnkern ({model.backend}): {ours['val_bpc']:.3f} validation bpc after "
          f"{ours['steps']} steps in {ours['seconds']:.0f} s ({ours['steps_per_s']:.1f} steps/s)")
    torch_run = None if args.no_torch or args.quick else \
        train_torch(V, train_ids, x_val, t_val, args, args.seed)
    if torch_run is not None:
        print(f"PyTorch: {torch_run['val_bpc']:.3f} validation bpc after {torch_run['steps']} "
              f"steps in {torch_run['seconds']:.0f} s ({torch_run['steps_per_s']:.1f} steps/s)")

    primer = np.array([code[c] for c in PRIMER], np.int64)[:, None]
    samples = {}
    for temperature in (0.5, 1.0):
        out = rk.generate(model, primer, 200 if not args.quick else 40,
                          sampler="categorical", temperature=temperature, seed=args.seed)
        samples[temperature] = PRIMER + "".join(chars[i] for i in out[:, 0])
        print(f"--- temperature {temperature}:\n{samples[temperature]}")

    def draw(plt: Any) -> Any:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        for run, label in ((ours, f"rnnkern ({model.backend})"), (torch_run, "PyTorch")):
            if run is not None:
                s, _, v = zip(*run["curve"])
                a.plot(s, v, "o-", label=label)
        a.axhline(base, color="gray", ls=":", label="unigram baseline")
        a.set(title="validation bits per character", xlabel="training seconds", ylabel="bpc",
              ylim=(1.4, base + 0.5))
        a.legend()
        tr = np.convolve(ours["train_bpc"], np.ones(20) / 20, mode="valid") \
            if len(ours["train_bpc"]) >= 20 else ours["train_bpc"]
        b.plot(tr, label="training (20-step mean)")
        _, st, v = zip(*ours["curve"])
        b.plot(st, v, "o-", label="validation")
        b.set(title="rnnkern: bits per character by step", xlabel="optimiser step",
              ylim=(1.4, base + 0.5))
        b.legend()
        fig.tight_layout()
        return fig

    return {"rnnkern": ours, "torch": torch_run, "unigram_bpc": base, "samples": samples,
            "vocab": V, "plot": save_plot(args.out, "char_lm", draw)}
