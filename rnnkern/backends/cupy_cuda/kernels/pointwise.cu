// pointwise.cu: cublas-steps kernels. cuBLAS does every GEMM; these are the one fused
// pointwise launch per step (gates, state update, output, lengths masking) that sits between
// them.
#include "cells.cuh"

using rk::idx_t;

// cublas-steps forward, step t: every (row, unit) from gx[t] + gh, where
// gh: (B, G*H) = h[t] @ R.
template <typename T, int CELL>
__global__ void cublas_forward_step(const T* gx, const T* gh, const T* b_hn, T* h, T* c,
                                    T* gates, T* aux, T* y, const int* lengths, int t, int B,
                                    int H, int act) {
    constexpr int G = rk::Cell<T, CELL>::G;
    const rk::FwdArgs<T> a{gx, b_hn, h, c, gates, aux, y, lengths, B, H, act};
    const int n = B * H;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
        const int b = idx / H, j = idx - b * H;
        rk::Cell<T, CELL>::forward(a, t, b, j, gh + (idx_t)b * G * H + j, H);
    }
}

// cublas-steps backward, step t: gate gradients of every (row, unit) and the carried state
// gradients; the host then adds dgh[t] @ R.T into dh with one GEMM.
template <typename T, int CELL>
__global__ void cublas_backward_step(const T* gates, const T* aux, const T* h, const T* c,
                                     const T* dy, T* dh, T* dc, T* dgx, T* dgh,
                                     const int* lengths, int t, int B, int H, int act) {
    const rk::BwdArgs<T> a{gates, aux, h, c, dy, dh, dc, dgx, dgh, lengths, B, H, act};
    const int n = B * H;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
        const int b = idx / H, j = idx - b * H;
        rk::Cell<T, CELL>::backward(a, t, b, j);
    }
}
