// Next-token NLL per row from f32 logits, without a probability matrix: one block per row reads the
// logits once, keeping a running (max, sum of exp(l - max)) per thread (online log-sum-exp), merges
// the pairs across the block, and writes nll = max + log(sum) - logit[target]. The final-logit soft
// cap is applied on the fly when cap > 0. The host sums rows in f64. Memory-bound: one read of the logits.
#include "common.cuh"

__device__ __forceinline__ float capped(float v, float cap) { return cap > 0.f ? tanhf(v / cap) * cap : v; }

// Merges (m, s) with (m2, s2): the log-sum-exp pair of the union.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return;  // both empty
    s = s * __expf(m - mx) + s2 * __expf(m2 - mx);
    m = mx;
}

extern "C" __global__ void row_nll(const float* __restrict__ logits, const unsigned* __restrict__ targets, int rows,
                                   int vocab, float cap, float* __restrict__ nll) {
    SHARED(float, part_m, [32]);
    SHARED(float, part_s, [32]);
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* row = logits + (long long)r * vocab;
    float m = -INFINITY, s = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = capped(row[i], cap);
        if (v > m) {
            s = s * __expf(m - v) + 1.f;
            m = v;
        } else if (v != -INFINITY) {  // -inf logits add nothing (and -inf - -inf would be NaN)
            s += __expf(v - m);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        part_m[warp] = m;
        part_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        const int n_warps = blockDim.x >> 5;
        m = lane < n_warps ? part_m[lane] : -INFINITY;
        s = lane < n_warps ? part_s[lane] : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
            lse_merge(m, s, m2, s2);
        }
        if (lane == 0) nll[r] = m + logf(s) - capped(row[targets[r]], cap);
    }
}

REGISTER_KERNEL(row_nll)
