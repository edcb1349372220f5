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
    with pytest.raises(TypeError, match="module"):  # not a supported module type
        from_torch(torch.nn.Conv1d(2, 3, 1))
    with pytest.raises(ValueError, match="identity"):
        to_torch(rk.RNN(1, 2, "identity", backend="numpy"))


# ----------------------------------------------------------------------------
# whole modules: stacks, both directions, variable lengths, Sequential

TORCH_CELLS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
LENGTHS = np.array([5, 2, 4])


def torch_param_grads(mod, layer):
    """The torch module's parameter gradients under rnnkern's names for ``layer``."""
    H = layer.hidden
    out = {}
    for n, d, sfx in layer._units():
        t = f"_l{n}" + ("_reverse" if d else "")
        out["W" + sfx] = getattr(mod, "weight_ih" + t).grad.numpy().T
        out["R" + sfx] = getattr(mod, "weight_hh" + t).grad.numpy().T
        b_ih, b_hh = getattr(mod, "bias_ih" + t).grad.numpy(), \
            getattr(mod, "bias_hh" + t).grad.numpy()
        out["b" + sfx] = b_ih
        if layer.cell == "gru":
            out["b_hn" + sfx] = b_hh[2 * H :]
        else:
            np.testing.assert_allclose(b_hh, b_ih, rtol=1e-10, atol=TOL)
    return out


def run_packed(mod, x, lengths, state, dy, dstate):
    """torch over a packed batch (enforce_sorted=False): y (padded), final state, and
    the gradients of sum(dy * y) + sum(dstate * final state) for x and the state."""
    pack = torch.nn.utils.rnn.pack_padded_sequence
    xt = torch.tensor(x, requires_grad=True)
    st = tuple(torch.tensor(s, requires_grad=True) for s in state)
    out, final = mod(pack(xt, torch.tensor(lengths), enforce_sorted=False),
                     st if len(st) == 2 else st[0])
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
    final = final if isinstance(final, tuple) else (final,)
    loss = (y * torch.tensor(dy)).sum() + sum((f * torch.tensor(d)).sum()
                                              for f, d in zip(final, dstate, strict=True))
    loss.backward()
    return (y.detach().numpy(), [f.detach().numpy() for f in final], xt.grad.numpy(),
            [s.grad.numpy() for s in st])


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_two_layer_bidirectional_with_lengths_matches_torch(backend, cell, direction):
    if backend not in ("numpy", "numba"):
        pytest.skip("float64 parity is checked on the CPU backends")
    torch.manual_seed(0)
    if direction == "from_torch":
        mod = TORCH_CELLS[cell](I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
        layer = from_torch(mod, backend=backend)
    else:
        kind = {"rnn": rk.RNN, "lstm": rk.LSTM, "gru": rk.GRU}[cell]
        layer = kind(I, H, num_layers=2, bidirectional=True, backend=backend,
                     dtype="float64", seed=4)
        mod = to_torch(layer)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)) * (np.arange(T)[:, None] < LENGTHS)[:, :, None]
    n_state = 2 if cell == "lstm" else 1
    state = [rng.standard_normal((4, B, H)) for _ in range(n_state)]
    dy = rng.standard_normal((T, B, 2 * H)) * (np.arange(T)[:, None] < LENGTHS)[:, :, None]
    dstate = [rng.standard_normal((4, B, H)) for _ in range(n_state)]
    y_t, final_t, dx_t, dstate0_t = run_packed(mod, x, LENGTHS, state, dy, dstate)

    pack = tuple if cell == "lstm" else (lambda s: s[0])
    y, final, cache = layer.forward(x, pack(state), LENGTHS)
    assert rel(y, y_t) < 1e-10
    for a, b in zip(final if cell == "lstm" else (final,), final_t, strict=True):
        assert rel(a, b) < 1e-10
    dx, dstate0, grads = layer.backward(dy, pack(dstate), cache)
    g_t = torch_param_grads(mod, layer)
    assert set(grads) == set(g_t)
    for k in grads:
        assert rel(grads[k], g_t[k]) < 1e-10, k
    assert rel(dx, dx_t) < 1e-10
    for a, b in zip(dstate0 if cell == "lstm" else (dstate0,), dstate0_t, strict=True):
        assert rel(a, b) < 1e-10


def test_options_carry_over_both_ways():
    mod = torch.nn.GRU(I, H, num_layers=3, dropout=0.25, bias=False, batch_first=True,
                       dtype=torch.float64)
    layer = from_torch(mod)
    assert (layer.num_layers, layer.dropout, layer.bidirectional) == (3, 0.25, False)
    assert not any(v.any() for k, v in layer.parameters().items() if k.startswith("b"))
    xb = np.random.default_rng(0).standard_normal((B, T, I))
    mod.eval()  # inference: no dropout on either side
    y_t = mod(torch.tensor(xb))[0].detach().numpy()           # batch-first
    y = layer(rk.data.from_batch_first(xb))                    # the time-major equivalent
    np.testing.assert_allclose(rk.data.from_batch_first(y_t), y, rtol=1e-12, atol=TOL)
    back = to_torch(layer)
    assert (back.num_layers, back.dropout, back.batch_first) == (3, 0.25, False)
    bi = rk.Bidirectional(rk.LSTM(I, H, dtype="float64", seed=0), seed=1)
    assert to_torch(bi).bidirectional
    with pytest.raises(ValueError, match="merge='sum'"):
        to_torch(rk.Bidirectional(rk.LSTM(I, H), merge="sum"))


def test_sequential_of_embedding_lstm_and_linear_both_ways():
    torch.manual_seed(0)
    V, E = 7, 3
    inner = torch.nn.LSTM(E, H, num_layers=2, dtype=torch.float64)
    seq = torch.nn.Sequential(torch.nn.Embedding(V, E, dtype=torch.float64),
                              torch.nn.Dropout(0.1),
                              _outputs(inner),
                              torch.nn.Linear(H, 2, dtype=torch.float64), torch.nn.Tanh())
    model = from_torch(seq, backend="numpy")
    assert [type(la).__name__ for la in model] == ["Embedding", "Dropout", "LSTM", "Dense"]
    assert model[3].activation == "tanh" and model.dtype == np.float64
    ids = np.random.default_rng(0).integers(0, V, (T, B))
    seq.eval()
    y_t = seq(torch.tensor(ids)).detach().numpy()
    np.testing.assert_allclose(model(ids), y_t, rtol=1e-12, atol=TOL)
    # gradients of a training step (dropout off on both sides) agree too
    seq.train()
    seq[1].p = 0.0
    model[1].p = 0.0
    target = np.random.default_rng(1).standard_normal((T, B, 2))
    loss_t = ((seq(torch.tensor(ids)) - torch.tensor(target)) ** 2).mean()
    loss_t.backward()
    value, grads = rk.value_and_grad(model, ids, target)
    assert abs(value - loss_t.item()) < 1e-12
    np.testing.assert_allclose(grads["0.W"], seq[0].weight.grad.numpy(), rtol=1e-10, atol=TOL)
    np.testing.assert_allclose(grads["3.W"], seq[3].weight.grad.numpy().T, rtol=1e-10,
                               atol=TOL)
    np.testing.assert_allclose(grads["2.R_l1"], inner.weight_hh_l1.grad.numpy().T,
                               rtol=1e-10, atol=TOL)
    back = to_torch(model)
    back.eval()
    np.testing.assert_allclose(back(torch.tensor(ids)).detach().numpy(), model(ids),
                               rtol=1e-12, atol=TOL)


def _outputs(module):
    from rnnkern.interop.pytorch import _outputs_class
    return _outputs_class()(module)


def test_modules_without_a_counterpart():
    with pytest.raises(ValueError, match="proj_size"):
        from_torch(torch.nn.LSTM(2, 4, proj_size=2))
    with pytest.raises(ValueError, match="padding_idx"):
        from_torch(torch.nn.Embedding(5, 2, padding_idx=0))
    with pytest.raises(ValueError, match=r"module\[0\]: a Tanh"):
        from_torch(torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(2, 2)))
    with pytest.raises(TypeError, match=r"module\[1\]"):
        from_torch(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Conv1d(2, 2, 1)))


def test_converted_models_save_and_come_back_whole(tmp_path):
    import io

    model = rk.Sequential(rk.GRU(I, H, num_layers=2, dtype="float64"),
                          rk.Dense(H, 2, "tanh", dtype="float64"), seed=0)
    mod = to_torch(model)
    assert isinstance(mod[0], rk.interop.Outputs)
    buf = io.BytesIO()
    torch.save(mod, buf)  # a module-level wrapper: torch can pickle it
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    np.testing.assert_allclose(again(torch.tensor(x)).detach().numpy(), model(x),
                               rtol=1e-12, atol=TOL)
    dense = from_torch(to_torch(rk.Dense(3, 2, "sigmoid", dtype="float64", seed=0)))
    assert isinstance(dense, rk.Dense) and dense.activation == "sigmoid"
    nested = from_torch(torch.nn.Sequential(to_torch(rk.Dense(3, 2, "relu", dtype="float64")),
                                            torch.nn.Linear(2, 1, dtype=torch.float64)))
    assert [la.activation for la in nested] == ["relu", None]
