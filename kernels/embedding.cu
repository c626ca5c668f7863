// Embedding gather: out_f32[t, :] = table_bf16[ids[t], :] * scale (Gemma scales by sqrt(hidden)).
// Memory-bound; one block per token.
#include "common.cuh"

extern "C" __global__ void embed_gather(const unsigned* __restrict__ ids, const bf16* __restrict__ table, int T,
                                        int d, float scale, float* __restrict__ out) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const bf16* row = table + (long long)ids[t] * d;
    float* dst = out + (long long)t * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = __bfloat162float(row[i]) * scale;
}
