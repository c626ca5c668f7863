// RMSNorm kernels over the f32 residual stream (one block per row):
//   rmsnorm_bf16:  out_bf16[t] = x[t] / rms(x[t]) * (offset + w)      (pre-norm, feeds a GEMM)
//   add_rmsnorm:   x[t] += branch[t] / rms(branch[t]) * (offset + w)  (Gemma-3 post-norms, fused add)
// offset is 0, or 1 for Gemma's (1 + w) weights. Memory-bound.
#include "common.cuh"

__device__ __forceinline__ float inv_rms(const float* row, int d, float eps) {
    float s = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += row[i] * row[i];
    s = block_sum(s);
    return rsqrtf(s / d + eps);
}

extern "C" __global__ void rmsnorm_bf16(const float* __restrict__ x, const float* __restrict__ w, int T, int d,
                                        float offset, float eps, bf16* __restrict__ out) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const float* row = x + (long long)t * d;
    const float inv = inv_rms(row, d, eps);
    bf16* dst = out + (long long)t * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = __float2bfloat16(row[i] * inv * (offset + w[i]));
}

extern "C" __global__ void add_rmsnorm(float* __restrict__ x, const float* __restrict__ branch,
                                       const float* __restrict__ w, int T, int d, float offset, float eps) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const float* b = branch + (long long)t * d;
    const float inv = inv_rms(b, d, eps);
    float* dst = x + (long long)t * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] += b[i] * inv * (offset + w[i]);
}
