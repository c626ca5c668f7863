// Causal grouped-query attention, flash-style (FlashAttention-2 layout): a block takes 64 queries of one
// head, 4 warps of 16 query rows; K/V tiles of 64 keys are double-buffered in shared memory by
// cp.async. S = Q K^T and O += P V run on tensor cores (ldmatrix + mma.sync m16n8k16, bf16 in, f32
// accumulate); the softmax is online and stays in registers: the S accumulators become P, repacked
// as bf16 A operands without touching shared memory, and O is rescaled in registers. No T x T matrix.
// Queries are the last T of the S cached positions (query t at position S - T + t); a key is visible
// when it is not in the future and, with window > 0, closer than `window` (sliding-window layers).
// Head dims 64 / 128 / 256 (one entry point each).
// Split-KV (decoding: few queries, long caches): with split_tiles > 0, block z of the grid's third
// dimension takes only key tiles [z * split_tiles, (z + 1) * split_tiles) and writes its unnormalised
// output with the running max and sum to `part`; attention_combine then merges the splits, so a few
// heads still spread over every SM.
#include "common.cuh"

namespace {
constexpr int QT = 64, KT = 64;

template <int HD>
struct Layout {
    static constexpr int LDH = HD + 8;         // padded bf16 row: ldmatrix rows hit distinct banks
    static constexpr int TILE = 64 * LDH;      // elements of one Q, K or V tile
    static constexpr int BYTES = 5 * TILE * 2; // Q, K x 2 buffers, V x 2 buffers
};

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(const unsigned*)&v;
}

// Starts copying 64 rows of HD bf16 (row r0 on, column col0 on) of a [*, ld] matrix into shared
// memory; rows at or beyond `limit` become zeros.
template <int HD>
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* src, long long ld, int col0, int r0, int limit) {
    constexpr int CHUNKS = HD / 8;
    for (int c = threadIdx.x; c < 64 * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool ok = r0 + r < limit;
        cp_async16(dst + r * Layout<HD>::LDH + col, ok ? src + (long long)(r0 + r) * ld + col0 + col : src,
                   ok ? 16 : 0);
    }
}

template <int HD>
__device__ __forceinline__ void attention_body(const bf16* __restrict__ q, long long ldq, const bf16* __restrict__ k,
                                               const bf16* __restrict__ v, long long ldkv, bf16* __restrict__ out,
                                               long long ldo, int T, int S, int group, float scale, int window,
                                               int split_tiles, float* __restrict__ part) {
    using L = Layout<HD>;
    constexpr int LDH = L::LDH;
    DYNAMIC_SHARED(unsigned char, smem);
    bf16* Qs = (bf16*)smem;
    bf16* Ks = Qs + L::TILE;      // two buffers
    bf16* Vs = Ks + 2 * L::TILE;  // two buffers

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int t0 = blockIdx.x * QT, head = blockIdx.y, kv_head = head / group;
    const int first_pos = S - T;  // position of query 0
    const int last_q = min(t0 + QT, T) - 1;
    const int key_end = first_pos + last_q + 1;  // keys [key_begin, key_end) can be visible to this tile
    const int key_begin = window > 0 ? max(0, first_pos + t0 - window + 1) : 0;
    const int tile_first = (key_begin / KT) * KT;
    const int all_tiles = (key_end - tile_first + KT - 1) / KT;
    const int it_begin = split_tiles > 0 ? blockIdx.z * split_tiles : 0;
    const int it_end = split_tiles > 0 ? min(all_tiles, it_begin + split_tiles) : all_tiles;

    load_rows<HD>(Qs, q, ldq, head * HD, t0, T);
    if (it_begin < it_end) {
        load_rows<HD>(Ks, k, ldkv, kv_head * HD, tile_first + it_begin * KT, S);
        load_rows<HD>(Vs, v, ldkv, kv_head * HD, tile_first + it_begin * KT, S);
    }
    cp_async_commit();

    float o[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[d][e] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
    const int q_row = t0 + warp * 16 + g;  // this lane's rows: q_row and q_row + 8

    for (int it = it_begin; it < it_end; ++it) {
        const int j0 = tile_first + it * KT, buf = (it - it_begin) & 1;
        const bf16* Kb = Ks + buf * L::TILE;
        const bf16* Vb = Vs + buf * L::TILE;
        if (it + 1 < it_end) {  // prefetch the next tile into the other buffer
            load_rows<HD>(Ks + (buf ^ 1) * L::TILE, k, ldkv, kv_head * HD, j0 + KT, S);
            load_rows<HD>(Vs + (buf ^ 1) * L::TILE, v, ldkv, kv_head * HD, j0 + KT, S);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        // S = Q K^T: 16 rows x 64 keys per warp, as 8 m16n8 tiles.
        float s[KT / 8][4];
#pragma unroll
        for (int j = 0; j < KT / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
        for (int kc = 0; kc < HD / 16; ++kc) {
            unsigned a[4];
            ldmatrix_x4(a, Qs + (warp * 16 + (lane & 15)) * LDH + kc * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int jj = 0; jj < KT / 16; ++jj) {
                unsigned b[4];
                ldmatrix_x4(b, Kb + (jj * 16 + (lane >> 4) * 8 + (lane & 7)) * LDH + kc * 16 + ((lane >> 3) & 1) * 8);
                mma_16816(s[2 * jj], a, b[0], b[1]);
                mma_16816(s[2 * jj + 1], a, b[2], b[3]);
            }
        }

        // Online softmax per row (lanes 4g..4g+3 share rows g and g + 8); P overwrites S.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = q_row + 8 * h, qpos = first_pos + row;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < KT / 8; ++j)
#pragma unroll
                for (int e = 2 * h; e < 2 * h + 2; ++e) {
                    const int kpos = j0 + j * 8 + 2 * t + (e & 1);
                    const bool visible = row < T && kpos < S && kpos <= qpos && (window <= 0 || qpos - kpos < window);
                    s[j][e] = visible ? s[j][e] * scale : -INFINITY;
                    mx = fmaxf(mx, s[j][e]);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(row_max[h], mx);
            const bool empty = m_new == -INFINITY;  // nothing visible to this row yet
            const float alpha = empty ? 1.f : __expf(row_max[h] - m_new);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < KT / 8; ++j)
#pragma unroll
                for (int e = 2 * h; e < 2 * h + 2; ++e) {
                    s[j][e] = empty ? 0.f : __expf(s[j][e] - m_new);
                    sum += s[j][e];
                }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            row_sum[h] = row_sum[h] * alpha + sum;
            row_max[h] = m_new;
#pragma unroll
            for (int d = 0; d < HD / 8; ++d) {
                o[d][2 * h] *= alpha;
                o[d][2 * h + 1] *= alpha;
            }
        }

        // O += P V: P's accumulator layout is the A operand layout, 16 keys at a time.
#pragma unroll
        for (int kc = 0; kc < KT / 16; ++kc) {
            const unsigned a[4] = {pack_bf16(s[2 * kc][0], s[2 * kc][1]), pack_bf16(s[2 * kc][2], s[2 * kc][3]),
                                   pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                   pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
            for (int dp = 0; dp < HD / 16; ++dp) {
                unsigned b[4];
                ldmatrix_x4_trans(b, Vb + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDH + dp * 16 + (lane >> 4) * 8);
                mma_16816(o[2 * dp], a, b[0], b[1]);
                mma_16816(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();  // this buffer is refilled by the next iteration's prefetch
    }
    cp_async_wait<0>();

    if (split_tiles > 0) {  // partial result: unnormalised O, running max and sum per row
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = q_row + 8 * h;
            if (row >= T) continue;
            float* dst = part + (((long long)blockIdx.z * T + row) * gridDim.y + head) * (HD + 2);
#pragma unroll
            for (int d = 0; d < HD / 8; ++d) {
                dst[d * 8 + 2 * t] = o[d][2 * h];
                dst[d * 8 + 2 * t + 1] = o[d][2 * h + 1];
            }
            if (t == 0) {
                dst[HD] = row_max[h];
                dst[HD + 1] = row_sum[h];
            }
        }
        return;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = q_row + 8 * h;
        if (row >= T) continue;
        const float inv = row_sum[h] > 0.f ? 1.f / row_sum[h] : 0.f;
        __nv_bfloat162* dst = (__nv_bfloat162*)(out + (long long)row * ldo + head * HD + 2 * t);
#pragma unroll
        for (int d = 0; d < HD / 8; ++d) dst[d * 4] = __floats2bfloat162_rn(o[d][2 * h] * inv, o[d][2 * h + 1] * inv);
    }
}
}  // namespace

#define ATTENTION_ENTRY(HD)                                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                                              \
        attention_hd##HD(const bf16* q, long long ldq, const bf16* k, const bf16* v, long long ldkv, bf16* out,    \
                         long long ldo, int T, int S, int group, float scale, int window, int split_tiles,          \
                         float* part) {                                                                            \
        attention_body<HD>(q, ldq, k, v, ldkv, out, ldo, T, S, group, scale, window, split_tiles, part);           \
    }                                                                                                              \
    REGISTER_KERNEL(attention_hd##HD)
ATTENTION_ENTRY(64)
ATTENTION_ENTRY(128)
ATTENTION_ENTRY(256)

// Merges split-KV partials: out[t, head] = sum_s exp(m_s - M) O_s / sum_s exp(m_s - M) l_s.
// Grid (T, heads), one thread per head dim element.
extern "C" __global__ void attention_combine(const float* __restrict__ part, int splits, int T, int hd,
                                             bf16* __restrict__ out, long long ldo) {
    const int row = blockIdx.x, head = blockIdx.y, d = threadIdx.x, heads = gridDim.y;
    if (d >= hd) return;
    auto at = [&](int s) { return part + (((long long)s * T + row) * heads + head) * (hd + 2); };
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, at(s)[hd]);
    float sum = 0.f, acc = 0.f;
    if (mx != -INFINITY) {
        for (int s = 0; s < splits; ++s) {
            const float w = __expf(at(s)[hd] - mx);  // 0 for splits that saw no visible key
            sum += at(s)[hd + 1] * w;
            acc += at(s)[d] * w;
        }
    }
    out[(long long)row * ldo + head * hd + d] = __float2bfloat16(sum > 0.f ? acc / sum : 0.f);
}
REGISTER_KERNEL(attention_combine)

// Dynamic shared memory for each head dim (bytes) — mirrored in src/backend/cuda/kernels.rs.
static_assert(Layout<64>::BYTES == 46080, "update ATTENTION_SMEM in kernels.rs");
static_assert(Layout<128>::BYTES == 87040, "update ATTENTION_SMEM in kernels.rs");
static_assert(Layout<256>::BYTES == 168960, "update ATTENTION_SMEM in kernels.rs");
