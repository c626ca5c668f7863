// Shared helpers of the twossp-engine kernels: bf16 conversion, warp/block reductions, cp.async,
// tensor-core fragment loads and MMAs, and the GEMM/GEMV epilogue (what happens to each accumulated
// output element).
#pragma once
#ifdef TWOSSP_HOST
#include "host/device.h"  // the host build (`cuda-host` feature): CUDA and its PTX emulated on the CPU
#else
#include <cuda_bf16.h>
#endif
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// Shared memory and kernel entry points, declared the same way for both builds:
//   SHARED(float, partial, [32])   is  __shared__ float partial[32]
//   DYNAMIC_SHARED(T, smem)        is  extern __shared__ __align__(128) T smem[]
//   REGISTER_KERNEL(name)          makes an extern "C" __global__ entry point launchable by name on the
//                                  host build (nothing on the GPU, where the module exports it)
#ifdef TWOSSP_HOST
#define SHARED(type, name, dims) TWOSSP_SHARED(type, name, dims)
#define DYNAMIC_SHARED(type, name) TWOSSP_DYNAMIC_SHARED(type, name)
#define REGISTER_KERNEL(name) TWOSSP_REGISTER_KERNEL(name)
#else
#define SHARED(type, name, dims) __shared__ type name dims
#define DYNAMIC_SHARED(type, name) extern __shared__ __align__(128) type name[]
#define REGISTER_KERNEL(name)
#endif

// Epilogue kinds; the numbers are mirrored in src/backend/cuda/kernels.rs.
#define EPI_STORE_F32 0   // out_f32[m, n] = acc + bias
#define EPI_STORE_BF16 1  // out_bf16[m, n] = acc + bias
#define EPI_ADD_F32 2     // out_f32[m, n] += acc + bias  (residual add)
#define EPI_GATED_BF16 3  // out_bf16[m, n] = act(gate + bias) * (up + bias); optional sums of value^2

#define ACT_SILU 0
#define ACT_GELU_TANH 1

// What a GEMM/GEMV does with its f32 accumulators (passed by value; layout mirrored in Rust).
struct Epilogue {
    int kind;               // EPI_*
    int act;                // ACT_* (gated only)
    const float* bias;      // per weight row, or null
    void* out;              // f32 or bf16 output
    long long ldo;          // output row stride (elements)
    float* sumsq;           // gated only: per-neuron sums of squared activations, or null; one row
                            // per 64-token slab (GEMM) or a single row (GEMV), written, never added
    long long gate_offset;  // gated only: weight row of neuron 0's "up" projection
    long long sumsq_ld;     // row stride of sumsq
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    SHARED(float, partial, [32]);
    SHARED(float, total, );
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // partial[] may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.f;
        w = warp_sum(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}

// The PTX instructions the kernels use, as named device functions; the host build provides the same
// functions (kernels/host/device.h), implemented from the PTX ISA's definitions.
#ifndef TWOSSP_HOST
// 16-byte global -> shared copy; bytes beyond `src_bytes` (0 or 16) are zero-filled.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
    unsigned addr = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Tensor-core fragments (PTX m16n8k16, bf16 in, f32 accumulate). ldmatrix.x4 loads four 8x8 bf16
// matrices whose row addresses come from lanes 0-7, 8-15, 16-23, 24-31; lane l receives row l/4,
// columns 2*(l%4) and +1 of each (transposed with .trans). mma_16816: c += a . b with a 16x16 (row)
// and b 16x8 (col); c holds rows l/4 and l/4 + 8, columns 2*(l%4) and +1.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const bf16* p) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const bf16* p) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
#endif

__device__ __forceinline__ float activation(int act, float g) {
    if (act == ACT_SILU) return g / (1.f + __expf(-g));
    const float k = 0.7978845608f;  // sqrt(2/pi)
    return 0.5f * g * (1.f + tanhf(k * (g + 0.044715f * g * g * g)));
}

// Applies a non-gated epilogue to output element (m, n).
__device__ __forceinline__ void epilogue_store(const Epilogue& e, int m, int n, float v) {
    if (e.bias) v += e.bias[n];
    const long long i = (long long)m * e.ldo + n;
    if (e.kind == EPI_STORE_F32) {
        ((float*)e.out)[i] = v;
    } else if (e.kind == EPI_STORE_BF16) {
        ((bf16*)e.out)[i] = __float2bfloat16(v);
    } else {
        ((float*)e.out)[i] += v;
    }
}

// Applies the gated epilogue to neuron n of token m; returns the activation (for the L2 statistics).
__device__ __forceinline__ float epilogue_gated(const Epilogue& e, int m, int n, float gate, float up) {
    if (e.bias) {
        gate += e.bias[n];
        up += e.bias[e.gate_offset + n];
    }
    const float v = activation(e.act, gate) * up;
    ((bf16*)e.out)[(long long)m * e.ldo + n] = __float2bfloat16(v);
    return v;
}
