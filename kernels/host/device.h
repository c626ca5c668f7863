// The CUDA device language for a host (CPU) build of kernels/*.cu: compiled with -DTWOSSP_HOST by
// build.rs under the `cuda-host` feature. Every CUDA thread runs as a fiber of the block it belongs
// to (kernels/host/runtime.cpp); barriers, warp shuffles and the warp-collective PTX instructions
// (ldmatrix, mma.sync) are rendezvous points of those fibers, so their semantics are exact. The PTX
// instructions are implemented from the PTX ISA's definitions; see kernels/host/README.md.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------ keywords and built-in types
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned x, y, z;
};
typedef uint3 dim3;
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// bf16 as cuda_bf16.h defines it: the upper 16 bits of an f32, rounded to nearest even.
struct __nv_bfloat16 {
    unsigned short bits;
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(unsigned short)((u >> 16) | 0x40u)};  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(unsigned short)(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = (uint32_t)h.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16(lo), __float2bfloat16(hi)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }

// --------------------------------------------------------------------------- math intrinsics
inline float __expf(float x) { return expf(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
using std::max;
using std::min;

// ---------------------------------------------------------------------------- the runtime
namespace twossp_host {
extern thread_local uint3 t_thread_idx, t_block_idx, t_block_dim, t_grid_dim;

void syncthreads();
void syncwarp(unsigned mask);
uint32_t shfl_xor(unsigned mask, uint32_t bits, int lane_mask);
void* static_shared(const void* key, size_t bytes, size_t align);
void* dynamic_shared();
void cp_async(void* smem, const void* gmem, int src_bytes);
void cp_async_commit();
void cp_async_wait(int groups);
void ldmatrix_x4(unsigned (&r)[4], const void* smem, bool trans);
void mma_m16n8k16_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);

/// How a launch hands over one argument: a plain value, a pointer the kernel only reads, a pointer it
/// may write, or a struct (scanned for device addresses it may write through).
enum ArgKind : unsigned char { ARG_VALUE, ARG_CONST_PTR, ARG_PTR, ARG_STRUCT };

/// One registered entry point: its name, a type-erased caller taking the argument addresses
/// (cudaLaunchKernel's convention), and each parameter's size and kind (checked at every launch).
struct KernelInfo {
    const char* name;
    void (*call)(void* const* args);
    int n_args;
    const size_t* sizes;
    const ArgKind* kinds;
};
void register_kernel(const KernelInfo* info);

template <typename P>
constexpr ArgKind kind_of() {
    if constexpr (std::is_pointer_v<P>)
        return std::is_const_v<std::remove_pointer_t<P>> ? ARG_CONST_PTR : ARG_PTR;
    else if constexpr (std::is_class_v<P>)
        return ARG_STRUCT;
    else
        return ARG_VALUE;
}

/// Registers a kernel at static-initialisation time (REGISTER_KERNEL below).
template <auto F, typename... P>
struct Registration {
    static constexpr size_t sizes[sizeof...(P) + 1] = {sizeof(P)..., 0};
    static constexpr ArgKind kinds[sizeof...(P) + 1] = {kind_of<P>()..., ARG_VALUE};
    template <size_t... I>
    static void call_with(void* const* args, std::index_sequence<I...>) {
        F(*static_cast<std::remove_cv_t<P>*>(args[I])...);
    }
    static void call(void* const* args) { call_with(args, std::index_sequence_for<P...>{}); }
    explicit Registration(const char* name) {
        static const KernelInfo info{name, &call, (int)sizeof...(P), sizes, kinds};
        register_kernel(&info);
    }
};
template <auto F, typename... P>
Registration<F, P...> registration_of(void (*)(P...), const char* name) {
    return Registration<F, P...>(name);
}
}  // namespace twossp_host

#define threadIdx (::twossp_host::t_thread_idx)
#define blockIdx (::twossp_host::t_block_idx)
#define blockDim (::twossp_host::t_block_dim)
#define gridDim (::twossp_host::t_grid_dim)

inline void __syncthreads() { twossp_host::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { twossp_host::syncwarp(mask); }
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bits = twossp_host::shfl_xor(mask, bits, lane_mask);
    std::memcpy(&v, &bits, 4);
    return v;
}

// Shared memory, as the SHARED / DYNAMIC_SHARED macros of common.cuh declare it: per block, poisoned
// (all bits set: NaN as f32 and bf16) when the block starts.
#define TWOSSP_SHARED(type, name, dims)                                                                     \
    typedef type name##_shared_type dims;                                                                   \
    static const char name##_shared_key = 0;                                                                \
    name##_shared_type& name = *static_cast<name##_shared_type*>(                                           \
        ::twossp_host::static_shared(&name##_shared_key, sizeof(name##_shared_type), alignof(name##_shared_type)))
#define TWOSSP_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::twossp_host::dynamic_shared())

// The PTX instructions of common.cuh, with the same signatures as its inline-asm versions.
inline void cp_async16(void* smem, const void* gmem, int src_bytes) { twossp_host::cp_async(smem, gmem, src_bytes); }
inline void cp_async_commit() { twossp_host::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
    twossp_host::cp_async_wait(N);
}
inline void ldmatrix_x4(unsigned (&r)[4], const __nv_bfloat16* p) { twossp_host::ldmatrix_x4(r, p, false); }
inline void ldmatrix_x4_trans(unsigned (&r)[4], const __nv_bfloat16* p) { twossp_host::ldmatrix_x4(r, p, true); }
inline void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    twossp_host::mma_m16n8k16_bf16(c, a, b0, b1);
}

#define TWOSSP_REGISTER_KERNEL(name)                                                                         \
    static const auto twossp_registration_##name = ::twossp_host::registration_of<&name>(&name, #name);
