// RMSNorm kernels over the f32 residual stream (one block per row, float4 accesses; hidden % 4 == 0):
//   rmsnorm_bf16:  out_bf16[t] = x[t] / rms(x[t]) * (offset + w)      (pre-norm, feeds a GEMM)
//   add_rmsnorm:   x[t] += branch[t] / rms(branch[t]) * (offset + w)  (Gemma-3 post-norms, fused add)
// offset is 0, or 1 for Gemma's (1 + w) weights. The row is read twice; the second read hits L1/L2.
// Memory-bound.
#include "common.cuh"

__device__ __forceinline__ float inv_rms(const float4* row, int d4, float eps) {
    float s = 0.f;
    for (int i = threadIdx.x; i < d4; i += blockDim.x) {
        const float4 v = row[i];
        s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    s = block_sum(s);
    return rsqrtf(s / (4 * d4) + eps);
}

extern "C" __global__ void rmsnorm_bf16(const float* __restrict__ x, const float* __restrict__ w, int T, int d,
                                        float offset, float eps, bf16* __restrict__ out) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const int d4 = d / 4;
    const float4* row = (const float4*)(x + (long long)t * d);
    const float4* w4 = (const float4*)w;
    const float inv = inv_rms(row, d4, eps);
    __nv_bfloat162* dst = (__nv_bfloat162*)(out + (long long)t * d);
    for (int i = threadIdx.x; i < d4; i += blockDim.x) {
        const float4 v = row[i], g = w4[i];
        dst[2 * i] = __floats2bfloat162_rn(v.x * inv * (offset + g.x), v.y * inv * (offset + g.y));
        dst[2 * i + 1] = __floats2bfloat162_rn(v.z * inv * (offset + g.z), v.w * inv * (offset + g.w));
    }
}

extern "C" __global__ void add_rmsnorm(float* __restrict__ x, const float* __restrict__ branch,
                                       const float* __restrict__ w, int T, int d, float offset, float eps) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const int d4 = d / 4;
    const float4* b = (const float4*)(branch + (long long)t * d);
    const float4* w4 = (const float4*)w;
    const float inv = inv_rms(b, d4, eps);
    float4* dst = (float4*)(x + (long long)t * d);
    for (int i = threadIdx.x; i < d4; i += blockDim.x) {
        const float4 v = b[i], g = w4[i];
        float4 o = dst[i];
        o.x += v.x * inv * (offset + g.x);
        o.y += v.y * inv * (offset + g.y);
        o.z += v.z * inv * (offset + g.z);
        o.w += v.w * inv * (offset + g.w);
        dst[i] = o;
    }
}

REGISTER_KERNEL(rmsnorm_bf16)
REGISTER_KERNEL(add_rmsnorm)
