// GEMV for decoding (a few tokens): C[M, N] = A[M, K] . W[N, K]^T with M <= 4, bf16 in, f32 accumulate,
// the same epilogues as gemm.cu. One warp per output row (gated: the gate and the up row of one neuron),
// 16-byte loads of W streamed once; the activation rows stay in L1/L2. Memory-bound: judged in GB/s of W.
// Requires K % 8 == 0 and 16-byte aligned rows.
#include "common.cuh"

#define GEMV_MAX_M 4

__device__ __forceinline__ void dot8(const uint4& w, const uint4& a, float& acc) {
    const __nv_bfloat162* w2 = (const __nv_bfloat162*)&w;
    const __nv_bfloat162* a2 = (const __nv_bfloat162*)&a;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 wf = __bfloat1622float2(w2[i]);
        const float2 af = __bfloat1622float2(a2[i]);
        acc = fmaf(wf.x, af.x, acc);
        acc = fmaf(wf.y, af.y, acc);
    }
}

// acc[m] = A[m, :] . w0[:] (and, when TWO, up[m] = A[m, :] . w1[:] in the same pass), summed over the warp.
template <bool TWO>
__device__ __forceinline__ void row_dots(const bf16* A, long long lda, const bf16* w0, const bf16* w1, int M, int K,
                                         float* acc, float* up) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m) acc[m] = up[m] = 0.f;
#pragma unroll 4  // several 16-byte weight loads in flight per lane
    for (int k = lane * 8; k < K; k += 32 * 8) {
        const uint4 g = *(const uint4*)(w0 + k);
        uint4 u = g;
        if (TWO) u = *(const uint4*)(w1 + k);
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; ++m) {
            if (m < M) {
                const uint4 a = *(const uint4*)(A + m * lda + k);
                dot8(g, a, acc[m]);
                if (TWO) dot8(u, a, up[m]);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m) {
        acc[m] = warp_sum(acc[m]);
        if (TWO) up[m] = warp_sum(up[m]);
    }
}

extern "C" __global__ void __launch_bounds__(256)
gemv_bf16(const bf16* __restrict__ A, long long lda, const bf16* __restrict__ W, long long ldw, int M, int N, int K,
          Epilogue ep) {
    const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= N) return;
    const int lane = threadIdx.x & 31;
    float acc[GEMV_MAX_M], up[GEMV_MAX_M];
    if (ep.kind != EPI_GATED_BF16) {
        row_dots<false>(A, lda, W + (long long)n * ldw, nullptr, M, K, acc, up);
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; ++m)
            if (m < M && lane == m) epilogue_store(ep, m, n, acc[m]);
        return;
    }
    row_dots<true>(A, lda, W + (long long)n * ldw, W + (ep.gate_offset + n) * ldw, M, K, acc, up);
    float sq = 0.f;
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m) {
        if (m < M && lane == m) {
            const float v = epilogue_gated(ep, m, n, acc[m], up[m]);
            sq = v * v;
        }
    }
    sq = warp_sum(sq);  // the M tokens' squares, in a fixed order
    if (ep.sumsq && lane == 0) ep.sumsq[n] = sq;
}

REGISTER_KERNEL(gemv_bf16)
