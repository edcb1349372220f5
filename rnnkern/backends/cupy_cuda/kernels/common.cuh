// common.cuh: math, activations and the variable-length rule shared by every rnnkern kernel.
//
// Every kernel file must compile under NVRTC (CuPy's RawModule) and under nvcc, so nothing
// here includes a system header: NVRTC provides the math functions and intrinsics built in.
#pragma once

namespace rk {

// Cell ids: the loader's CELL_IDS (loader.py) must use the same numbers.
enum CellId { RNN = 0, LSTM = 1, GRU = 2 };
// RNN activations: rnnkern._validate.ACTIVATION_CODES must use the same numbers.
enum Activation { ACT_TANH = 0, ACT_RELU = 1, ACT_IDENTITY = 2 };

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }
__device__ __forceinline__ float abs_(float v) { return fabsf(v); }
__device__ __forceinline__ double abs_(double v) { return fabs(v); }

// Two branches so that exp() never overflows for large |v| (as numpy_ref.sigmoid).
template <typename T>
__device__ __forceinline__ T sigmoid(T v) {
    const T e = exp_(-abs_(v));
    return v >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T>
__device__ __forceinline__ T activate(int act, T v) {
    if (act == ACT_TANH) return tanh_(v);
    if (act == ACT_RELU) return v < T(0) ? T(0) : v;  // a NaN passes, as in np.maximum
    return v;
}

// Derivative of an activation written in terms of its output a = f(v).
template <typename T>
__device__ __forceinline__ T activation_grad(int act, T a) {
    if (act == ACT_TANH) return T(1) - a * a;
    if (act == ACT_RELU) return a > T(0) ? T(1) : T(0);
    return T(1);
}

// Step t of row b lies inside its sequence; lengths == nullptr means every row is full.
__device__ __forceinline__ bool is_active(const int* lengths, int t, int b) {
    return lengths == nullptr || t < lengths[b];
}

// Load through L2 only: data written by other blocks of a persistent kernel must not be
// served from a stale L1 line.
template <typename T>
__device__ __forceinline__ T load_l2(const T* p) { return __ldcg(p); }

}  // namespace rk
