"""How are gradients accumulated over time steps? BPTT's per-step contributions.

RNN(1 -> 5, tanh) + Dense(5 -> 1) reads the 3-step input
(0.84147096, 0.9092974, 0.14112) (sin 1, 2, 3) and is scored only at the last
step against -0.7568025 (sin 4), loss = (y_3 - target)^2. The weights W, R, b
are shared by the 3 steps, so dL/dW is a sum over steps: step t contributes
``x_t^T dpre_t`` (and R: ``h_{t-1}^T dpre_t``, b: ``dpre_t``), where ``dpre_t``
is the gradient reaching step t's pre-activation through the later steps.

To see each contribution on its own, untie the weights: give step t its own copy
(W_t, R_t, b_t), all equal to W, R, b. Then dL/dW_t is step t's contribution,
and finite differences on W_t measure it independently of BPTT. The example
prints, per parameter and step, BPTT's contribution next to that finite
difference, then their sum next to the total gradient of the tied model.
Everything in float64 on the NumPy reference backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import rnnkern as rk
from rnnkern import backends, losses

from ._common import parser, save_plot

X = np.array([0.84147096, 0.9092974, 0.14112])
TARGET = -0.7568025
EPS = 1e-6


def untied_loss(model: rk.Sequential, x: np.ndarray, steps: dict[str, np.ndarray]) -> float:
    """L when step t runs with its own copies steps["W"][t], steps["R"][t], steps["b"][t]."""
    be = backends.get("numpy")
    h = None
    for t in range(x.shape[0]):
        _, h, _ = be.rnn_forward(x[t : t + 1], h, steps["W"][t], steps["R"][t], steps["b"][t])
    y, _, _ = model[1].forward(h[None])
    return float((y[0, 0, 0] - TARGET) ** 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    model = rk.Sequential(rk.RNN(1, 5, "tanh"), rk.Dense(5, 1), backend="numpy",
                          dtype="float64", seed=args.seed)
    T = len(X)
    x = X.reshape(T, 1, 1)
    target = np.full((T, 1, 1), TARGET)
    mask = rk.masks.last_step(T)

    # BPTT by hand: the Dense layer's backward, then the RNN's with per_step=True
    y, _, caches = model.forward(x)
    loss, dy = losses.mse(y, target, losses.resolve_mask(mask, None, T, 1, x.dtype, np))
    dh, _, _ = model[1].backward(dy, None, caches[1])
    _, _, grads, per_step = backends.get("numpy").rnn_backward(dh, None, caches[0],
                                                               per_step=True)
    _, total = rk.value_and_grad(model, x, target, mask=mask)  # the tied model's gradient

    # finite differences on untied per-step copies
    tied = model[0].parameters()
    untied = {k: np.repeat(tied[k][None], T, axis=0) for k in ("W", "R", "b")}
    fd = {k: np.zeros_like(v) for k, v in untied.items()}
    for k, a in untied.items():
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            a[idx] = keep + EPS
            up = untied_loss(model, x, untied)
            a[idx] = keep - EPS
            down = untied_loss(model, x, untied)
            a[idx] = keep
            fd[k][idx] = (up - down) / (2 * EPS)

    print(f"loss (y_3 - target)^2 = {loss:.6f}; per-step contributions of the RNN's gradient")
    np.set_printoptions(precision=6, suppress=False, linewidth=120)
    worst_step, worst_sum = 0.0, 0.0
    for k in ("W", "R", "b"):
        print(f"\n{k} {tied[k].shape}: BPTT contribution of each step | finite difference "
              f"on that step's own copy")
        for t in range(T):
            err = float(np.abs(per_step[k][t] - fd[k][t]).max())
            worst_step = max(worst_step, err)
            shown = "" if k == "R" else f"\n    {per_step[k][t].ravel()}\n    {fd[k][t].ravel()}"
            print(f"  step {t}: max |BPTT - FD| = {err:.1e}, |contribution| = "
                  f"{np.linalg.norm(per_step[k][t]):.6f}{shown}")
        s = per_step[k].sum(0)
        err = float(np.abs(s - total[f"0.{k}"]).max())
        worst_sum = max(worst_sum, err)
        print(f"  sum over steps vs value_and_grad's total: max difference {err:.1e}; "
              f"sum of the finite differences vs total: "
              f"{float(np.abs(fd[k].sum(0) - total[f'0.{k}']).max()):.1e}")
    print(f"\nworst per-step |BPTT - FD| {worst_step:.1e}; worst |sum - total| {worst_sum:.1e}.\n"
          "The gradient of a shared weight is the sum of its per-step contributions. Step t's "
          "share of dL/dW scales with x_t, of dL/dR with h_{t-1} (zero at step 0: h_{-1} = 0), "
          "and all of them with the gradient that survives the way back from the last step.")

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        for ax, k in zip(axes, ("W", "R", "b"), strict=True):
            flat = per_step[k].reshape(T, -1)
            width = 0.8 / T
            for t in range(T):
                pos = np.arange(flat.shape[1]) + t * width
                ax.bar(pos, flat[t], width, label=f"step {t} (BPTT)")
                ax.plot(pos, fd[k][t].ravel(), "k.", ms=3)
            ax.plot(np.arange(flat.shape[1]) + width, total[f"0.{k}"].ravel(), "r_", ms=10,
                    label="total (sum)")
            # two lines: one would run past the narrow panel's edge
            ax.set_title(f"dL/d{k}: per-step contributions\n(dots: untied FD)", fontsize=10)
            ax.set(xlabel=f"{k} entry (flattened)")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return fig

    return {"loss": loss, "max_step_error": worst_step, "max_sum_error": worst_sum,
            "per_step": per_step, "fd": fd, "grads": grads,
            "plot": save_plot(args.out, "gradient_accumulation", draw)}
