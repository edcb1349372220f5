"""A PyTorch training script with ``torch.nn.GRU`` swapped for ``rnnkern.torch.GRU``.

The model is PyTorch's own: ``GRU(1, 32, batch_first=True)`` then ``Linear(32, 1)``,
trained with Adam on the MSE of next-step prediction of noisy sine waves (random
frequency in [0.1, 0.6] rad/step, 200 steps, batches of 16). It trains twice from the
same seed, once per GRU, which is the one line that differs::

    GRU = rnnkern.torch.GRU        # was: GRU = torch.nn.GRU

Both draw the same initial weights (rnnkern.torch initialises as torch.nn does), so the
two loss curves agree to float32 round-off; the script prints both and the seconds per
training step of each. Needs PyTorch (``pip install 'rnnkern[compare]'``); without it the
example says so and returns.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ._common import parser, save_plot

HIDDEN, T, BATCH = 32, 200, 16


def make_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n waves -> inputs (n, T, 1) and next-step targets (n, T, 1), float32, batch first."""
    w = rng.uniform(0.1, 0.6, (n, 1))
    t = np.arange(T + 1)[None, :]
    s = np.sin(w * t + rng.uniform(0, 2 * np.pi, (n, 1)))
    s = (s + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    return s[:, :-1, None], s[:, 1:, None]


def train(GRU: Any, x: Any, target: Any, steps: int, seed: int) -> tuple[list[float], float]:
    """The PyTorch training loop, with ``GRU`` as the recurrent layer. Returns the loss of
    every step and the seconds per step."""
    import torch

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = GRU(1, HIDDEN, batch_first=True)
            self.out = torch.nn.Linear(HIDDEN, 1)

        def forward(self, x: Any) -> Any:
            return self.out(self.rnn(x)[0])

    torch.manual_seed(seed)
    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        rows = slice((step * BATCH) % len(x), (step * BATCH) % len(x) + BATCH)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[rows]), target[rows])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    if args.backend not in (None, "numba"):
        p.error(f"--backend: rnnkern.torch runs CPU tensors on 'numba', got {args.backend!r}")
    try:
        import torch
    except ImportError:
        print("torch_dropin: skipped, PyTorch is not installed (pip install 'rnnkern[compare]')")
        return {"skipped": "torch is not installed"}
    import rnnkern.torch

    rng = np.random.default_rng(args.seed)
    x, target = (torch.from_numpy(a) for a in make_data(rng, 20 * BATCH))
    steps = 20 if args.quick else 300
    train(rnnkern.torch.GRU, x[:BATCH], target[:BATCH], 1, args.seed)  # compile or cache load
    runs = {name: train(GRU, x, target, steps, args.seed)
            for name, GRU in (("torch.nn.GRU", torch.nn.GRU),
                              ("rnnkern.torch.GRU", rnnkern.torch.GRU))}
    (ref, t_ref), (ours, t_ours) = runs.values()
    gap = float(np.max(np.abs(np.array(ref) - np.array(ours))))
    for name, (loss, sec) in runs.items():
        print(f"{name:18s} loss {loss[0]:.4f} -> {loss[-1]:.4f} over {steps} steps, "
              f"{sec * 1e3:.2f} ms/step")
    print(f"largest loss difference between the two: {gap:.2e}; "
          f"rnnkern.torch {t_ref / t_ours:.1f}x faster per step")

    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, (loss, sec) in runs.items():
            ax.semilogy(loss, label=f"{name} ({sec * 1e3:.1f} ms/step)",
                        ls="--" if name.startswith("rnnkern") else "-")
        ax.set(title="next-step MSE, the same training loop", xlabel="step")
        ax.legend()
        fig.tight_layout()
        return fig

    return {"history": {name: loss for name, (loss, _) in runs.items()},
            "seconds_per_step": {name: sec for name, (_, sec) in runs.items()},
            "max_loss_difference": gap, "plot": save_plot(args.out, "torch_dropin", draw)}
