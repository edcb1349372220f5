"""Sequence to sequence: next-step prediction of noisy sine waves, then closed loop.

Each sequence is ``sin(w t + phase)`` with a random frequency w in [0.15, 0.45]
rad/step, observed with Gaussian noise (sigma 0.05). The model (LSTM 32 +
Dense) reads the noisy value at every step and predicts the next clean one; the
loss counts every step (sequence to sequence). Then it is primed with 40 noisy
steps of unseen waves and generates the next 20 closed loop, against the flat
baseline that repeats the last observed value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import rnnkern as rk

from ._common import parser, save_plot

NOISE = 0.05


def make_data(rng: np.random.Generator, n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """n waves of T+1 steps -> noisy inputs x: (T, n, 1), clean next values target: (T, n, 1)."""
    w = rng.uniform(0.15, 0.45, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    clean = np.sin(np.arange(T + 1)[:, None] * w + phase)
    noisy = clean + NOISE * rng.standard_normal(clean.shape)
    return (np.ascontiguousarray(noisy[:-1, :, None], np.float32),
            np.ascontiguousarray(clean[1:, :, None], np.float32))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rng = np.random.default_rng(args.seed)
    x, target = make_data(rng, 512, 40)
    x_val, t_val = make_data(rng, 64, 60)
    P = 40  # primer steps; the rest is generated closed loop
    model = rk.Sequential(rk.LSTM(1, 32), rk.Dense(32, 1), backend=args.backend, seed=args.seed)
    opt = rk.Adam(model.parameters(), lr=5e-3, clip_norm=1.0)
    history = rk.fit(model, opt, x, target, epochs=2 if args.quick else 30, batch_size=32,
                     validation=(x_val, t_val), seed=args.seed, progress=args.progress)
    pred = rk.generate(model, np.ascontiguousarray(x_val[:P]), x_val.shape[0] - P + 1)
    truth = t_val[P - 1 :]  # pred[k] is the model's guess of the clean value at step P + k
    closed = float(np.mean((pred - truth) ** 2))
    flat = float(np.mean((x_val[P - 1 : P] - truth) ** 2))
    print(f"next-step validation MSE {history['val_loss'][-1]:.3e} (noise variance "
          f"{NOISE ** 2:.1e}); closed loop, {len(truth)} steps after a {P}-step primer: "
          f"MSE {closed:.3e} vs flat baseline {flat:.3e}")

    def draw(plt: Any) -> Any:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        steps = np.arange(x_val.shape[0] + 1)
        for i, color in zip(range(3), ("C0", "C1", "C2"), strict=False):
            a.plot(steps[:P], x_val[:P, i, 0], ".", color=color, ms=3)
            a.plot(steps[P:], truth[:, i, 0], "-", color=color, alpha=0.5)
            a.plot(steps[P:], pred[:, i, 0], "--", color=color)
        a.axvline(P - 0.5, color="gray", lw=0.8)
        a.set(title="primer (dots), true (line), generated closed loop (dashed)",
              xlabel="step")
        b.semilogy(history["loss"], label="training")
        b.semilogy(history["val_loss"], label="validation")
        b.set(title="next-step MSE", xlabel="epoch")
        b.legend()
        fig.tight_layout()
        return fig

    return {"history": history, "closed_loop_mse": closed, "flat_mse": flat,
            "plot": save_plot(args.out, "seq2seq", draw)}
