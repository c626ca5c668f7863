// Embedding gather: out_f32[t, :] = table_bf16[ids[t], :] * scale (Gemma scales by sqrt(hidden)).
// One block per token, 8 elements (one 16-byte load) per thread step; hidden % 8 == 0. Memory-bound.
#include "common.cuh"

extern "C" __global__ void embed_gather(const unsigned* __restrict__ ids, const bf16* __restrict__ table, int T,
                                        int d, float scale, float* __restrict__ out) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const uint4* row = (const uint4*)(table + (long long)ids[t] * d);
    float4* dst = (float4*)(out + (long long)t * d);
    for (int i = threadIdx.x; i < d / 8; i += blockDim.x) {
        const uint4 v = row[i];
        const __nv_bfloat162* p = (const __nv_bfloat162*)&v;
        const float2 a = __bfloat1622float2(p[0]), b = __bfloat1622float2(p[1]);
        const float2 c = __bfloat1622float2(p[2]), e = __bfloat1622float2(p[3]);
        dst[2 * i] = make_float4(a.x * scale, a.y * scale, b.x * scale, b.y * scale);
        dst[2 * i + 1] = make_float4(c.x * scale, c.y * scale, e.x * scale, e.y * scale);
    }
}

REGISTER_KERNEL(embed_gather)
