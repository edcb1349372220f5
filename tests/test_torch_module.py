"""rnnkern.torch's drop-in modules against torch.nn's own: outputs, final states and every
gradient to 1e-10 in float64 with the same weights (state_dict loaded both ways),
torch.autograd.gradcheck on every configuration, double backward refused, bad arguments
refused. Runs where torch is installed."""

import itertools

import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import rnnkern.torch as rkt  # noqa: E402

CELLS = ("RNN", "LSTM", "GRU")
CONFIGS = list(itertools.product(CELLS, (1, 2), (False, True), (False, True), (False, True)))
I, H, T, B = 3, 2, 4, 3
LENGTHS = torch.tensor([3, 4, 1])  # unsorted, one full row, a length-1 row


def _ids(c):
    cell, layers, bi, bf, packed = c
    return f"{cell}-L{layers}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tm'}-" \
           f"{'packed' if packed else 'padded'}"


def _pair(cell, **kw):
    """(torch.nn module, rnnkern.torch module) with the same float64 weights."""
    torch.manual_seed(1)
    ref = getattr(torch.nn, cell)(I, H, dtype=torch.float64, **kw)
    ours = getattr(rkt, cell)(I, H, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _inputs(cell, layers, bi, bf, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if bf else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    hs = [torch.randn(layers * (1 + bi), B, H, generator=g, dtype=torch.float64,
                      requires_grad=True) for _ in range(2 if cell == "LSTM" else 1)]
    return x, hs


def _feed(x, bf, packed):
    return pack_padded_sequence(x, LENGTHS, batch_first=bf, enforce_sorted=False) \
        if packed else x


def _flat(out):
    """(output, h_n[, c_n]) as plain tensors (a PackedSequence's data)."""
    y, state = out
    y = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    return (y, *state) if isinstance(state, tuple) else (y, state)


def _hx(cell, hs):
    return tuple(hs) if cell == "LSTM" else hs[0]


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_matches_torch_nn(config):
    cell, layers, bi, bf, packed = config
    ref, ours = _pair(cell, num_layers=layers, bidirectional=bi, batch_first=bf)
    x, hs = _inputs(cell, layers, bi, bf)
    g = torch.Generator().manual_seed(5)
    results = []
    for m in (ref, ours):
        outs = _flat(m(_feed(x, bf, packed), _hx(cell, hs)))
        # an upstream gradient on every output, and on the unpadded part only when packed
        loss = sum((o * torch.randn(o.shape, generator=g.manual_seed(5 + k),
                                    dtype=o.dtype)).sum() for k, o in enumerate(outs))
        grads = torch.autograd.grad(loss, [x, *hs, *m.parameters()])
        results.append((outs, grads))
    (o_ref, g_ref), (o_ours, g_ours) = results
    assert [o.shape for o in o_ours] == [o.shape for o in o_ref]
    for a, b in zip((*o_ref, *g_ref), (*o_ours, *g_ours)):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_gradcheck(config):
    cell, layers, bi, bf, packed = config
    _, m = _pair(cell, num_layers=layers, bidirectional=bi, batch_first=bf)
    x, hs = _inputs(cell, layers, bi, bf)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *rest):
        state, weights = rest[:len(hs)], rest[len(hs):]
        out = torch.func.functional_call(m, dict(zip(names, weights)),
                                         (_feed(x, bf, packed), _hx(cell, list(state))))
        return _flat(out)

    assert torch.autograd.gradcheck(f, (x, *hs, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_both_ways_and_same_init(cell):
    kw = {"num_layers": 2, "bidirectional": True}
    torch.manual_seed(3)
    ref = getattr(torch.nn, cell)(I, H, **kw)
    torch.manual_seed(3)
    ours = getattr(rkt, cell)(I, H, **kw)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)  # same names in the same order
    assert all(torch.equal(a[k], b[k]) for k in a)  # one seed, the same weights
    back = getattr(torch.nn, cell)(I, H, **kw)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    assert torch.allclose(back(x)[0], ours(x)[0], atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_no_bias_unbatched_and_float32(cell):
    ref, ours = _pair(cell, bias=False)
    assert not any("bias" in n for n, _ in ours.named_parameters())
    x = torch.randn(T, I, dtype=torch.float64)  # unbatched
    for a, b in zip(_flat(ref(x)), _flat(ours(x))):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12)
    ref, ours = ref.float(), ours.float()
    x = torch.randn(T, B, I, requires_grad=True)
    ya, yb = ref(x)[0], ours(x)[0]
    assert yb.dtype == torch.float32 and torch.allclose(ya, yb, atol=1e-5)
    ga = torch.autograd.grad(ya.sum(), [x, *ref.parameters()])
    gb = torch.autograd.grad(yb.sum(), [x, *ours.parameters()])
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(ga, gb))


@pytest.mark.parametrize("nonlinearity", ("relu", "identity"))
def test_rnn_nonlinearities(nonlinearity):
    m = rkt.RNN(I, H, nonlinearity=nonlinearity, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))
    if nonlinearity == "relu":
        ref = torch.nn.RNN(I, H, nonlinearity="relu", bidirectional=True,
                           dtype=torch.float64)
        ref.load_state_dict(m.state_dict())
        assert torch.allclose(ref(x)[0], m(x)[0], atol=1e-12)
    else:  # identity: a linear map, checked directly on one step
        w, u, b1, b2 = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
        y = m(x[:1])[0][0, :, :H]
        assert torch.allclose(y, x[0] @ w.T + b1 + b2, atol=1e-12)
        assert u.shape == (H, H)


def test_lengths_on_padded_input_match_packed():
    torch.manual_seed(0)
    m = rkt.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, h = m(x, lengths=LENGTHS)
    yp, hp = m(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
    yp = torch.nn.utils.rnn.pad_packed_sequence(yp)[0]
    assert torch.allclose(y, yp, atol=1e-14) and torch.allclose(h, hp, atol=1e-14)
    assert (y[LENGTHS[None, :] <= torch.arange(T)[:, None]] == 0).all()  # padding: zeros


def test_dropout_between_layers_training_only():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    ours = rkt.LSTM(I, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(9)
    a = ref(x)[0]
    torch.manual_seed(9)
    b = ours(x)[0]
    assert torch.allclose(a, b, atol=1e-12)  # torch's RNG draws the same masks
    torch.manual_seed(10)
    assert not torch.allclose(ours(x)[0], b)
    ours.eval(), ref.eval()
    assert torch.allclose(ours(x)[0], ref(x)[0], atol=1e-12)
    assert torch.equal(ours(x)[0], ours(x)[0])


def test_double_backward_refused():
    m = rkt.GRU(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(m(x)[0].sum(), x)  # a first derivative still runs
    assert gx.shape == x.shape and not gx.requires_grad


def test_in_place_change_of_input_after_forward_refused():
    m = rkt.RNN(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    xc = x * 1.0
    y = m(xc)[0]
    xc.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_inference_under_no_grad_is_the_same():
    m = rkt.LSTM(I, H, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        a = m(x)
    b = m(x)
    assert torch.equal(a[0], b[0].detach()) and not a[0].requires_grad


@pytest.mark.parametrize("make, error, match", [
    (lambda: rkt.LSTM(I, H, proj_size=2), ValueError, "proj_size"),
    (lambda: rkt.RNN(I, H, nonlinearity="sigmoid"), ValueError, "nonlinearity"),
    (lambda: rkt.GRU(0, H), ValueError, "input_size"),
    (lambda: rkt.GRU(I, 2.5), TypeError, "hidden_size"),
    (lambda: rkt.GRU(I, H, num_layers=0), ValueError, "num_layers"),
    (lambda: rkt.GRU(I, H, dropout=1.5), ValueError, "dropout"),
    (lambda: rkt.GRU(I, H, bidirectional=1), TypeError, "bidirectional"),
    (lambda: rkt.GRU(I, H, dtype=torch.float16), ValueError, "dtype"),
])
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout"):
        rkt.GRU(I, H, dropout=0.2)


@pytest.mark.parametrize("call, error, match", [
    (lambda m: m(torch.randn(T, B, I + 1)), ValueError, "input_size"),
    (lambda m: m(torch.randn(T, B, I, dtype=torch.float64)), ValueError, "dtype"),
    (lambda m: m(torch.randn(B, I, 1, 1)), ValueError, "3-d"),
    (lambda m: m([[0.0] * I]), TypeError, "input"),
    (lambda m: m(torch.randn(T, B, I), torch.zeros(1, B + 1, H)), ValueError, "hx"),
    (lambda m: m(torch.randn(T, B, I), torch.zeros(1, B, H, dtype=torch.float64)),
     ValueError, "hx"),
    (lambda m: m(torch.randn(T, B, I), lengths=torch.tensor([1, 2])), ValueError, "lengths"),
    (lambda m: m(torch.randn(T, B, I), lengths=torch.tensor([1, 2, T + 1])), ValueError,
     r"\[1, T=4\]"),
    (lambda m: m(torch.randn(T, B, I), lengths=torch.tensor([1.0, 2.0, 3.0])), ValueError,
     "integers"),
    (lambda m: m(pack_padded_sequence(torch.randn(T, B, I), LENGTHS, enforce_sorted=False),
                 lengths=LENGTHS), ValueError, "PackedSequence"),
])
def test_bad_forward_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(rkt.GRU(I, H))


def test_lstm_hx_must_be_a_pair():
    m = rkt.LSTM(I, H)
    with pytest.raises(TypeError, match=r"\(h_0, c_0\)"):
        m(torch.randn(T, B, I), torch.zeros(1, B, H))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("t, b", [(1, 1), (1, 3), (5, 1)])
def test_edge_sizes_and_carried_state(cell, t, b):
    """T=1, B=1, and a sequence run in two chunks with the state carried between them."""
    ref, ours = _pair(cell, num_layers=2, bidirectional=False)
    x = torch.randn(2 * t, b, I, dtype=torch.float64, requires_grad=True)
    outs = []
    for m in (ref, ours):
        y1, s = m(x[:t])
        y2, s = m(x[t:], s)
        flat = _flat((torch.cat([y1, y2]), s))
        grads = torch.autograd.grad(sum(o.square().sum() for o in flat), [x, *m.parameters()])
        outs.append((*flat, *grads))
    for a, c in zip(*outs):
        assert torch.allclose(a, c, rtol=0, atol=1e-10)


def test_warns_when_torch_comes_after_numbas_pool():
    import os
    import subprocess
    import sys

    code = ("import numpy as np, rnnkern as rk\n"
            "rk.GRU(2, 3, backend='numba')(np.zeros((2, 2, 2), np.float32))\n"
            "import rnnkern.torch\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    res = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "torch is imported after Numba's thread pool started" in res.stderr


def test_time_major_contiguous_input_reaches_the_kernel_without_a_copy(monkeypatch):
    import types

    import numpy as np

    from rnnkern import backends

    real = backends.get("numba")
    seen = []

    def gru_forward(x, *args, **kwargs):
        seen.append(x)
        return real.gru_forward(x, *args, **kwargs)

    fake = types.SimpleNamespace(gru_forward=gru_forward, gru_backward=real.gru_backward)
    monkeypatch.setattr(rkt.backends, "get", lambda name: fake)
    x = torch.randn(T, B, I, requires_grad=True)
    rkt.GRU(I, H)(x)[0].sum().backward()
    assert np.shares_memory(seen[0], x.detach().numpy())
    assert x.grad is not None and x.grad.shape == x.shape
