"""Seeded continuation: continue a sequence from 5 seed values, closed loop.

The task (a user's Flux question, where the model only ever learnt the
unconditional mean): 5 seeds ~ U[-1, 1], then ``seq[i] = seq[i-1] + 0.5 * seed[3]``
for i = 5..9. The model sees ``seq[t]`` at step t and predicts ``seq[t+1]``; the
loss counts only the continuation (steps 4..8, predicting seq[5..9]), the seeds
are warm-up. What makes it work:

1. a mask from step 4 on (``masks.from_step``), so the model is not asked to
   predict the random seeds, which is all that the unconditional mean answers;
2. teacher-forced training first, then free-running training (``feedback=4``:
   the inputs of steps 5..8 are the model's own previous outputs, exactly as in
   generation, and BPTT runs through that loop), which removes the drift that
   teacher forcing alone leaves in closed-loop generation;
3. enough width (LSTM 32) and a learning rate that decays between phases.

Closed-loop generation: ``generate(model, primer=seeds (5, B, 1), steps=5)``.
The flat baseline repeats the last seed for the 5 continuation values.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import rnnkern as rk

from ._common import parser, save_plot

T_SEED, T_CONT = 5, 5
#: (phase, epochs, learning rate); quick mode runs one epoch of each
SCHEDULE = [("teacher-forced", 40, 3e-3), ("teacher-forced", 20, 1e-3),
            ("free-running", 30, 1e-3), ("free-running", 30, 3e-4)]


def make_data(rng: np.random.Generator, n: int, dtype: Any = np.float32
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n sequences -> x: (9, n, 1) inputs seq[0..8], target: (9, n, 1) seq[1..9], seq: (n, 10)."""
    seeds = rng.uniform(-1, 1, (n, T_SEED))
    seq = np.empty((n, T_SEED + T_CONT))
    seq[:, :T_SEED] = seeds
    for i in range(T_SEED, T_SEED + T_CONT):
        seq[:, i] = seq[:, i - 1] + 0.5 * seeds[:, 3]
    x = np.ascontiguousarray(seq[:, :-1].T[:, :, None], dtype=dtype)
    target = np.ascontiguousarray(seq[:, 1:].T[:, :, None], dtype=dtype)
    return x, target, seq


def closed_loop(model: rk.Sequential, x: np.ndarray) -> np.ndarray:
    """The 5 continuation values generated from the 5 seeds: (n, 5)."""
    pred = rk.generate(model, np.ascontiguousarray(x[:T_SEED]), T_CONT)
    return pred[:, :, 0].T.astype(np.float64)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-val", type=int, default=100)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x, target, _ = make_data(rng, args.n_train)
    x_val, t_val, seq_val = make_data(rng, args.n_val)
    H = args.hidden
    cell = rk.LSTM if args.cell == "lstm" else rk.GRU
    model = rk.Sequential(rk.Dense(1, H, "tanh"), cell(H, H), rk.Dense(H, 1),
                          backend=args.backend, seed=args.seed)
    mask = rk.masks.from_step(T_SEED - 1, x.shape[0])  # steps 4..8 predict seq[5..9]
    feedback = T_CONT - 1  # inputs of steps 5..8 are the model's own outputs
    opt = rk.Adam(model.parameters(), clip_norm=1.0)

    flat = float(np.mean((seq_val[:, T_SEED - 1 : T_SEED] - seq_val[:, T_SEED:]) ** 2))
    print(f"model: {args.cell.upper()} {H}, backend {model.backend}; "
          f"{args.n_train} training / {args.n_val} validation sequences")
    print(f"flat baseline (repeat the last seed): validation MSE {flat:.4e}")
    history: dict[str, list[float]] = {"loss": [], "val_loss": []}
    results: dict[str, Any] = {"flat_mse": flat, "phase_end": {}}
    start = time.perf_counter()
    for phase, epochs, lr in SCHEDULE:
        opt.lr = lr
        fb = feedback if phase == "free-running" else 0
        h = rk.fit(model, opt, x, target, epochs=1 if args.quick else epochs,
                   batch_size=args.batch_size, mask=mask, feedback=fb,
                   validation=(x_val, t_val), val_feedback=feedback, seed=args.seed + len(
                       history["loss"]), progress=args.progress)
        for k in history:
            history[k] += h[k]
        mse = float(np.mean((closed_loop(model, x_val) - seq_val[:, T_SEED:]) ** 2))
        results["phase_end"][phase] = (len(history["loss"]), mse)
        print(f"{phase:>15} {len(h['loss']):3d} epochs at lr {lr:g}: train loss "
              f"{h['loss'][-1]:.3e}, closed-loop validation MSE {mse:.3e} "
              f"({mse / flat:.2e} of flat)  [{time.perf_counter() - start:.1f} s]")
    seconds = time.perf_counter() - start
    tf_mse = results["phase_end"]["teacher-forced"][1]
    fr_mse = results["phase_end"]["free-running"][1]
    print(f"closed-loop validation MSE: teacher-forced {tf_mse:.3e} ({tf_mse / flat:.2%} of "
          f"flat), free-running {fr_mse:.3e} ({fr_mse / flat:.3%} of flat); "
          f"training {seconds:.1f} s")
    pred = closed_loop(model, x_val)

    def draw(plt: Any) -> Any:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        steps = np.arange(T_SEED + T_CONT)
        for i, color in zip(range(4), ("C0", "C1", "C2", "C3"), strict=False):
            a.plot(steps, seq_val[i], "-", color=color, alpha=0.5)
            a.plot(steps[:T_SEED], seq_val[i, :T_SEED], "o", color=color)
            a.plot(steps[T_SEED:], pred[i], "x--", color=color)
        a.axvline(T_SEED - 0.5, color="gray", lw=0.8)
        a.set(title="validation: seeds (o), true (line), generated closed loop (x)",
              xlabel="step")
        epochs = np.arange(1, len(history["loss"]) + 1)
        b.semilogy(epochs, history["loss"], label="training loss")
        b.semilogy(epochs, history["val_loss"], label="validation, closed loop (feedback=4)")
        b.axhline(flat, color="gray", ls=":", label="flat baseline")
        b.axvline(results["phase_end"]["teacher-forced"][0] + 0.5, color="gray", lw=0.8)
        b.set(title="teacher-forced, then free-running", xlabel="epoch", ylabel="MSE")
        b.legend(fontsize=8)
        fig.tight_layout()
        return fig

    results.update(history=history, teacher_forced_mse=tf_mse, free_running_mse=fr_mse,
                   seconds=seconds, backend=model.backend, model=model,
                   plot=save_plot(args.out, "seeded_continuation", draw))
    return results
