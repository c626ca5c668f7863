// Causal grouped-query attention, flash-style: for each (64-query tile, head) block, K/V tiles of 64 keys
// stream through shared memory; scores S = Q K^T and O += P V run on tensor cores (WMMA bf16, f32
// accumulate) and the softmax is online (running max and sum per row), so no T x T matrix exists.
// Queries are the last T of the S cached positions (query t at position S - T + t); a key is visible when
// it is not in the future and, with window > 0, closer than `window` (sliding-window layers).
// Head dims 64 / 128 / 256 (one entry point each). 4 warps, 16 query rows each.
#include "common.cuh"
#include <mma.h>
using namespace nvcuda;

namespace {
constexpr int QT = 64, KT = 64, WARPS = 4, LDSF = KT + 4, LDP = KT + 8;

template <int HD>
struct Smem {
    static constexpr int LDH = HD + 8;  // bf16 rows of Q, K, V
    static constexpr int LDO = HD + 4;  // f32 rows of the output accumulator
    static constexpr int Q = 0;
    static constexpr int K = Q + QT * LDH * 2;
    static constexpr int V = K + KT * LDH * 2;
    static constexpr int S = V + KT * LDH * 2;
    static constexpr int P = S + WARPS * 16 * LDSF * 4;
    static constexpr int O = P + WARPS * 16 * LDP * 2;
    static constexpr int STATS = O + WARPS * 16 * LDO * 4;
    static constexpr int BYTES = STATS + 3 * QT * 4;  // running max, running sum, rescale factor
};

// Loads `rows` rows of HD bf16 starting at row r0 of a [*, ld] matrix (col offset col0) into smem;
// rows at or beyond `limit` become zeros.
template <int HD>
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* src, long long ld, int col0, int r0, int limit) {
    constexpr int CHUNKS = HD / 8;
    for (int c = threadIdx.x; c < 64 * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool ok = r0 + r < limit;
        cp_async16(dst + r * Smem<HD>::LDH + col, ok ? src + (long long)(r0 + r) * ld + col0 + col : src, ok ? 16 : 0);
    }
}

template <int HD>
__device__ __forceinline__ void attention_body(const bf16* __restrict__ q, long long ldq, const bf16* __restrict__ k,
                                               const bf16* __restrict__ v, long long ldkv, bf16* __restrict__ out,
                                               long long ldo, int T, int S, int group, float scale, int window) {
    using L = Smem<HD>;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16* Qs = (bf16*)(smem + L::Q);
    bf16* Ks = (bf16*)(smem + L::K);
    bf16* Vs = (bf16*)(smem + L::V);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* Sw = (float*)(smem + L::S) + warp * 16 * LDSF;
    bf16* Pw = (bf16*)(smem + L::P) + warp * 16 * LDP;
    float* Ow = (float*)(smem + L::O) + warp * 16 * L::LDO;
    float* row_max = (float*)(smem + L::STATS) + warp * 16;
    float* row_sum = row_max + QT;
    float* row_scale = row_sum + QT;

    const int t0 = blockIdx.x * QT, head = blockIdx.y, kv_head = head / group;
    const int first_pos = S - T;  // position of query 0
    load_rows<HD>(Qs, q, ldq, head * HD, t0, T);
    cp_async_commit();
    for (int i = lane; i < 16 * L::LDO; i += 32) Ow[i] = 0.f;
    if (lane < 16) {
        row_max[lane] = -INFINITY;
        row_sum[lane] = 0.f;
    }

    const int last_q = min(t0 + QT, T) - 1;
    const int key_end = first_pos + last_q + 1;  // keys [key_begin, key_end) can be visible to this tile
    const int key_begin = window > 0 ? max(0, first_pos + t0 - window + 1) : 0;
    for (int j0 = (key_begin / KT) * KT; j0 < key_end; j0 += KT) {
        __syncthreads();  // previous tile fully consumed
        load_rows<HD>(Ks, k, ldkv, kv_head * HD, j0, S);
        load_rows<HD>(Vs, v, ldkv, kv_head * HD, j0, S);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        // S = Q K^T for this warp's 16 rows.
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_acc[KT / 16];
#pragma unroll
        for (int j = 0; j < KT / 16; ++j) wmma::fill_fragment(s_acc[j], 0.f);
#pragma unroll
        for (int kk = 0; kk < HD; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
            wmma::load_matrix_sync(a, Qs + warp * 16 * L::LDH + kk, L::LDH);
#pragma unroll
            for (int j = 0; j < KT / 16; ++j) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
                wmma::load_matrix_sync(b, Ks + j * 16 * L::LDH + kk, L::LDH);
                wmma::mma_sync(s_acc[j], a, b, s_acc[j]);
            }
        }
#pragma unroll
        for (int j = 0; j < KT / 16; ++j) wmma::store_matrix_sync(Sw + j * 16, s_acc[j], LDSF, wmma::mem_row_major);
        __syncwarp();

        // Online softmax, one row at a time across the warp (each lane owns keys lane and lane + 32).
        for (int r = 0; r < 16; ++r) {
            const int t = t0 + warp * 16 + r;
            const int qpos = first_pos + t;
            float sv[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int c = lane + 32 * h, kpos = j0 + c;
                const bool visible = t < T && kpos < S && kpos <= qpos && (window <= 0 || qpos - kpos < window);
                sv[h] = visible ? Sw[r * LDSF + c] * scale : -INFINITY;
            }
            const float m_old = row_max[r];
            const float m_new = fmaxf(m_old, warp_max(fmaxf(sv[0], sv[1])));
            float p[2], alpha;
            if (m_new == -INFINITY) {  // nothing visible yet in this row
                p[0] = p[1] = 0.f;
                alpha = 1.f;
            } else {
                p[0] = __expf(sv[0] - m_new);
                p[1] = __expf(sv[1] - m_new);
                alpha = __expf(m_old - m_new);
            }
            Pw[r * LDP + lane] = __float2bfloat16(p[0]);
            Pw[r * LDP + lane + 32] = __float2bfloat16(p[1]);
            const float sum = warp_sum(p[0] + p[1]);
            __syncwarp();
            if (lane == 0) {
                row_max[r] = m_new;
                row_sum[r] = row_sum[r] * alpha + sum;
                row_scale[r] = alpha;
            }
            __syncwarp();
        }

        // O = O * alpha + P V.
        for (int i = lane; i < 16 * HD; i += 32) Ow[(i / HD) * L::LDO + i % HD] *= row_scale[i / HD];
        __syncwarp();
#pragma unroll
        for (int d = 0; d < HD; d += 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_acc;
            wmma::load_matrix_sync(o_acc, Ow + d, L::LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < KT; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
                wmma::load_matrix_sync(a, Pw + kk, LDP);
                wmma::load_matrix_sync(b, Vs + kk * L::LDH + d, L::LDH);
                wmma::mma_sync(o_acc, a, b, o_acc);
            }
            wmma::store_matrix_sync(Ow + d, o_acc, L::LDO, wmma::mem_row_major);
        }
        __syncwarp();
    }

    for (int i = lane; i < 16 * HD; i += 32) {
        const int r = i / HD, d = i % HD, t = t0 + warp * 16 + r;
        if (t >= T) continue;
        const float l = row_sum[r];
        out[(long long)t * ldo + head * HD + d] = __float2bfloat16(l > 0.f ? Ow[r * L::LDO + d] / l : 0.f);
    }
}
}  // namespace

#define ATTENTION_ENTRY(HD)                                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                                              \
        attention_hd##HD(const bf16* q, long long ldq, const bf16* k, const bf16* v, long long ldkv, bf16* out,    \
                         long long ldo, int T, int S, int group, float scale, int window) {                        \
        attention_body<HD>(q, ldq, k, v, ldkv, out, ldo, T, S, group, scale, window);                              \
    }
ATTENTION_ENTRY(64)
ATTENTION_ENTRY(128)
ATTENTION_ENTRY(256)

// Dynamic shared memory for each head dim (bytes) — mirrored in src/backend/cuda/kernels.rs.
static_assert(Smem<64>::BYTES == 72448, "update ATTENTION_SMEM in kernels.rs");
static_assert(Smem<128>::BYTES == 113408, "update ATTENTION_SMEM in kernels.rs");
static_assert(Smem<256>::BYTES == 195328, "update ATTENTION_SMEM in kernels.rs");
