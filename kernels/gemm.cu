// GEMM on tensor cores: C[M, N] = A[M, K] . W[N, K]^T (bf16 in, f32 accumulate), with a fused epilogue.
// A is the activation (row-major, K contiguous), W a weight in HF layout [out, in]. Block tile
// 128 x BN x 32 with 8 warps (2 x 4) of 64 x BN/4; operands go global -> shared by a 3-stage cp.async
// pipeline and shared -> registers by ldmatrix.x4, into mma.sync m16n8k16 (bf16, f32 accumulate).
// Two tile widths: BN = 128 (more blocks for small problems) and BN = 256 (64x64 warp tiles, fewer
// shared-memory loads per MMA, for large ones); the launcher picks one per shape.
// The epilogue works straight from the accumulator registers (the m16n8 layout: thread lane holds rows
// lane/4 and lane/4 + 8, columns 2*(lane%4) and +1 of each tile): bias, residual add, or gating.
// Gated mode: each warp's columns are its neurons' "gate" rows of W followed by the same neurons' "up"
// rows (ep.gate_offset further), so act(gate) * up and the per-neuron sum of squared activations
// (stage-1 statistics: a shuffle reduction, then one plain store per neuron and 64-row slab, reduced
// in a fixed order by accumulate_sqrt, so runs are bit-reproducible) need no extra pass.
// Requires K % 8 == 0 and 16-byte aligned rows. Measured: benches/cuda_kernels.rs (BENCHMARKS.md §6).
#include "common.cuh"

namespace {
template <int BN>
struct Tile {
    static constexpr int BM = 128, BK = 32, STAGES = 3, THREADS = 256;
    static constexpr int WT = BN / 4;   // warp tile width (columns)
    static constexpr int NT = WT / 8;   // m16n8 tiles across a warp
    static constexpr int LDS = BK + 8;  // padded shared row (bf16): ldmatrix rows hit distinct banks
    static constexpr int SMEM_BYTES = STAGES * (BM + BN) * LDS * 2;
};

template <int BN>
__device__ __forceinline__ void gemm_body(const bf16* __restrict__ A, long long lda, const bf16* __restrict__ W,
                                          long long ldw, int M, int N, int K, const Epilogue& ep) {
    using T = Tile<BN>;
    DYNAMIC_SHARED(unsigned char, smem);
    bf16* As = (bf16*)smem;
    bf16* Bs = As + T::STAGES * T::BM * T::LDS;

    const bool gated = ep.kind == EPI_GATED_BF16;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp >> 2, wn = warp & 3;
    const int m0 = blockIdx.y * T::BM;
    const int n0 = blockIdx.x * (gated ? BN / 2 : BN);  // first output column (gated: neuron)

    // The W row feeding shared row r of the B tile, or -1 when out of range.
    auto w_row = [&](int r) -> long long {
        if (!gated) return n0 + r < N ? n0 + r : -1;
        const int within = r % T::WT;
        const int neuron = n0 + (r / T::WT) * (T::WT / 2) + within % (T::WT / 2);
        if (neuron >= N) return -1;
        return within < T::WT / 2 ? neuron : ep.gate_offset + neuron;
    };

    auto load_tile = [&](int stage, int k0) {
        bf16* as = As + stage * T::BM * T::LDS;
        bf16* bs = Bs + stage * BN * T::LDS;
        for (int c = tid; c < T::BM * 4; c += T::THREADS) {  // 4 chunks of 8 per 32-wide row
            const int row = c >> 2, col = (c & 3) * 8, k = k0 + col;
            const bool ok = m0 + row < M && k < K;
            cp_async16(as + row * T::LDS + col, ok ? A + (long long)(m0 + row) * lda + k : A, ok ? 16 : 0);
        }
        for (int c = tid; c < BN * 4; c += T::THREADS) {
            const int row = c >> 2, col = (c & 3) * 8, k = k0 + col;
            const long long wr = w_row(row);
            const bool ok = wr >= 0 && k < K;
            cp_async16(bs + row * T::LDS + col, ok ? W + wr * ldw + k : W, ok ? 16 : 0);
        }
    };

    float acc[4][T::NT][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < T::NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // ldmatrix source rows of this lane: A 16x16 (matrices rows 0-7/8-15 x k 0-7/8-15) and a pair of
    // B n8 tiles (matrices n 0-7 k 0-7, n 0-7 k 8-15, n 8-15 k 0-7, n 8-15 k 8-15).
    const int a_row = wm * 64 + (lane & 15), a_col = (lane >> 4) * 8;
    const int b_row = wn * T::WT + (lane >> 4) * 8 + (lane & 7), b_col = ((lane >> 3) & 1) * 8;

    const int k_tiles = (K + T::BK - 1) / T::BK;
#pragma unroll
    for (int s = 0; s < T::STAGES - 1; ++s) {
        if (s < k_tiles) load_tile(s, s * T::BK);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<T::STAGES - 2>();
        __syncthreads();  // tile kt landed for everyone; tile kt-1's stage is free to refill
        const int next = kt + T::STAGES - 1;
        if (next < k_tiles) load_tile(next % T::STAGES, next * T::BK);
        cp_async_commit();

        const bf16* as = As + (kt % T::STAGES) * T::BM * T::LDS;
        const bf16* bs = Bs + (kt % T::STAGES) * BN * T::LDS;
#pragma unroll
        for (int kk = 0; kk < T::BK; kk += 16) {
            unsigned a[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) ldmatrix_x4(a[i], as + (a_row + i * 16) * T::LDS + kk + a_col);
#pragma unroll
            for (int jj = 0; jj < T::NT / 2; ++jj) {
                unsigned b[4];
                ldmatrix_x4(b, bs + (b_row + jj * 16) * T::LDS + kk + b_col);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    mma_16816(acc[i][2 * jj], a[i], b[0], b[1]);
                    mma_16816(acc[i][2 * jj + 1], a[i], b[2], b[3]);
                }
            }
        }
    }
    cp_async_wait<0>();

    const int g = lane >> 2, t = lane & 3;
    const int row_base = m0 + wm * 64 + g;
    if (!gated) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < T::NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int m = row_base + i * 16 + (e >> 1) * 8;
                    const int n = n0 + wn * T::WT + j * 8 + 2 * t + (e & 1);
                    if (m < M && n < N) epilogue_store(ep, m, n, acc[i][j][e]);
                }
        return;
    }
    constexpr int HJ = T::NT / 2;  // gate tiles per warp; up tile j + HJ holds the same neurons
#pragma unroll
    for (int j = 0; j < HJ; ++j) {
        float sq[2] = {0.f, 0.f};
        const int neuron0 = n0 + wn * (T::WT / 2) + j * 8 + 2 * t;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = row_base + i * 16 + (e >> 1) * 8, neuron = neuron0 + (e & 1);
                if (m < M && neuron < N) {
                    const float v = epilogue_gated(ep, m, neuron, acc[i][j][e], acc[i][j + HJ][e]);
                    sq[e & 1] += v * v;
                }
            }
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float s = sq[e];  // lanes with the same t hold the same two neurons: reduce over g
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            s += __shfl_xor_sync(0xffffffffu, s, 8);
            s += __shfl_xor_sync(0xffffffffu, s, 16);
            // One writer per (64-row slab, neuron): no atomics, so the statistics are deterministic.
            // Only slabs holding tokens have a row: ceil(M / 64) rows in all (sumsq_rows in kernels.rs).
            if (ep.sumsq && g == 0 && neuron0 + e < N && m0 + wm * 64 < M)
                ep.sumsq[(long long)(blockIdx.y * 2 + wm) * ep.sumsq_ld + neuron0 + e] = s;
        }
    }
}
}  // namespace

#define GEMM_ENTRY(BN)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
        gemm_bf16_##BN(const bf16* A, long long lda, const bf16* W, long long ldw, int M, int N, int K,          \
                       Epilogue ep) {                                                                           \
        gemm_body<BN>(A, lda, W, ldw, M, N, K, ep);                                                             \
    }                                                                                                           \
    REGISTER_KERNEL(gemm_bf16_##BN)
GEMM_ENTRY(128)
GEMM_ENTRY(256)

// Dynamic shared memory per tile width — mirrored in src/backend/cuda/kernels.rs (GEMM_TILES).
static_assert(Tile<128>::SMEM_BYTES == 61440, "update GEMM_TILES in kernels.rs");
static_assert(Tile<256>::SMEM_BYTES == 92160, "update GEMM_TILES in kernels.rs");
