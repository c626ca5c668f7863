// Pruning helpers on device buffers:
//   gather_rows_bf16: dst[i, :] = src[idx[i], :]     (compacts gate/up projections to the kept neurons)
//   gather_cols_bf16: dst[r, i] = src[r, idx[i]]     (compacts the down projection)
//   accumulate_sqrt:  scores[j] += sqrt(sum_r partial[r, j])      (stage 1: per-sample L2 norm, summed;
//                     the GEMM's per-slab partial sums reduced in a fixed order)
// Memory-bound.
#include "common.cuh"

extern "C" __global__ void gather_rows_bf16(const bf16* __restrict__ src, long long ld_src, const int* __restrict__ idx,
                                            int n_idx, int cols, bf16* __restrict__ dst, long long ld_dst) {
    const int i = blockIdx.x;
    if (i >= n_idx) return;
    const bf16* s = src + (long long)idx[i] * ld_src;
    bf16* d = dst + (long long)i * ld_dst;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}

extern "C" __global__ void gather_cols_bf16(const bf16* __restrict__ src, long long ld_src, const int* __restrict__ idx,
                                            int n_idx, int rows, bf16* __restrict__ dst, long long ld_dst) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const bf16* s = src + (long long)r * ld_src;
    bf16* d = dst + (long long)r * ld_dst;
    for (int i = threadIdx.x; i < n_idx; i += blockDim.x) d[i] = s[idx[i]];
}

extern "C" __global__ void accumulate_sqrt(const float* __restrict__ partial, int rows, long long ld,
                                           double* __restrict__ scores, int n) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    double s = 0.0;
    for (int r = 0; r < rows; ++r) s += partial[(long long)r * ld + j];
    scores[j] += sqrt(s);
}

REGISTER_KERNEL(gather_rows_bf16)
REGISTER_KERNEL(gather_cols_bf16)
REGISTER_KERNEL(accumulate_sqrt)
