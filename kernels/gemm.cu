// GEMM on tensor cores: C[M, N] = A[M, K] . W[N, K]^T (bf16 in, f32 accumulate), with a fused epilogue.
// A is the activation (row-major, K contiguous), W a weight in HF layout [out, in]. Block tile 128x128x32,
// 8 warps of 64x32 (WMMA 16x16x16), a 3-stage cp.async pipeline; the f32 tile is staged in shared
// memory so any epilogue (bias, residual add, SwiGLU/GeGLU gating with per-neuron L2 statistics) sees
// whole rows. Gated mode: the block's 128 columns are 64 "gate" rows of W and the matching 64 "up" rows
// (ep.gate_offset further), so one block produces 64 activations. Requires K % 8 == 0 and 16-byte
// aligned rows (lda, ldw % 8 == 0). Measured: benches/cuda_kernels.rs (BENCHMARKS.md).
#include "common.cuh"
#include <mma.h>
using namespace nvcuda;

namespace {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256;
constexpr int LDS = BK + 8;   // padded smem row (bf16 elements)
constexpr int LDC = BN + 4;   // padded f32 staging row
constexpr int PIPE_BYTES = STAGES * (BM + BN) * LDS * 2;
constexpr int STAGE_BYTES = BM * LDC * 4;
// Dynamic shared memory: max(PIPE_BYTES, STAGE_BYTES) = 67584 bytes (mirrored in src/backend/cuda/kernels.rs).
static_assert(STAGE_BYTES == 67584 && PIPE_BYTES <= STAGE_BYTES, "update GEMM_SMEM_BYTES in kernels.rs");
}  // namespace

extern "C" __global__ void __launch_bounds__(THREADS)
gemm_bf16(const bf16* __restrict__ A, long long lda, const bf16* __restrict__ W, long long ldw, int M, int N, int K,
          Epilogue ep) {
    extern __shared__ __align__(128) unsigned char smem[];
    bf16* As = (bf16*)smem;
    bf16* Bs = As + STAGES * BM * LDS;
    float* Cs = (float*)smem;

    const bool gated = ep.kind == EPI_GATED_BF16;
    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * (gated ? BN / 2 : BN);

    // Which W row feeds smem row r of the B tile, or -1 when out of range.
    auto w_row = [&](int r) -> long long {
        if (!gated) return n0 + r < N ? n0 + r : -1;
        const int neuron = n0 + (r & (BN / 2 - 1));
        if (neuron >= N) return -1;
        return r < BN / 2 ? neuron : ep.gate_offset + neuron;
    };

    auto load_tile = [&](int stage, int k0) {
        bf16* as = As + stage * BM * LDS;
        bf16* bs = Bs + stage * BN * LDS;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int chunk = tid + i * THREADS;  // 512 chunks of 8 elements per operand
            const int row = chunk >> 2, col = (chunk & 3) * 8;
            const int k = k0 + col;
            const bool a_ok = m0 + row < M && k < K;
            cp_async16(as + row * LDS + col, a_ok ? A + (long long)(m0 + row) * lda + k : A, a_ok ? 16 : 0);
            const long long wr = w_row(row);
            const bool b_ok = wr >= 0 && k < K;
            cp_async16(bs + row * LDS + col, b_ok ? W + wr * ldw + k : W, b_ok ? 16 : 0);
        }
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    const int k_tiles = (K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < k_tiles) load_tile(s, s * BK);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < k_tiles) load_tile(next % STAGES, next * BK);
        cp_async_commit();

        const bf16* as = As + (kt % STAGES) * BM * LDS;
        const bf16* bs = Bs + (kt % STAGES) * BN * LDS;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[4];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 4; ++i) wmma::load_matrix_sync(a[i], as + (wm * 64 + i * 16) * LDS + kk, LDS);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], bs + (wn * 32 + j * 16) * LDS + kk, LDS);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline buffers become the f32 staging tile

#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(Cs + (wm * 64 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC,
                                    wmma::mem_row_major);
    __syncthreads();

    if (!gated) {
        for (int idx = tid; idx < BM * BN; idx += THREADS) {
            const int r = idx / BN, c = idx % BN;
            if (m0 + r < M && n0 + c < N) epilogue_store(ep, m0 + r, n0 + c, Cs[r * LDC + c]);
        }
        return;
    }
    constexpr int HALF = BN / 2;
    for (int idx = tid; idx < BM * HALF; idx += THREADS) {
        const int r = idx / HALF, c = idx % HALF;
        float v = 0.f;
        if (m0 + r < M && n0 + c < N) v = epilogue_gated(ep, m0 + r, n0 + c, Cs[r * LDC + c], Cs[r * LDC + HALF + c]);
        Cs[r * LDC + c] = v;  // only this thread reads this element: safe to overwrite
    }
    if (ep.sumsq == nullptr) return;
    __syncthreads();
    if (tid < HALF && n0 + tid < N) {
        float s = 0.f;
        for (int r = 0; r < BM; ++r) s += Cs[r * LDC + tid] * Cs[r * LDC + tid];
        atomicAdd(ep.sumsq + n0 + tid, s);
    }
}
