// Next-token NLL per row from f32 logits, without a probability matrix: one block per row computes the
// max, then sum(exp(l - max)) (final-logit soft cap applied on the fly when cap > 0), and writes
// nll = max + log(sum) - logit[target]. The host sums rows in f64. Memory-bound (one read of the logits
// per pass).
#include "common.cuh"

__device__ __forceinline__ float capped(float v, float cap) { return cap > 0.f ? tanhf(v / cap) * cap : v; }

extern "C" __global__ void row_nll(const float* __restrict__ logits, const unsigned* __restrict__ targets, int rows,
                                   int vocab, float cap, float* __restrict__ nll) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* row = logits + (long long)r * vocab;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, capped(row[i], cap));
    mx = block_max(mx);
    float s = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += __expf(capped(row[i], cap) - mx);
    s = block_sum(s);
    if (threadIdx.x == 0) nll[r] = mx + logf(s) - capped(row[targets[r]], cap);
}
