"""Sum a sequence: RNN(1, 1, activation="identity") learns h_t = h_{t-1} + x_t.

Sequences of 2..7 integers in 1..10 (variable lengths: padded, with ``lengths``),
sequence-to-one: the loss reads the output at each row's last true step
(``masks.last_step``). The exact solution is W = 1, R = 1, b = 0, which an
identity activation can represent for any input scale; it is tested on inputs
scaled by 2 and on [1, -2, 30]. The same with tanh fails: the state saturates
at +-1, so every sum comes out near 1.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import rnnkern as rk

from ._common import parser, save_plot


def make_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n sequences -> x: (7, n, 1) padded, lengths: (n,), sums: (n,)."""
    seqs = [rng.integers(1, 11, size=rng.integers(2, 8)).astype(np.float32) for _ in range(n)]
    x, lengths = rk.data.from_sequences(seqs)
    return x, lengths, np.array([s.sum() for s in seqs])


def target_at_last(x: np.ndarray, lengths: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """target: (T, B, 1), the sum at every step (only the last true one counts)."""
    return np.ascontiguousarray(np.broadcast_to(sums[None, :, None], x.shape), dtype=x.dtype)


def read_last(y: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """y: (T, B, 1) -> (B,) the output at each row's last true step."""
    return y[lengths - 1, np.arange(len(lengths)), 0].astype(np.float64)


def train(activation: str, args: Any, x: np.ndarray, lengths: np.ndarray,
          sums: np.ndarray) -> tuple[rk.RNN, dict]:
    model = rk.RNN(1, 1, activation=activation, backend=args.backend, seed=args.seed)
    opt = rk.Adam(model.parameters(), lr=0.05)
    mask = rk.masks.last_step(x.shape[0], lengths)
    history = rk.fit(model, opt, x, target_at_last(x, lengths, sums),
                     epochs=3 if args.quick else 60, batch_size=32, mask=mask, lengths=lengths,
                     seed=args.seed, progress=args.progress)
    return model, history


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rng = np.random.default_rng(args.seed)
    x, lengths, sums = make_data(rng, 1000)
    x_test, len_test, sums_test = make_data(rng, 200)
    x2, sums2 = x_test * 2, sums_test * 2
    odd = np.array([1, -2, 30], np.float32)[:, None, None]
    results: dict[str, Any] = {}
    for activation in ("identity", "tanh"):
        start = time.perf_counter()
        model, history = train(activation, args, x, lengths, sums)
        seconds = time.perf_counter() - start
        p = model.parameters()
        pred2 = read_last(model(x2, lengths=len_test), len_test)
        rel = float(np.mean(np.abs(pred2 - sums2) / sums2))
        odd_sum = float(model(odd)[-1, 0, 0])
        print(f"{activation:>8}: W={float(p['W'][0, 0]):.4f} R={float(p['R'][0, 0]):.4f} "
              f"b={float(p['b'][0]):.4f}; train MSE {history['loss'][0]:.3g} -> "
              f"{history['loss'][-1]:.3g} ({seconds:.1f} s); inputs x2: mean relative error "
              f"{rel:.2%}; [1, -2, 30] -> {odd_sum:.3f} (true 29)")
        results[activation] = {"history": history, "rel_error_x2": rel, "sum_1_m2_30": odd_sum,
                               "pred_x2": pred2}

    def draw(plt: Any) -> Any:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for act, marker in (("identity", "o"), ("tanh", "x")):
            a.plot(sums2, results[act]["pred_x2"], marker, ms=3, label=act)
            b.semilogy(results[act]["history"]["loss"], label=act)
        a.plot([0, sums2.max()], [0, sums2.max()], "k:", lw=0.8)
        a.set(title="inputs scaled by 2: predicted vs true sum", xlabel="true sum",
              ylabel="RNN output at the last step")
        b.set(title="training loss (MSE at the last step)", xlabel="epoch")
        a.legend()
        b.legend()
        fig.tight_layout()
        return fig

    results["plot"] = save_plot(args.out, "sum_sequence", draw)
    return results
