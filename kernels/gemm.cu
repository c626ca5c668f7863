// GEMM on tensor cores: C[M, N] = A[M, K] . W[N, K]^T (bf16 in, f32 accumulate), with a fused epilogue.
// A is the activation (row-major, K contiguous), W a weight in HF layout [out, in]. Block tile
// 128 x BN x 32 with 8 warps (2 x 4) of 64 x BN/4, WMMA 16x16x16 fragments, a 3-stage cp.async
// pipeline. Two tile widths: BN = 128 (more blocks for small problems) and BN = 256 (64x64 warp tiles,
// fewer shared-memory loads per MMA, for large ones); the launcher picks one per shape.
// The epilogue runs per warp from a small shared-memory scratch tile: bias, residual add, or gating.
// Gated mode: each warp's columns are its neurons' "gate" rows of W followed by the same neurons'
// "up" rows (ep.gate_offset further), so act(gate) * up and the per-neuron sum of squared activations
// (stage-1 statistics, one atomicAdd per neuron and warp row) are computed without another pass.
// Requires K % 8 == 0 and 16-byte aligned rows. Measured: benches/cuda_kernels.rs (BENCHMARKS.md §6).
#include "common.cuh"
#include <mma.h>
using namespace nvcuda;

namespace {
template <int BN>
struct Tile {
    static constexpr int BM = 128, BK = 32, STAGES = 3, THREADS = 256;
    static constexpr int WT = BN / 4;   // warp tile width (columns)
    static constexpr int JF = WT / 16;  // 16-column fragments per warp
    static constexpr int LDS = BK + 8;  // padded shared row (bf16): conflict-free fragment loads
    static constexpr int SLD = 20;      // padded row of a 16x16 f32 scratch tile
    static constexpr int PIPE_BYTES = STAGES * (BM + BN) * LDS * 2;
    static constexpr int SCRATCH_BYTES = 8 * 2 * 16 * SLD * 4;  // two tiles per warp
    static constexpr int SMEM_BYTES = PIPE_BYTES + SCRATCH_BYTES;
};

template <int BN>
__device__ __forceinline__ void gemm_body(const bf16* __restrict__ A, long long lda, const bf16* __restrict__ W,
                                          long long ldw, int M, int N, int K, const Epilogue& ep) {
    using T = Tile<BN>;
    extern __shared__ __align__(128) unsigned char smem[];
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

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][T::JF];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < T::JF; ++j) wmma::fill_fragment(acc[i][j], 0.f);

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

        const bf16* as = As + (kt % T::STAGES) * T::BM * T::LDS + wm * 64 * T::LDS;
        const bf16* bs = Bs + (kt % T::STAGES) * BN * T::LDS + wn * T::WT * T::LDS;
#pragma unroll
        for (int kk = 0; kk < T::BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) wmma::load_matrix_sync(a[i], as + i * 16 * T::LDS + kk, T::LDS);
#pragma unroll
            for (int j = 0; j < T::JF; ++j) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
                wmma::load_matrix_sync(b, bs + j * 16 * T::LDS + kk, T::LDS);
#pragma unroll
                for (int i = 0; i < 4; ++i) wmma::mma_sync(acc[i][j], a[i], b, acc[i][j]);
            }
        }
    }
    cp_async_wait<0>();

    // Epilogue, one 16x16 fragment (gated: a gate/up pair) at a time through the warp's scratch.
    float* scratch = (float*)(smem + T::PIPE_BYTES) + warp * 2 * 16 * T::SLD;
    const int row_base = m0 + wm * 64;
    if (!gated) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < T::JF; ++j) {
                wmma::store_matrix_sync(scratch, acc[i][j], T::SLD, wmma::mem_row_major);
                __syncwarp();
                const int col0 = n0 + wn * T::WT + j * 16;
                for (int e = lane; e < 256; e += 32) {
                    const int r = e >> 4, c = e & 15, m = row_base + i * 16 + r, n = col0 + c;
                    if (m < M && n < N) epilogue_store(ep, m, n, scratch[r * T::SLD + c]);
                }
                __syncwarp();
            }
        return;
    }
    constexpr int HJ = T::JF / 2;  // gate fragments per warp (the up fragments follow)
    const int c = lane & 15;
#pragma unroll
    for (int j = 0; j < HJ; ++j) {
        const int neuron = n0 + wn * (T::WT / 2) + j * 16 + c;
        float sq = 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            wmma::store_matrix_sync(scratch, acc[i][j], T::SLD, wmma::mem_row_major);
            wmma::store_matrix_sync(scratch + 16 * T::SLD, acc[i][j + HJ], T::SLD, wmma::mem_row_major);
            __syncwarp();
            for (int r = lane >> 4; r < 16; r += 2) {
                const int m = row_base + i * 16 + r;
                if (m < M && neuron < N) {
                    const float v = epilogue_gated(ep, m, neuron, scratch[r * T::SLD + c], scratch[(16 + r) * T::SLD + c]);
                    sq += v * v;
                }
            }
            __syncwarp();
        }
        sq += __shfl_down_sync(0xffffffffu, sq, 16);
        if (ep.sumsq && lane < 16 && neuron < N) atomicAdd(ep.sumsq + neuron, sq);
    }
}
}  // namespace

#define GEMM_ENTRY(BN)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
        gemm_bf16_##BN(const bf16* A, long long lda, const bf16* W, long long ldw, int M, int N, int K,          \
                       Epilogue ep) {                                                                           \
        gemm_body<BN>(A, lda, W, ldw, M, N, K, ep);                                                             \
    }
GEMM_ENTRY(128)
GEMM_ENTRY(256)

// Dynamic shared memory per tile width — mirrored in src/backend/cuda/kernels.rs (GEMM_TILES).
static_assert(Tile<128>::SMEM_BYTES == 81920, "update GEMM_TILES in kernels.rs");
static_assert(Tile<256>::SMEM_BYTES == 112640, "update GEMM_TILES in kernels.rs");
