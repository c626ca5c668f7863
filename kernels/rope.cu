// Splits the fused q|k|v projection of each token into queries and the KV cache, applying the per-head
// RMSNorm of Qwen3/Gemma-3 when given and RoPE (half-split layout, the leading 2*n_freq dims of each head)
// from precomputed cos/sin tables [position, n_freq] (default, linear, llama3 and Gemma's local base are
// all just tables). Token t sits at position first + t; its k and v rows land in cache row first + t.
// One block per token, one warp per head; memory-bound.
#include "common.cuh"

#define ROPE_MAX_HEAD_DIM 256

extern "C" __global__ void qkv_rope(const bf16* __restrict__ qkv, int T, int n_heads, int n_kv_heads, int head_dim,
                                    int n_freq, const float* __restrict__ cos_table,
                                    const float* __restrict__ sin_table, const float* __restrict__ q_norm,
                                    const float* __restrict__ k_norm, float norm_offset, float eps, int first,
                                    bf16* __restrict__ q_out, bf16* __restrict__ k_cache, bf16* __restrict__ v_cache) {
    SHARED(float, buf, [32][ROPE_MAX_HEAD_DIM]);
    const int t = blockIdx.x;
    if (t >= T) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    const int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    const int pos = first + t;
    const bf16* src_row = qkv + (long long)t * (q_dim + 2 * kv_dim);
    float* h = buf[warp];
    for (int head = warp; head < n_heads + 2 * n_kv_heads; head += n_warps) {
        const bool is_q = head < n_heads, is_v = head >= n_heads + n_kv_heads;
        const bf16* src = src_row + head * head_dim;
        bf16* dst = is_q ? q_out + (long long)t * q_dim + head * head_dim
                 : is_v ? v_cache + (long long)pos * kv_dim + (head - n_heads - n_kv_heads) * head_dim
                        : k_cache + (long long)pos * kv_dim + (head - n_heads) * head_dim;
        if (is_v) {
            for (int i = lane; i < head_dim; i += 32) dst[i] = src[i];
            continue;
        }
        for (int i = lane; i < head_dim; i += 32) h[i] = __bfloat162float(src[i]);
        const float* norm = is_q ? q_norm : k_norm;
        float scale = 1.f;
        if (norm) {
            float s = 0.f;
            for (int i = lane; i < head_dim; i += 32) s += h[i] * h[i];
            scale = rsqrtf(warp_sum(s) / head_dim + eps);
        }
        __syncwarp();
        for (int i = lane; i < head_dim; i += 32) {
            const float w = norm ? norm_offset + norm[i] : 1.f;
            float v = h[i] * scale * w;
            if (i < 2 * n_freq) {
                const int f = i < n_freq ? i : i - n_freq;
                const int j = i < n_freq ? i + n_freq : i - n_freq;
                const float partner = h[j] * scale * (norm ? norm_offset + norm[j] : 1.f);
                const float c = cos_table[(long long)pos * n_freq + f], s = sin_table[(long long)pos * n_freq + f];
                v = i < n_freq ? v * c - partner * s : v * c + partner * s;
            }
            dst[i] = __float2bfloat16(v);
        }
        __syncwarp();
    }
}

REGISTER_KERNEL(qkv_rope)
