// persistent.cu: the persistent kernels. One cooperative launch runs the whole time loop;
// every block owns a slice of hidden units, keeps its slice of R in shared memory for all
// steps and exchanges the states of each step with the other blocks through L2 behind a grid
// barrier.
#include "cells.cuh"

using rk::idx_t;

namespace rk {

constexpr int PERSISTENT_THREADS = 256;  // the loader's PERSISTENT_THREADS must match

__device__ __forceinline__ int round4(int n) { return (n + 3) & ~3; }

// Grid-wide barrier. The launch is cooperative, so every block is resident and spinning is
// safe. bar[0] counts arrivals; bar[1] is the generation that waiting blocks watch.
__device__ __forceinline__ void grid_barrier(unsigned int* bar) {
    __threadfence();  // publish this thread's global writes before the block arrives
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned int* gen = bar + 1;
        const unsigned int g = *gen;
        __threadfence();  // read the generation before arriving
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            while (*gen == g) __nanosleep(32);
        }
        __threadfence();
    }
    __syncthreads();
}

// Row stride of the staged rows As: one more than the padded row count BBP, odd, so that
// stage_rows' consecutive threads (consecutive k) hit distinct shared-memory banks (an
// even stride such as BBP = 64 would put a whole warp on one bank).
__device__ __forceinline__ int as_stride(int BBP) { return BBP + 1; }

// part[0] = As^T Ws on one block: As: (K, AS) staged rows (AS = as_stride(BBP)), Ws:
// (K, NCP) weight slice, both in shared memory. Each thread computes 4x4 outputs over one of
// KS slices of K; the slices are then summed pairwise as a tree (log2 KS rounds, all threads
// busy), in an order fixed by KS alone, so results do not depend on scheduling.
template <typename T>
__device__ void block_matmul(const T* As, const T* Ws, T* part, int K, int BBP, int NCP, int KS) {
    const int cgroups = NCP / 4, tasks = (BBP / 4) * cgroups, AS = as_stride(BBP);
    const int kc = (K + KS - 1) / KS;
    for (int w = threadIdx.x; w < tasks * KS; w += blockDim.x) {
        const int task = w % tasks, ks = w / tasks;
        const int r0 = (task / cgroups) * 4, c0 = (task % cgroups) * 4;
        T acc[4][4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[r][q] = T(0);
        const int k1 = min(K, (ks + 1) * kc);
        for (int k = ks * kc; k < k1; ++k) {
            T av[4], wv[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) av[r] = As[k * AS + r0 + r];
#pragma unroll
            for (int q = 0; q < 4; ++q) wv[q] = Ws[k * NCP + c0 + q];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[r][q] += av[r] * wv[q];
        }
        T* p = part + (idx_t)ks * BBP * NCP;
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int q = 0; q < 4; ++q) p[(r0 + r) * NCP + c0 + q] = acc[r][q];
    }
    __syncthreads();
    // tree: while m slices are left, slice s < m - half takes in slice s + half
    const int n = BBP * NCP;
    for (int m = KS; m > 1;) {
        const int half = (m + 1) / 2, pairs = (m - half) * n;
        for (int w = threadIdx.x; w < pairs; w += blockDim.x) part[w] += part[half * n + w];
        m = half;
        __syncthreads();
    }
}

// Stage rows b0 .. b0+nb of a (rows, K) global array, transposed, into As: (K, AS), zero
// past nb. Consecutive threads read consecutive k of a row (coalesced) and write at the odd
// stride AS (no bank conflict).
template <typename T>
__device__ void stage_rows(T* As, const T* src, int b0, int nb, int K, int BBP) {
    const int AS = as_stride(BBP);
    for (int idx = threadIdx.x; idx < BBP * K; idx += blockDim.x) {
        const int bb = idx / K, k = idx - bb * K;
        As[k * AS + bb] = bb < nb ? load_l2(src + (idx_t)(b0 + bb) * K + k) : T(0);
    }
    __syncthreads();
}

}  // namespace rk

// persistent forward: the whole sequence in one launch; block i owns units [i*HS, i*HS + HS)
// with all their gates, and R's columns for them stay in shared memory across steps.
template <typename T, int CELL>
__global__ void __launch_bounds__(rk::PERSISTENT_THREADS)
persistent_forward(const T* R, const T* gx, const T* b_hn, T* h, T* c, T* gates, T* aux, T* y,
                   const int* lengths, int T_, int B, int H, int act, int HS, int BB, int KS,
                   unsigned int* bar) {
    constexpr int G = rk::Cell<T, CELL>::G;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int K = H, NC = G * HS, NCP = rk::round4(NC), BBP = rk::round4(BB);
    T* Ws = reinterpret_cast<T*>(smem_raw);
    T* As = Ws + K * NCP;
    T* part = As + K * rk::as_stride(BBP);
    const int j0 = blockIdx.x * HS, nu = min(HS, H - j0);
    // column cc = g * HS + jj of the slice is column g * H + j0 + jj of R
    for (int idx = threadIdx.x; idx < K * NCP; idx += blockDim.x) {
        const int k = idx / NCP, cc = idx - k * NCP, g = cc / HS, jj = cc - g * HS;
        Ws[idx] = (cc < NC && jj < nu) ? R[(idx_t)k * G * H + g * H + j0 + jj] : T(0);
    }
    const rk::FwdArgs<T> a{gx, b_hn, h, c, gates, aux, y, lengths, B, H, act};
    for (int t = 0; t < T_; ++t) {
        for (int b0 = 0; b0 < B; b0 += BB) {
            const int nb = min(BB, B - b0);
            rk::stage_rows(As, h + (idx_t)t * B * H, b0, nb, K, BBP);
            rk::block_matmul(As, Ws, part, K, BBP, NCP, KS);
            for (int idx = threadIdx.x; idx < nb * nu; idx += blockDim.x) {
                const int bb = idx / nu, jj = idx - bb * nu;
                rk::Cell<T, CELL>::forward(a, t, b0 + bb, j0 + jj, part + bb * NCP + jj, HS);
            }
            __syncthreads();
        }
        rk::grid_barrier(bar);
    }
}

// persistent backward: the whole BPTT loop in one launch; block i owns units
// [i*HS, i*HS + HS) of dh and keeps rows j0 .. j0+HS of R (the matching columns of R.T) in
// shared memory.
template <typename T, int CELL>
__global__ void __launch_bounds__(rk::PERSISTENT_THREADS)
persistent_backward(const T* R, const T* gates, const T* aux, const T* h, const T* c,
                    const T* dy, T* dh, T* dc, T* dgx, T* dgh, const int* lengths, int T_,
                    int B, int H, int act, int HS, int BB, int KS, unsigned int* bar) {
    constexpr int G = rk::Cell<T, CELL>::G;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int K = G * H, NCP = rk::round4(HS), BBP = rk::round4(BB);
    T* Ws = reinterpret_cast<T*>(smem_raw);
    T* As = Ws + K * NCP;
    T* part = As + K * rk::as_stride(BBP);
    const int j0 = blockIdx.x * HS, nu = min(HS, H - j0);
    for (int idx = threadIdx.x; idx < K * NCP; idx += blockDim.x) {
        const int k = idx / NCP, cc = idx - k * NCP;
        Ws[idx] = cc < nu ? R[(idx_t)(j0 + cc) * K + k] : T(0);
    }
    const rk::BwdArgs<T> a{gates, aux, h, c, dy, dh, dc, dgx, dgh, lengths, B, H, act};
    for (int t = T_ - 1; t >= 0; --t) {
        for (int idx = threadIdx.x; idx < B * nu; idx += blockDim.x) {
            const int b = idx / nu, jj = idx - b * nu;
            rk::Cell<T, CELL>::backward(a, t, b, j0 + jj);
        }
        rk::grid_barrier(bar);  // dgh[t] of every unit is needed below
        for (int b0 = 0; b0 < B; b0 += BB) {
            const int nb = min(BB, B - b0);
            rk::stage_rows(As, dgh + (idx_t)t * B * K, b0, nb, K, BBP);
            rk::block_matmul(As, Ws, part, K, BBP, NCP, KS);
            for (int idx = threadIdx.x; idx < nb * nu; idx += blockDim.x) {
                const int bb = idx / nu, jj = idx - bb * nu;
                dh[(idx_t)(b0 + bb) * H + j0 + jj] += part[bb * NCP + jj];
            }
            __syncthreads();
        }
    }
}
