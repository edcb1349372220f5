"""from_torch / to_torch: same outputs and every gradient equal to float64 round-off."""

import numpy as np
import pytest

import rnnkern as rk

torch = pytest.importorskip("torch")
from rnnkern.interop import from_torch, to_torch  # noqa: E402

T, B, I, H = 5, 3, 2, 4
TOL = 1e-12


def torch_module(kind):
    torch.manual_seed(0)
    return {"rnn-tanh": lambda: torch.nn.RNN(I, H, dtype=torch.float64),
            "rnn-relu": lambda: torch.nn.RNN(I, H, nonlinearity="relu", dtype=torch.float64),
            "lstm": lambda: torch.nn.LSTM(I, H, dtype=torch.float64),
            "gru": lambda: torch.nn.GRU(I, H, dtype=torch.float64)}[kind]()


def torch_grads(mod, x, h0, dy, dhT):
    """Run mod, backprop sum(dy*y) + sum(dhT*hT); returns y, hT, grads in rnnkern names."""
    xt = torch.tensor(x, requires_grad=True)
    state = tuple(torch.tensor(s[None], requires_grad=True) for s in h0)
    y, hT = mod(xt, state if isinstance(mod, torch.nn.LSTM) else state[0])
    hT = hT if isinstance(hT, tuple) else (hT,)
    loss = (y * torch.tensor(dy)).sum() + sum((h * torch.tensor(d[None])).sum()
                                              for h, d in zip(hT, dhT, strict=True))
    loss.backward()
    g = {"W": mod.weight_ih_l0.grad.numpy().T, "R": mod.weight_hh_l0.grad.numpy().T}
    if isinstance(mod, torch.nn.GRU):
        g["b"] = mod.bias_ih_l0.grad.numpy()
        g["b_hn"] = mod.bias_hh_l0.grad.numpy()[2 * H :]
    else:
        g["b"] = mod.bias_ih_l0.grad.numpy()
        np.testing.assert_allclose(mod.bias_hh_l0.grad.numpy(), g["b"], rtol=TOL)
    g["x"] = xt.grad.numpy()
    g["h0"] = [s.grad.numpy()[0] for s in state]
    return y.detach().numpy(), [h.detach().numpy()[0] for h in hT], g


@pytest.mark.parametrize("kind", ["rnn-tanh", "rnn-relu", "lstm", "gru"])
def test_from_torch_outputs_and_gradients(backend, kind):
    mod = torch_module(kind)
    layer = from_torch(mod, backend=backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    n_state = 2 if kind == "lstm" else 1
    h0 = [rng.standard_normal((B, H)) for _ in range(n_state)]
    dy = rng.standard_normal((T, B, H))
    dhT = [rng.standard_normal((B, H)) for _ in range(n_state)]
    y_t, hT_t, g_t = torch_grads(mod, x, h0, dy, dhT)

    state = tuple(h0) if kind == "lstm" else h0[0]
    y, hT, cache = layer.forward(x, state)
    np.testing.assert_allclose(y, y_t, rtol=TOL, atol=TOL)
    for a, b in zip(hT if kind == "lstm" else (hT,), hT_t, strict=True):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)
    dx, dstate0, grads = layer.backward(dy, tuple(dhT) if kind == "lstm" else dhT[0], cache)
    for k in grads:
        np.testing.assert_allclose(grads[k], g_t[k], rtol=1e-10, atol=TOL)
    np.testing.assert_allclose(dx, g_t["x"], rtol=1e-10, atol=TOL)
    for a, b in zip(dstate0 if kind == "lstm" else (dstate0,), g_t["h0"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=TOL)


@pytest.mark.parametrize("cls", [rk.RNN, rk.LSTM, rk.GRU], ids=lambda c: c.__name__)
def test_to_torch_round_trip(cls):
    layer = cls(I, H, backend="numpy", dtype="float64", seed=3)
    mod = to_torch(layer)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    y_t = mod(torch.tensor(x))[0].detach().numpy()
    np.testing.assert_allclose(layer(x), y_t, rtol=TOL, atol=TOL)
    back = from_torch(mod, backend="numpy")
    for k, v in layer.parameters().items():
        np.testing.assert_allclose(back.parameters()[k], v, rtol=0, atol=1e-15)


def test_linear_both_ways_and_gradients():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2, dtype=torch.float64)
    dense = from_torch(lin, backend="numpy")
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    xt = torch.tensor(x, requires_grad=True)
    yt = lin(xt)
    dy = np.random.default_rng(1).standard_normal((4, 2, 2))
    (yt * torch.tensor(dy)).sum().backward()
    y, _, cache = dense.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=TOL)
    dx, _, g = dense.backward(dy, None, cache)
    np.testing.assert_allclose(g["W"], lin.weight.grad.numpy().T, rtol=1e-12)
    np.testing.assert_allclose(g["b"], lin.bias.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12)
    again = to_torch(dense)
    np.testing.assert_array_equal(again.weight.detach().numpy(), lin.weight.detach().numpy())


def test_unsupported_modules():
    with pytest.raises(ValueError, match="num_layers"):
        from_torch(torch.nn.LSTM(2, 3, num_layers=2))
    with pytest.raises(ValueError, match="batch_first"):
        from_torch(torch.nn.GRU(2, 3, batch_first=True))
    with pytest.raises(TypeError, match="module"):  # not a supported module type
        from_torch(torch.nn.Conv1d(2, 3, 1))
    with pytest.raises(ValueError, match="identity"):
        to_torch(rk.RNN(1, 2, "identity", backend="numpy"))
