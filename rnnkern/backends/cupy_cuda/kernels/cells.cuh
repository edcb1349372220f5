// cells.cuh: the pointwise math of one hidden unit of one step, per cell, forward and backward.
//
// The kernel variants call these functions: cublas-steps (pointwise.cu) once per (row, unit)
// per step launch, fused-steps (fused.cu) after its recurrent product in each step launch,
// persistent (persistent.cu) inside its single launch. They mirror numpy_ref.py line by line;
// caches hold post-activation gates so every derivative is taken from an output.
#pragma once
#include "common.cuh"

namespace rk {

typedef long long idx_t;  // offsets into (T, B, G*H) arrays may pass 2^31

// Pointers of one forward pass; arrays are C-contiguous, time-major.
template <typename T>
struct FwdArgs {
    const T* gx;          // (T, B, G*H) input projection x @ W + b
    const T* b_hn;        // (H,) GRU: recurrent bias of the candidate; else nullptr
    T* h;                 // (T+1, B, H) states, h[t] enters step t
    T* c;                 // (T+1, B, H) LSTM cell states; else nullptr
    T* gates;             // (T, B, G*H) post-activation gates (RNN: the activation a)
    T* aux;               // (T, B, H) LSTM: tanh(c_t); GRU: h R_n + b_hn; RNN: nullptr
    T* y;                 // (T, B, H) outputs
    const int* lengths;   // (B,) true lengths, or nullptr
    int B, H, act;
};

// Pointers of one backward pass over a forward's cache.
template <typename T>
struct BwdArgs {
    const T* gates;       // (T, B, G*H) from the forward
    const T* aux;         // (T, B, H) from the forward
    const T* h;           // (T+1, B, H) from the forward
    const T* c;           // (T+1, B, H) LSTM; else nullptr
    const T* dy;          // (T, B, H) or nullptr (no gradient from the outputs)
    T* dh;                // (B, H) in: dL/dh[t+1]; out: the part that bypasses step t
    T* dc;                // (B, H) LSTM: in dL/dc[t+1], out dL/dc[t]; else nullptr
    T* dgx;               // (T, B, G*H) gradient of the input-side pre-activations
    T* dgh;               // (T, B, G*H) gradient of h @ R (differs from dgx only for GRU)
    const int* lengths;
    int B, H, act;
};

template <typename T, int CELL>
struct Cell;

// Elman RNN: h' = act(x W + h R + b)
template <typename T>
struct Cell<T, RNN> {
    static constexpr int G = 1;

    // hg: recurrent pre-activation of gate 0 of unit (b, j); gate k sits at hg[k * hs].
    __device__ static void forward(const FwdArgs<T>& a, int t, int b, int j, const T* hg, int hs) {
        const idx_t u = ((idx_t)t * a.B + b) * a.H + j;
        const idx_t un = u + (idx_t)a.B * a.H;
        const T v = activate(a.act, a.gx[u] + hg[0]);
        const bool on = is_active(a.lengths, t, b);
        a.gates[u] = v;
        a.h[un] = on ? v : a.h[u];
        a.y[u] = on ? v : T(0);
    }

    __device__ static void backward(const BwdArgs<T>& a, int t, int b, int j) {
        const idx_t s = (idx_t)b * a.H + j;
        const idx_t u = (idx_t)t * a.B * a.H + s;
        const bool on = is_active(a.lengths, t, b);
        const T dh = a.dh[s];
        const T dh_new = on ? (a.dy ? a.dy[u] : T(0)) + dh : T(0);
        a.dgx[u] = dh_new * activation_grad(a.act, a.gates[u]);
        a.dh[s] = on ? T(0) : dh;
    }
};

// LSTM, gates (i, f, g, o): c' = f c + i g, h' = o tanh(c')
template <typename T>
struct Cell<T, LSTM> {
    static constexpr int G = 4;

    __device__ static void forward(const FwdArgs<T>& a, int t, int b, int j, const T* hg, int hs) {
        const int H = a.H;
        const idx_t gbase = ((idx_t)t * a.B + b) * 4 * H + j;
        const idx_t u = ((idx_t)t * a.B + b) * H + j;
        const idx_t un = u + (idx_t)a.B * H;
        const T i = sigmoid(a.gx[gbase] + hg[0]);
        const T f = sigmoid(a.gx[gbase + H] + hg[hs]);
        const T g = tanh_(a.gx[gbase + 2 * H] + hg[2 * hs]);
        const T o = sigmoid(a.gx[gbase + 3 * H] + hg[3 * hs]);
        a.gates[gbase] = i;
        a.gates[gbase + H] = f;
        a.gates[gbase + 2 * H] = g;
        a.gates[gbase + 3 * H] = o;
        const T c_prev = a.c[u];
        const T c_new = f * c_prev + i * g;
        const T tc = tanh_(c_new);
        const T h_new = o * tc;
        const bool on = is_active(a.lengths, t, b);
        a.aux[u] = tc;
        a.c[un] = on ? c_new : c_prev;
        a.h[un] = on ? h_new : a.h[u];
        a.y[u] = on ? h_new : T(0);
    }

    __device__ static void backward(const BwdArgs<T>& a, int t, int b, int j) {
        const int H = a.H;
        const idx_t s = (idx_t)b * H + j;
        const idx_t u = (idx_t)t * a.B * H + s;
        const idx_t gbase = ((idx_t)t * a.B + b) * 4 * H + j;
        const T i = a.gates[gbase], f = a.gates[gbase + H];
        const T g = a.gates[gbase + 2 * H], o = a.gates[gbase + 3 * H];
        const T tc = a.aux[u];
        const bool on = is_active(a.lengths, t, b);
        const T dh = a.dh[s], dc = a.dc[s];
        const T dh_new = on ? (a.dy ? a.dy[u] : T(0)) + dh : T(0);
        const T dc_new = (on ? dc : T(0)) + dh_new * o * (T(1) - tc * tc);
        a.dgx[gbase] = dc_new * g * i * (T(1) - i);
        a.dgx[gbase + H] = dc_new * a.c[u] * f * (T(1) - f);
        a.dgx[gbase + 2 * H] = dc_new * i * (T(1) - g * g);
        a.dgx[gbase + 3 * H] = dh_new * tc * o * (T(1) - o);
        a.dc[s] = on ? dc_new * f : dc;
        a.dh[s] = on ? T(0) : dh;
    }
};

// GRU, gates (r, z, n), PyTorch's form: n = tanh(x W_n + b_n + r (h R_n + b_hn)),
// h' = (1 - z) n + z h
template <typename T>
struct Cell<T, GRU> {
    static constexpr int G = 3;

    __device__ static void forward(const FwdArgs<T>& a, int t, int b, int j, const T* hg, int hs) {
        const int H = a.H;
        const idx_t gbase = ((idx_t)t * a.B + b) * 3 * H + j;
        const idx_t u = ((idx_t)t * a.B + b) * H + j;
        const idx_t un = u + (idx_t)a.B * H;
        const T r = sigmoid(a.gx[gbase] + hg[0]);
        const T z = sigmoid(a.gx[gbase + H] + hg[hs]);
        const T hn = hg[2 * hs] + a.b_hn[j];
        const T n = tanh_(a.gx[gbase + 2 * H] + r * hn);
        a.gates[gbase] = r;
        a.gates[gbase + H] = z;
        a.gates[gbase + 2 * H] = n;
        a.aux[u] = hn;
        const T h_prev = a.h[u];
        const T h_new = (T(1) - z) * n + z * h_prev;
        const bool on = is_active(a.lengths, t, b);
        a.h[un] = on ? h_new : h_prev;
        a.y[u] = on ? h_new : T(0);
    }

    __device__ static void backward(const BwdArgs<T>& a, int t, int b, int j) {
        const int H = a.H;
        const idx_t s = (idx_t)b * H + j;
        const idx_t u = (idx_t)t * a.B * H + s;
        const idx_t gbase = ((idx_t)t * a.B + b) * 3 * H + j;
        const T r = a.gates[gbase], z = a.gates[gbase + H], n = a.gates[gbase + 2 * H];
        const bool on = is_active(a.lengths, t, b);
        const T dh = a.dh[s];
        const T dh_new = on ? (a.dy ? a.dy[u] : T(0)) + dh : T(0);
        const T dn = dh_new * (T(1) - z) * (T(1) - n * n);
        const T dr = dn * a.aux[u] * r * (T(1) - r);
        const T dz = dh_new * (a.h[u] - n) * z * (T(1) - z);
        a.dgx[gbase] = dr;
        a.dgx[gbase + H] = dz;
        a.dgx[gbase + 2 * H] = dn;
        a.dgh[gbase] = dr;
        a.dgh[gbase + H] = dz;
        a.dgh[gbase + 2 * H] = dn * r;
        a.dh[s] = on ? dh_new * z : dh;
    }
};

}  // namespace rk
