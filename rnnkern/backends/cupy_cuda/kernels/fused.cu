// fused.cu: fused-steps kernels. One launch per step does the recurrent product and the
// pointwise step together, with no library call, so that the whole time loop can be captured
// in a CUDA graph (cuBLAS calls cannot be captured through CuPy). Meant for the small shapes
// where launch overhead, not the product, dominates a step.
//
// Block (x, y) runs hidden units j = x * blockDim.x + threadIdx.x for the FUSED_ROWS batch
// rows b = y * FUSED_ROWS + r: every weight it loads serves all of those rows, and the state
// rows it reads are the same address across the block (broadcast loads).
#include "cells.cuh"

using rk::idx_t;

namespace rk {

constexpr int FUSED_ROWS = 4;  // the loader's FUSED_ROWS must match

}  // namespace rk

// fused-steps forward, step t: gh[b, g*H + j] = sum_k h[t][b, k] R[k, g*H + j] in registers,
// then the cell's pointwise step of (b, j).
template <typename T, int CELL>
__global__ void fused_forward_step(const T* R, const T* gx, const T* b_hn, T* h, T* c,
                                   T* gates, T* aux, T* y, const int* lengths, int t, int B,
                                   int H, int act) {
    constexpr int G = rk::Cell<T, CELL>::G, ROWS = rk::FUSED_ROWS;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int b0 = blockIdx.y * ROWS, nb = min(ROWS, B - b0);
    if (j >= H) return;
    const T* hrow = h + ((idx_t)t * B + b0) * H;
    T acc[ROWS][G];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int g = 0; g < G; ++g) acc[r][g] = T(0);
    for (int k = 0; k < H; ++k) {
        T w[G];
#pragma unroll
        for (int g = 0; g < G; ++g) w[g] = R[(idx_t)k * G * H + g * H + j];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if (r < nb) {
                const T hv = hrow[(idx_t)r * H + k];
#pragma unroll
                for (int g = 0; g < G; ++g) acc[r][g] += hv * w[g];
            }
        }
    }
    const rk::FwdArgs<T> a{gx, b_hn, h, c, gates, aux, y, lengths, B, H, act};
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        if (r < nb) rk::Cell<T, CELL>::forward(a, t, b0 + r, j, acc[r], 1);
}

// fused-steps backward, launched for t = T-1 down to 0 and once more with t = -1: first
// dh[b, j] += sum_k dgh[t+1][b, k] RT[k, j] (RT: (G*H, H) = R.T, so that the loads are
// coalesced over j) when step t+1 exists, then the cell's pointwise backward of step t when
// t >= 0. Each thread owns dh[b, j] of its rows, so the product and the step need no sync.
template <typename T, int CELL>
__global__ void fused_backward_step(const T* RT, const T* gates, const T* aux, const T* h,
                                    const T* c, const T* dy, T* dh, T* dc, T* dgx, T* dgh,
                                    const int* lengths, int t, int T_, int B, int H, int act) {
    constexpr int G = rk::Cell<T, CELL>::G, ROWS = rk::FUSED_ROWS;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int b0 = blockIdx.y * ROWS, nb = min(ROWS, B - b0);
    if (j >= H) return;
    if (t + 1 < T_) {
        const int K = G * H;
        const T* grow = dgh + ((idx_t)(t + 1) * B + b0) * K;
        T acc[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[r] = T(0);
        for (int k = 0; k < K; ++k) {
            const T w = RT[(idx_t)k * H + j];
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                if (r < nb) acc[r] += grow[(idx_t)r * K + k] * w;
        }
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
            if (r < nb) dh[(idx_t)(b0 + r) * H + j] += acc[r];
    }
    if (t < 0) return;
    const rk::BwdArgs<T> a{gates, aux, h, c, dy, dh, dc, dgx, dgh, lengths, B, H, act};
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        if (r < nb) rk::Cell<T, CELL>::backward(a, t, b0 + r, j);
}
