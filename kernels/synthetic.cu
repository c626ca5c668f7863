// Synthetic weights generated on the device (no checkpoint needed to time a 7B shape):
//   fill_uniform_bf16: out[i] = scale * u(seed, i), u uniform in [-1, 1) from a counter-based hash
//   fill_f32:          out[i] = value
// Memory-bound.
#include "common.cuh"

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

extern "C" __global__ void fill_uniform_bf16(bf16* __restrict__ out, unsigned long long n, unsigned long long seed,
                                             float scale) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += stride) {
        const unsigned long long r = mix64(seed ^ mix64(i));
        const float u = (float)(r >> 40) * (1.0f / 8388608.0f) - 1.0f;  // 24 bits -> [-1, 1)
        out[i] = __float2bfloat16(u * scale);
    }
}

extern "C" __global__ void fill_f32(float* __restrict__ out, unsigned long long n, float value) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = value;
}

REGISTER_KERNEL(fill_uniform_bf16)
REGISTER_KERNEL(fill_f32)
