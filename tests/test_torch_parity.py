"""Every backend against PyTorch's own RNN/LSTM/GRU in float64: outputs, final
states and all gradients agree to round-off. Runs where torch is installed."""

import numpy as np
import pytest

from rnnkern import backends
from rnnkern import gradcheck as gc

torch = pytest.importorskip("torch")

TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def _torch_module(p):
    """A torch module holding the problem's parameters (W.T, R.T, split biases)."""
    H = p.params["R"].shape[0]
    kw = {"nonlinearity": p.activation} if p.cell == "rnn" else {}
    m = TORCH[p.cell](p.params["W"].shape[0], H, dtype=torch.float64, **kw)
    bias_hh = np.zeros_like(p.params["b"])
    if p.cell == "gru":
        bias_hh[2 * H :] = p.params["b_hn"]
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(p.params["W"].T.copy()))
        m.weight_hh_l0.copy_(torch.from_numpy(p.params["R"].T.copy()))
        m.bias_ih_l0.copy_(torch.from_numpy(p.params["b"]))
        m.bias_hh_l0.copy_(torch.from_numpy(bias_hh))
    return m


@pytest.mark.parametrize("case", [c for c in gc.CASES if c[1] != "identity"],
                         ids=lambda c: "-".join(c))
def test_matches_torch(backend, case):
    cell, act = case
    p = gc.make_problem(cell, T=6, B=3, I=4, H=5, activation=act, seed=7)
    m = _torch_module(p)
    x = torch.from_numpy(p.inputs["x"]).requires_grad_()
    h0 = torch.from_numpy(p.inputs["h0"])[None].requires_grad_()
    if cell == "lstm":
        c0 = torch.from_numpy(p.inputs["c0"])[None].requires_grad_()
        y, (hT, cT) = m(x, (h0, c0))
        states = [hT, cT]
    else:
        y, hT = m(x, h0)
        states = [hT]
    g = p.out_grads
    loss = (y * torch.from_numpy(g["dy"])).sum() + (hT[0] * torch.from_numpy(g["dhT"])).sum()
    if cell == "lstm":
        loss = loss + (cT[0] * torch.from_numpy(g["dcT"])).sum()
    loss.backward()

    be = backends.get(backend)
    ours_y, ours_state, cache = gc.forward(be, p)
    ours = gc.backward(be, p, cache)

    def close(a, b):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-11, atol=1e-13)

    close(ours_y, y)
    for s, t in zip(ours_state, states):
        close(s, t[0])
    close(ours["dx"], x.grad)
    close(ours["dh0"], h0.grad[0])
    if cell == "lstm":
        close(ours["dc0"], c0.grad[0])
    close(ours["grads"]["W"], m.weight_ih_l0.grad.T)
    close(ours["grads"]["R"], m.weight_hh_l0.grad.T)
    # b stands for both torch biases except GRU's candidate recurrent bias (b_hn)
    close(ours["grads"]["b"], m.bias_ih_l0.grad)
    if cell == "gru":
        H = p.params["R"].shape[0]
        close(ours["grads"]["b_hn"], m.bias_hh_l0.grad[2 * H :])
    else:
        close(ours["grads"]["b"], m.bias_hh_l0.grad)
