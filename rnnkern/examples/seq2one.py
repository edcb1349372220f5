"""Sequence to one: read the frequency of a noisy sine wave at its last true step.

Each sequence is ``sin(w t + phase)`` plus noise (sigma 0.1) with a random
frequency w in [0.1, 0.6] rad/step and a random length of 8..30 steps
(variable lengths: padded, ``lengths``). A GRU reads it and a Dense layer
regresses w from the state at each row's last true step (``masks.last_step``);
the baseline predicts the mean frequency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import rnnkern as rk

from ._common import parser, save_plot


def make_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n waves -> x: (30, n, 1) padded, lengths: (n,), frequencies w: (n,)."""
    w = rng.uniform(0.1, 0.6, n)
    seqs = [np.sin(np.arange(rng.integers(8, 31)) * wi + rng.uniform(0, 2 * np.pi))
            for wi in w]
    seqs = [s + 0.1 * rng.standard_normal(s.shape) for s in seqs]
    x, lengths = rk.data.from_sequences(seqs)
    return x, lengths, w


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rng = np.random.default_rng(args.seed)
    x, lengths, w = make_data(rng, 1000)
    x_val, len_val, w_val = make_data(rng, 200)

    def targets(x: np.ndarray, w: np.ndarray) -> np.ndarray:  # w at every step; the mask picks
        return np.ascontiguousarray(np.broadcast_to(w[None, :, None], x.shape), np.float32)

    model = rk.Sequential(rk.GRU(1, 32), rk.Dense(32, 1), backend=args.backend, seed=args.seed)
    opt = rk.Adam(model.parameters(), lr=3e-3, clip_norm=1.0)
    T = x.shape[0]
    history = rk.fit(model, opt, x, targets(x, w), epochs=2 if args.quick else 25, batch_size=32,
                     mask=rk.masks.last_step(T, lengths), lengths=lengths,
                     validation=(x_val, targets(x_val, w_val), rk.masks.last_step(T, len_val),
                                 len_val), seed=args.seed, progress=args.progress)
    y = model(x_val, lengths=len_val)
    pred = y[len_val - 1, np.arange(len(len_val)), 0]
    mse = float(np.mean((pred - w_val) ** 2))
    base = float(np.mean((w.mean() - w_val) ** 2))
    print(f"frequency regression at the last true step: validation MSE {mse:.3e} "
          f"(RMSE {np.sqrt(mse):.3f} rad/step) vs {base:.3e} for the mean frequency")

    def draw(plt: Any) -> Any:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        sc = a.scatter(w_val, pred, c=len_val, s=8, cmap="viridis")
        fig.colorbar(sc, ax=a, label="sequence length")
        a.plot([0.1, 0.6], [0.1, 0.6], "k:", lw=0.8)
        a.set(title="validation: predicted vs true frequency", xlabel="true w",
              ylabel="predicted w")
        b.semilogy(history["loss"], label="training")
        b.semilogy(history["val_loss"], label="validation")
        b.axhline(base, color="gray", ls=":", label="mean-frequency baseline")
        b.set(title="MSE at the last true step", xlabel="epoch")
        b.legend()
        fig.tight_layout()
        return fig

    return {"history": history, "mse": mse, "baseline_mse": base,
            "plot": save_plot(args.out, "seq2one", draw)}
