"""EMULATION of the CUDA kernels' index math in NumPy, no GPU needed.

Two parts: the kernels of "persistent" transliterated below and run block by block; and the
step loops of "cublas-steps" and "fused-steps" run through the engine itself against a
stand-in for CuPy (see the second section), which also checks that no cuBLAS call is made
while a stream captures.

The persistent part is not a kernel test: it transliterates persistent.cu's blocking and
tiling (block i owns units [i*HS, i*HS+HS); R's slice in ``Ws``; rows staged transposed in
``As``; ``block_matmul``'s 4x4 tasks over KS reduction slices; the cells' flat offsets
``gbase``, ``u``, ``un``, ``s``) onto flat NumPy arrays, looping over blocks and threads the way the
kernel does, and checks the result against numpy_ref. It catches index bugs in that
scheme; races, memory ordering and the barrier are out of its reach (one block runs a
phase at a time here, in the order the grid barrier enforces).
"""

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from rnnkern.backends import numpy_ref
from rnnkern.backends.cupy_cuda.variants import DeviceLimits, plan_persistent
from rnnkern.gradcheck import make_problem

THREADS = 256  # PERSISTENT_THREADS
G_OF = {"rnn": 1, "lstm": 4, "gru": 3}


def r4(n):
    return (n + 3) & ~3


def block_matmul(As, Ws, K, BBP, NCP, KS):
    """part[0 : BBP*NCP] = As^T Ws, as block_matmul computes it (flat arrays)."""
    cgroups = NCP // 4
    tasks = (BBP // 4) * cgroups
    AS = BBP + 1  # as_stride
    kc = (K + KS - 1) // KS
    part = np.zeros(KS * BBP * NCP)
    for w in range(tasks * KS):  # every thread's share of the strided loop
        task, ks = w % tasks, w // tasks
        r0, c0 = (task // cgroups) * 4, (task % cgroups) * 4
        acc = np.zeros((4, 4))
        for k in range(ks * kc, min(K, (ks + 1) * kc)):
            acc += np.outer(As[k * AS + r0: k * AS + r0 + 4], Ws[k * NCP + c0: k * NCP + c0 + 4])
        for r in range(4):
            for q in range(4):
                part[ks * BBP * NCP + (r0 + r) * NCP + c0 + q] = acc[r, q]
    n, m = BBP * NCP, KS
    while m > 1:  # the tree: one round per __syncthreads
        half = (m + 1) // 2
        for w in range((m - half) * n):
            part[w] += part[half * n + w]
        m = half
    return part


def stage_rows(src, off, b0, nb, K, BBP):
    AS = BBP + 1
    As = np.full(K * AS, np.nan)  # the pad column is never read
    for idx in range(BBP * K):
        bb, k = divmod(idx, K)
        As[k * AS + bb] = src[off + (b0 + bb) * K + k] if bb < nb else 0.0
    return As


def sig(v):
    return numpy_ref.sigmoid(np.asarray(v))


ACTIVATIONS = {0: np.tanh, 1: lambda v: np.maximum(v, 0.0), 2: lambda v: v}  # common.cuh ids
ACTIVATION_GRADS = {0: lambda a: 1 - a * a, 1: lambda a: float(a > 0), 2: lambda a: 1.0}


def cell_forward(cell, a, t, b, j, hg, hs):
    """Cell<T, cell>::forward of unit (b, j) at step t on flat arrays; hg(o) reads hg[o]."""
    B, H = a["B"], a["H"]
    G = G_OF[cell]
    gbase = (t * B + b) * G * H + j
    u = (t * B + b) * H + j
    un = u + B * H
    on = a["lengths"] is None or t < a["lengths"][b]
    gx, h = a["gx"], a["h"]
    if cell == "rnn":
        v = ACTIVATIONS[a["act"]](gx[u] + hg(0))
        a["gates"][u] = v
        h_new = v
    elif cell == "lstm":
        i, f = sig(gx[gbase] + hg(0)), sig(gx[gbase + H] + hg(hs))
        g, o = np.tanh(gx[gbase + 2 * H] + hg(2 * hs)), sig(gx[gbase + 3 * H] + hg(3 * hs))
        a["gates"][[gbase, gbase + H, gbase + 2 * H, gbase + 3 * H]] = i, f, g, o
        c_new = f * a["c"][u] + i * g
        a["aux"][u] = np.tanh(c_new)
        h_new = o * a["aux"][u]
        a["c"][un] = c_new if on else a["c"][u]
    else:
        r, z = sig(gx[gbase] + hg(0)), sig(gx[gbase + H] + hg(hs))
        hn = hg(2 * hs) + a["b_hn"][j]
        n = np.tanh(gx[gbase + 2 * H] + r * hn)
        a["gates"][[gbase, gbase + H, gbase + 2 * H]] = r, z, n
        a["aux"][u] = hn
        h_new = (1 - z) * n + z * h[u]
    h[un] = h_new if on else h[u]
    a["y"][u] = h_new if on else 0.0


def cell_backward(cell, a, t, b, j):
    """Cell<T, cell>::backward of unit (b, j) at step t; writes dgx and dgh (the same array
    except for GRU) and the carried dh, dc."""
    B, H = a["B"], a["H"]
    G = G_OF[cell]
    s = b * H + j
    u = t * B * H + s
    gbase = (t * B + b) * G * H + j
    on = a["lengths"] is None or t < a["lengths"][b]
    gt, dh = a["gates"], a["dh"][s]
    dh_new = (0.0 if a["dy"] is None else a["dy"][u]) + dh if on else 0.0
    if cell == "rnn":
        a["dgx"][u] = dh_new * ACTIVATION_GRADS[a["act"]](gt[u])
        a["dh"][s] = 0.0 if on else dh
    elif cell == "lstm":
        i, f, g, o = gt[gbase], gt[gbase + H], gt[gbase + 2 * H], gt[gbase + 3 * H]
        tc, dc = a["aux"][u], a["dc"][s]
        dc_new = (dc if on else 0.0) + dh_new * o * (1 - tc * tc)
        a["dgx"][[gbase, gbase + H, gbase + 2 * H, gbase + 3 * H]] = (
            dc_new * g * i * (1 - i), dc_new * a["c"][u] * f * (1 - f),
            dc_new * i * (1 - g * g), dh_new * tc * o * (1 - o))
        a["dc"][s] = dc_new * f if on else dc
        a["dh"][s] = 0.0 if on else dh
    else:
        r, z, n = gt[gbase], gt[gbase + H], gt[gbase + 2 * H]
        dn = dh_new * (1 - z) * (1 - n * n)
        dr, dz = dn * a["aux"][u] * r * (1 - r), dh_new * (a["h"][u] - n) * z * (1 - z)
        a["dgx"][[gbase, gbase + H, gbase + 2 * H]] = dr, dz, dn
        a["dgh"][[gbase, gbase + H, gbase + 2 * H]] = dr, dz, dn * r
        a["dh"][s] = dh_new * z if on else dh


def persistent_forward(cell, a, R, T, B, H, plan):
    G = G_OF[cell]
    K, NC = H, G * plan.HS
    NCP, BBP = r4(NC), r4(plan.BB)
    Rf = R.ravel()
    for t in range(T):
        for blk in range(plan.blocks):  # blocks run one by one; the barrier closes step t
            j0 = blk * plan.HS
            nu = min(plan.HS, H - j0)
            Ws = np.empty(K * NCP)
            for idx in range(K * NCP):
                k, cc = divmod(idx, NCP)
                g, jj = divmod(cc, plan.HS)
                Ws[idx] = Rf[k * G * H + g * H + j0 + jj] if cc < NC and jj < nu else 0.0
            for b0 in range(0, B, plan.BB):
                nb = min(plan.BB, B - b0)
                As = stage_rows(a["h"], t * B * H, b0, nb, K, BBP)
                part = block_matmul(As, Ws, K, BBP, NCP, plan.KS)
                for idx in range(nb * nu):
                    bb, jj = divmod(idx, nu)
                    base = bb * NCP + jj
                    cell_forward(cell, a, t, b0 + bb, j0 + jj,
                                 lambda o, base=base, part=part: part[base + o], plan.HS)


def persistent_backward(cell, a, R, T, B, H, plan):
    G = G_OF[cell]
    K, NCP, BBP = G * H, r4(plan.HS), r4(plan.BB)
    Rf = R.ravel()
    for t in range(T - 1, -1, -1):
        for blk in range(plan.blocks):  # phase 1 of every block, then the barrier
            j0 = blk * plan.HS
            for idx in range(B * min(plan.HS, H - j0)):
                b, jj = divmod(idx, min(plan.HS, H - j0))
                cell_backward(cell, a, t, b, j0 + jj)
        for blk in range(plan.blocks):
            j0 = blk * plan.HS
            nu = min(plan.HS, H - j0)
            Ws = np.array([Rf[(j0 + cc) * K + k] if cc < nu else 0.0
                           for k in range(K) for cc in range(NCP)])
            for b0 in range(0, B, plan.BB):
                nb = min(plan.BB, B - b0)
                As = stage_rows(a["dgh"], t * B * K, b0, nb, K, BBP)
                part = block_matmul(As, Ws, K, BBP, NCP, plan.KS)
                for idx in range(nb * nu):
                    bb, jj = divmod(idx, nu)
                    a["dh"][(b0 + bb) * H + j0 + jj] += part[bb * NCP + jj]


# a small device: three blocks own 3 + 3 + 1 of H=7 units
TINY = DeviceLimits(sm_count=3, smem_per_block=4096, cooperative=True)


@pytest.mark.parametrize("KS", (1, 3, 5))
@pytest.mark.parametrize("cell", ("rnn", "lstm", "gru"))
def test_persistent_indexing_matches_oracle(cell, KS):
    T, B, I, H = 3, 6, 2, 7
    p = make_problem(cell, T=T, B=B, I=I, H=H, lengths=True, seed=4)
    # the kernels take HS, BB, KS as arguments: force a partial row chunk (6 = 4 + 2) and an
    # uneven split of the reduction into KS slices (summed by an uneven tree for 3 and 5)
    fwd = plan_persistent(cell, B, H, 8, TINY, "forward")._replace(BB=4, KS=KS)
    bwd = plan_persistent(cell, B, H, 8, TINY, "backward")._replace(BB=4, KS=KS)
    assert fwd.blocks == 3 and fwd.HS * 3 > H
    x, W, R, b = p.inputs["x"], p.params["W"], p.params["R"], p.params["b"]
    h0, c0 = p.inputs["h0"], p.inputs.get("c0")
    args = (x, h0, c0, W, R, b) if cell == "lstm" else (x, h0, W, R, b)
    if cell == "gru":
        args += (p.params["b_hn"],)
    y_ref, _, cache = getattr(numpy_ref, f"{cell}_forward")(*args, lengths=p.lengths)
    G = G_OF[cell]
    a = {"B": B, "H": H, "act": 0, "lengths": p.lengths, "gx": (x @ W + b).ravel(),
         "b_hn": p.params.get("b_hn"), "h": np.zeros((T + 1) * B * H),
         "c": np.zeros((T + 1) * B * H), "gates": np.zeros(T * B * G * H),
         "aux": np.zeros(T * B * H), "y": np.zeros(T * B * H)}
    a["h"][: B * H] = h0.ravel()
    if c0 is not None:
        a["c"][: B * H] = c0.ravel()
    persistent_forward(cell, a, R, T, B, H, fwd)
    np.testing.assert_allclose(a["y"].reshape(T, B, H), y_ref, atol=1e-12)
    np.testing.assert_allclose(a["h"].reshape(T + 1, B, H), cache["h"], atol=1e-12)

    dy, dhT = p.out_grads["dy"], p.out_grads["dhT"]
    dstate = (dhT, p.out_grads["dcT"]) if cell == "lstm" else dhT
    ref = getattr(numpy_ref, f"{cell}_backward")(dy, dstate, cache)
    a.update(dy=dy.ravel(), dh=dhT.ravel().copy(), dgx=np.zeros(T * B * G * H),
             dc=p.out_grads["dcT"].ravel().copy() if cell == "lstm" else None)
    a["dgh"] = np.zeros(T * B * G * H) if cell == "gru" else a["dgx"]
    persistent_backward(cell, a, R, T, B, H, bwd)
    dh0_ref = ref[1][0] if cell == "lstm" else ref[1]
    np.testing.assert_allclose(a["dh"].reshape(B, H), dh0_ref, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(a["dc"].reshape(B, H), ref[1][1], atol=1e-12)
    dx = a["dgx"].reshape(T, B, G * H) @ W.T  # the weight gradients follow from dgx, dgh
    np.testing.assert_allclose(dx, ref[0], atol=1e-12)
    dR = cache["h"][:-1].reshape(T * B, H).T @ a["dgh"].reshape(T * B, G * H)
    np.testing.assert_allclose(dR, ref[2]["R"], atol=1e-12)


# ----------------------------------------------------------------------------
# EMULATION of the step loops of "cublas-steps" and "fused-steps" through the engine, with a
# stand-in for CuPy: NumPy arrays, kernels run by the transliterations below, stream capture
# recorded and replayed, and cuBLAS refusing to run while a stream captures, as CuPy 14 does
# (cupy_backends/cuda/libs/cublas.pyx: setStream raises NotImplementedError when
# streamIsCapturing). What it checks: the engine's launch sequence and arguments, the
# kernels' index math, and that no cuBLAS call is made inside a captured loop.

CUBLAS_IN_CAPTURE = "calling cuBLAS API during stream capture is currently unsupported"


class DevArray(np.ndarray):
    """A NumPy array with CuPy's ``.data.ptr``."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.__array_interface__["data"][0])


class FakeCuda:
    """The device side of the stand-in: the launch log and the capture in progress."""

    def __init__(self):
        self.capture = None  # launches being recorded, or None
        self.launches = []  # (kernel name, captured) of every launch issued
        self.captures = 0

    def refuse_in_capture(self, what):
        if self.capture is not None:
            raise NotImplementedError(f"{CUBLAS_IN_CAPTURE} ({what})")

    def launch(self, name, cell, grid, block, args):
        self.launches.append((name, self.capture is not None))
        if self.capture is not None:
            self.capture.append((name, cell, grid, block, args))
        else:
            EMULATORS[name](cell, grid, block, args)


def fake_cupy(dev):
    """A module object standing in for ``cupy`` over NumPy, bound to ``dev``."""

    class Stream:
        def __init__(self, non_blocking=False):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin_capture(self):
            assert dev.capture is None, "nested capture"
            dev.capture = []
            dev.captures += 1

        def end_capture(self):
            launches, dev.capture = dev.capture, None
            return SimpleNamespace(launch=lambda: [EMULATORS[n](*rest) for n, *rest in launches])

    def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
        dev.refuse_in_capture("gemm")
        op = {"N": lambda m: m, "T": lambda m: m.T}
        product = alpha * (op[transa](a) @ op[transb](b))
        # as cuBLAS: with beta == 0, out is not read (it may hold anything, NaN included)
        out[...] = product if beta == 0 else product + beta * out

    def matmul(a, b):
        dev.refuse_in_capture("matmul")
        return np.matmul(a, b).view(DevArray)

    def wrap(fn):
        return lambda *a, **k: np.asarray(fn(*a, **k)).view(DevArray)

    def empty(shape, dtype=float):
        # NaN where the engine has not written yet: a kernel reading such an element shows
        a = np.empty(shape, dtype)
        a.fill(np.nan if a.dtype.kind == "f" else -1)
        return a.view(DevArray)

    mod = types.ModuleType("cupy")
    mod.__dict__.update(
        cuda=SimpleNamespace(Stream=Stream, Device=lambda *a: SimpleNamespace(id=0)),
        cublas=SimpleNamespace(gemm=gemm), matmul=matmul, empty=empty,
        zeros=wrap(np.zeros), ascontiguousarray=wrap(np.ascontiguousarray))
    return mod


@pytest.fixture
def fake_gpu(monkeypatch):
    from rnnkern.backends.cupy_cuda import engine, loader

    dev = FakeCuda()
    cp = fake_cupy(dev)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(loader, "kernel", lambda name, dtype, cell: (
        lambda grid, block, args: dev.launch(name, cell, grid, block, args)))
    monkeypatch.setattr(engine, "device_limits", lambda device_id: None)
    monkeypatch.setattr(engine, "_capture_stream", lambda device_id: cp.cuda.Stream())
    monkeypatch.setattr(engine, "_GRAPHS", type(engine._GRAPHS)())
    dev.cp = cp
    return dev


def _flat(v):
    """A kernel argument as the kernel sees it: a flat array, None for a null pointer, or an
    int."""
    if isinstance(v, np.ndarray):
        assert v.flags.c_contiguous
        return v.reshape(-1)
    if isinstance(v, np.uint64):
        assert v == 0
        return None
    return int(v)


def _threads(grid, block):
    """(blockIdx.x, blockIdx.y, blockDim.x, threadIdx.x) of every thread of a launch."""
    gx, gy = grid[0], grid[1] if len(grid) > 1 else 1
    for by in range(gy):
        for bx in range(gx):
            for tx in range(block[0]):
                yield bx, by, block[0], tx


def emu_cublas_forward_step(cell, grid, block, args):
    gx, gh, b_hn, h, c, gates, aux, y, lengths, t, B, H, act = map(_flat, args)
    a = dict(gx=gx, b_hn=b_hn, h=h, c=c, gates=gates, aux=aux, y=y, lengths=lengths, B=B, H=H,
             act=act)
    G, n = G_OF[cell], B * H
    for bx, _, bd, tx in _threads(grid, block):
        for idx in range(bx * bd + tx, n, grid[0] * bd):
            b, j = divmod(idx, H)
            cell_forward(cell, a, t, b, j, lambda o, base=b * G * H + j: gh[base + o], H)


def emu_cublas_backward_step(cell, grid, block, args):
    gates, aux, h, c, dy, dh, dc, dgx, dgh, lengths, t, B, H, act = map(_flat, args)
    a = dict(gates=gates, aux=aux, h=h, c=c, dy=dy, dh=dh, dc=dc, dgx=dgx, dgh=dgh,
             lengths=lengths, B=B, H=H, act=act)
    for bx, _, bd, tx in _threads(grid, block):
        for idx in range(bx * bd + tx, B * H, grid[0] * bd):
            cell_backward(cell, a, t, *divmod(idx, H))


ROWS = 4  # FUSED_ROWS


def emu_fused_forward_step(cell, grid, block, args):
    R, gx, b_hn, h, c, gates, aux, y, lengths, t, B, H, act = map(_flat, args)
    a = dict(gx=gx, b_hn=b_hn, h=h, c=c, gates=gates, aux=aux, y=y, lengths=lengths, B=B, H=H,
             act=act)
    G = G_OF[cell]
    for bx, by, bd, tx in _threads(grid, block):
        j, b0 = bx * bd + tx, by * ROWS
        nb = min(ROWS, B - b0)
        if j >= H:
            continue
        hrow = (t * B + b0) * H
        acc = np.zeros((ROWS, G))
        for k in range(H):
            w = [R[k * G * H + g * H + j] for g in range(G)]
            for r in range(nb):
                for g in range(G):
                    acc[r, g] += h[hrow + r * H + k] * w[g]
        for r in range(nb):
            cell_forward(cell, a, t, b0 + r, j, lambda o, row=acc[r]: row[o], 1)


def emu_fused_backward_step(cell, grid, block, args):
    RT, gates, aux, h, c, dy, dh, dc, dgx, dgh, lengths, t, T_, B, H, act = map(_flat, args)
    a = dict(gates=gates, aux=aux, h=h, c=c, dy=dy, dh=dh, dc=dc, dgx=dgx, dgh=dgh,
             lengths=lengths, B=B, H=H, act=act)
    K = G_OF[cell] * H
    for bx, by, bd, tx in _threads(grid, block):
        j, b0 = bx * bd + tx, by * ROWS
        nb = min(ROWS, B - b0)
        if j >= H:
            continue
        if t + 1 < T_:
            grow = ((t + 1) * B + b0) * K
            for r in range(nb):
                dh[(b0 + r) * H + j] += sum(dgh[grow + r * K + k] * RT[k * H + j]
                                            for k in range(K))
        if t >= 0:
            for r in range(nb):
                cell_backward(cell, a, t, b0 + r, j)


EMULATORS = {"cublas_forward_step": emu_cublas_forward_step,
             "cublas_backward_step": emu_cublas_backward_step,
             "fused_forward_step": emu_fused_forward_step,
             "fused_backward_step": emu_fused_backward_step}


def _run_engine(dev, p, variant, with_dy=True):
    """Forward and backward of problem ``p`` through the engine on the stand-in."""
    from rnnkern._validate import check_forward
    from rnnkern.backends.cupy_cuda import engine

    cell = p.cell
    dev_arr = {k: None if v is None else np.ascontiguousarray(v).view(DevArray)
               for k, v in {**p.inputs, **p.params}.items()}
    d, lengths = check_forward(cell, p.inputs["x"], p.inputs.get("h0"), p.inputs.get("c0"),
                               p.params["W"], p.params["R"], p.params["b"],
                               p.params.get("b_hn"), lengths=p.lengths)
    d = d._replace(xp=dev.cp)
    y, cache = engine.forward(cell, d, lengths, dev_arr["x"], dev_arr.get("h0"),
                              dev_arr.get("c0"), dev_arr["W"], dev_arr["R"], dev_arr["b"],
                              dev_arr.get("b_hn"), activation=p.activation, variant=variant)
    g = {k: v.view(DevArray) for k, v in p.out_grads.items()}
    out = engine.backward(cache, g["dy"] if with_dy else None, g["dhT"], g.get("dcT"),
                          per_step=False, variant=variant)
    return y, cache, out


def _reference(p, with_dy=True):
    x, W, R, b = p.inputs["x"], p.params["W"], p.params["R"], p.params["b"]
    h0, c0 = p.inputs["h0"], p.inputs.get("c0")
    if p.cell == "lstm":
        y, _, cache = numpy_ref.lstm_forward(x, h0, c0, W, R, b, lengths=p.lengths)
        dstate = (p.out_grads["dhT"], p.out_grads["dcT"])
    elif p.cell == "gru":
        y, _, cache = numpy_ref.gru_forward(x, h0, W, R, b, p.params["b_hn"], lengths=p.lengths)
        dstate = p.out_grads["dhT"]
    else:
        y, _, cache = numpy_ref.rnn_forward(x, h0, W, R, b, activation=p.activation,
                                            lengths=p.lengths)
        dstate = p.out_grads["dhT"]
    back = getattr(numpy_ref, f"{p.cell}_backward")(p.out_grads["dy"] if with_dy else None,
                                                    dstate, cache)
    return y, cache, back


CASES = [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "identity"), ("lstm", "tanh"),
         ("gru", "tanh")]


@pytest.mark.parametrize("variant", ("cublas-steps", "fused-steps"))
@pytest.mark.parametrize("size", [(3, 6, 2, 7), (1, 1, 1, 1), (4, 5, 3, 33)],
                         ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("cell,activation", CASES)
def test_step_loops_match_oracle(fake_gpu, cell, activation, size, variant):
    """"cublas-steps" and "fused-steps" through the engine match numpy_ref, and the loops of
    "fused-steps" run as captured graphs with no cuBLAS call inside (the stand-in raises as
    CuPy 14 does)."""
    T, B, I, H = size
    p = make_problem(cell, activation=activation, T=T, B=B, I=I, H=H, lengths=B > 1,
                     seed=T + B + H)
    y, cache, (dx, dh0, dc0, grads, _) = _run_engine(fake_gpu, p, variant)
    y_ref, cache_ref, back = _reference(p)
    tol = dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y, y_ref, **tol)
    for k in ("h", "c", "gates", "a", "tanh_c", "hn"):
        if k in cache_ref:
            np.testing.assert_allclose(cache[k], cache_ref[k], **tol, err_msg=k)
    np.testing.assert_allclose(dx, back[0], **tol)
    np.testing.assert_allclose(dh0, back[1][0] if cell == "lstm" else back[1], **tol)
    if cell == "lstm":
        np.testing.assert_allclose(dc0, back[1][1], **tol)
    for k, v in back[2].items():
        np.testing.assert_allclose(grads[k], v, **tol, err_msg=k)
    captured = {name for name, cap in fake_gpu.launches if cap}
    if variant == "fused-steps":
        assert fake_gpu.captures == 2  # the forward loop and the backward loop
        assert captured == {"fused_forward_step", "fused_backward_step"}
        assert sum(1 for _ in fake_gpu.launches) == T + (T + 1)
    else:
        assert fake_gpu.captures == 0 and not captured


@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_fused_backward_without_output_gradient(fake_gpu, cell):
    p = make_problem(cell, T=4, B=5, I=2, H=6, lengths=True, seed=9)
    _, _, (dx, dh0, dc0, grads, _) = _run_engine(fake_gpu, p, "fused-steps", with_dy=False)
    _, _, back = _reference(p, with_dy=False)
    np.testing.assert_allclose(dx, back[0], rtol=1e-12, atol=1e-13)
    for k, v in back[2].items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-12, atol=1e-13, err_msg=k)


def test_capture_refuses_cublas(fake_gpu):
    """The stand-in's capture check is live: the loop of "cublas-steps" (cuBLAS per step) fails
    under capture, the way "fused-steps" failed on CuPy 14 when it captured that loop."""
    from rnnkern._validate import check_forward
    from rnnkern.backends.cupy_cuda import engine

    T, B, H = 2, 2, 3
    p = make_problem("rnn", T=T, B=B, I=1, H=H, seed=1)
    d, _ = check_forward("rnn", p.inputs["x"], None, None, p.params["W"], p.params["R"],
                         p.params["b"])
    z = fake_gpu.cp.zeros
    # R, gx, gh, b_hn, h, c, gates, aux, y, lengths
    arrays = (p.params["R"].view(DevArray), z((T, B, H)), z((B, H)), None, z((T + 1, B, H)),
              None, z((T, B, H)), None, z((T, B, H)), None)
    with pytest.raises(NotImplementedError, match="stream capture"):
        engine._graphed(("cublas-steps",),
                        lambda: engine.cublas_forward_steps("rnn", d, 0, *arrays))
    assert fake_gpu.capture is None  # the capture was ended all the same


def test_fused_replays_with_new_contents(fake_gpu):
    """A second call on the same buffers replays the captured graph, which reads the buffers'
    new contents; only one capture is made."""
    from rnnkern._validate import check_forward
    from rnnkern.backends.cupy_cuda import engine

    cell, (T, B, I, H) = "lstm", (3, 5, 2, 6)
    p = make_problem(cell, T=T, B=B, I=I, H=H, lengths=True, seed=30)
    d, _ = check_forward(cell, p.inputs["x"], None, None, p.params["W"], p.params["R"],
                         p.params["b"])
    z = fake_gpu.cp.zeros
    R, gx, h, c = z((H, 4 * H)), z((T, B, 4 * H)), z((T + 1, B, H)), z((T + 1, B, H))
    gates, aux, y = z((T, B, 4 * H)), z((T, B, H)), z((T, B, H))
    lens = fake_gpu.cp.ascontiguousarray(p.lengths, dtype=np.int32)
    for seed in (31, 32):
        q = make_problem(cell, T=T, B=B, I=I, H=H, seed=seed)
        R[...] = q.params["R"]
        gx[...] = q.inputs["x"] @ q.params["W"] + q.params["b"]
        h[0], c[0] = q.inputs["h0"], q.inputs["c0"]
        engine.run_graphed(engine.fused_forward_steps, cell, d, 0, R, gx, None, h, c, gates, aux,
                           y, lens)
        want = numpy_ref.lstm_forward(q.inputs["x"], q.inputs["h0"], q.inputs["c0"],
                                      q.params["W"], q.params["R"], q.params["b"],
                                      lengths=p.lengths)[0]
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-13)
    assert fake_gpu.captures == 1 and len(engine._GRAPHS) == 1
