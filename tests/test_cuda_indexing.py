"""EMULATION of the persistent (v2) kernels' index math in NumPy, no GPU needed.

This is not a kernel test: it transliterates persistent.cu's blocking and tiling (block i
owns units [i*HS, i*HS+HS); R's slice in ``Ws``; rows staged transposed in ``As``;
``block_matmul``'s 4x4 tasks over KS reduction slices; the cells' flat offsets ``gbase``,
``u``, ``un``, ``s``) onto flat NumPy arrays, looping over blocks and threads the way the
kernel does, and checks the result against numpy_ref. It catches index bugs in that
scheme; races, memory ordering and the barrier are out of its reach (one block runs a
phase at a time here, in the order the grid barrier enforces).
"""

import numpy as np
import pytest

from rnnkern.backends import numpy_ref
from rnnkern.backends.cupy_cuda.variants import DeviceLimits, plan_persistent
from rnnkern.gradcheck import make_problem

THREADS = 256  # V2_THREADS
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


def v2_forward(cell, a, R, T, B, H, plan):
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


def v2_backward(cell, a, R, T, B, H, plan):
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
    v2_forward(cell, a, R, T, B, H, fwd)
    np.testing.assert_allclose(a["y"].reshape(T, B, H), y_ref, atol=1e-12)
    np.testing.assert_allclose(a["h"].reshape(T + 1, B, H), cache["h"], atol=1e-12)

    dy, dhT = p.out_grads["dy"], p.out_grads["dhT"]
    dstate = (dhT, p.out_grads["dcT"]) if cell == "lstm" else dhT
    ref = getattr(numpy_ref, f"{cell}_backward")(dy, dstate, cache)
    a.update(dy=dy.ravel(), dh=dhT.ravel().copy(), dgx=np.zeros(T * B * G * H),
             dc=p.out_grads["dcT"].ravel().copy() if cell == "lstm" else None)
    a["dgh"] = np.zeros(T * B * G * H) if cell == "gru" else a["dgx"]
    v2_backward(cell, a, R, T, B, H, bwd)
    dh0_ref = ref[1][0] if cell == "lstm" else ref[1]
    np.testing.assert_allclose(a["dh"].reshape(B, H), dh0_ref, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(a["dc"].reshape(B, H), ref[1][1], atol=1e-12)
    dx = a["dgx"].reshape(T, B, G * H) @ W.T  # the weight gradients follow from dgx, dgh
    np.testing.assert_allclose(dx, ref[0], atol=1e-12)
    dR = cache["h"][:-1].reshape(T * B, H).T @ a["dgh"].reshape(T * B, G * H)
    np.testing.assert_allclose(dR, ref[2]["R"], atol=1e-12)
