// The host runtime of the `cuda-host` build: runs a kernel launch on the CPU, each block on one OS
// thread, each CUDA thread of the block as a fiber. A fiber runs until it reaches a rendezvous point
// (__syncthreads, a warp shuffle, __syncwarp, ldmatrix, mma.sync); when every thread of the block (or
// every lane of the warp) has arrived, the scheduler performs the collective and resumes them. It also
// checks what a GPU would punish: out-of-bounds and misaligned accesses, shared memory read before
// anything was written to it or before its cp.async landed (poisoned), races between threads (every
// launch runs under several thread schedules whose results must be bit-identical), and launches an
// H200 would refuse. The C ABI at the bottom is what src/backend/cuda/host_runtime.rs calls.
#include "device.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

namespace twossp_host {

thread_local uint3 t_thread_idx, t_block_idx, t_block_dim, t_grid_dim;

// ------------------------------------------------------------------------- limits of an H200
constexpr unsigned MAX_THREADS = 1024;
constexpr unsigned MAX_BLOCK_Z = 64;
constexpr unsigned MAX_GRID_YZ = 65535;
constexpr size_t MAX_STATIC_SHARED = 48 * 1024;
constexpr size_t MAX_SHARED = 227 * 1024;  // static + dynamic per block (opt-in limit)

constexpr size_t PAGE = 4096;
constexpr size_t FIBER_STACK = 256 * 1024;
constexpr size_t SIGNAL_STACK = 64 * 1024;
constexpr unsigned char POISON = 0xff;  // all bits set: a NaN as f32 and as bf16

// --------------------------------------------------------------------------------- registry
std::vector<const KernelInfo*>& kernels() {
    static std::vector<const KernelInfo*> list;
    return list;
}
void register_kernel(const KernelInfo* info) { kernels().push_back(info); }

// ------------------------------------------------------------------------- device allocations
// Each allocation sits between two inaccessible pages, its end 16 bytes from the upper one; the
// bytes between the pages and the data (red zones) hold the poison and are checked after every
// launch, so near out-of-bounds writes are reported and near reads produce NaN; far ones fault.
struct Allocation {
    unsigned char* map;  // the whole mapping, guard pages included
    size_t map_bytes;
    unsigned char* data;
    size_t bytes;
    unsigned char* zone_begin;  // first byte after the lower guard page
    unsigned char* zone_end;    // first byte of the upper guard page
};

std::shared_mutex g_alloc_mutex;
std::map<uintptr_t, Allocation> g_allocs;  // by data address

const Allocation* find_allocation(const void* p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    const Allocation& al = it->second;
    if (a < (uintptr_t)al.data || a + bytes > (uintptr_t)al.data + al.bytes) return nullptr;
    return &al;
}

// The allocation whose mapping (guard pages included) holds p, or null.
const Allocation* mapping_of(const void* p) {
    for (auto& [_, al] : g_allocs)
        if ((uintptr_t)p >= (uintptr_t)al.map && (uintptr_t)p < (uintptr_t)al.map + al.map_bytes) return &al;
    return nullptr;
}

// ------------------------------------------------------------------------------------ fibers
extern "C" void twossp_fiber_switch(void** save_sp, void* new_sp);
extern "C" void twossp_fiber_entry();
asm(R"(
    .text
    .globl twossp_fiber_switch
    .type twossp_fiber_switch, @function
twossp_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size twossp_fiber_switch, .-twossp_fiber_switch

    .globl twossp_fiber_entry
    .type twossp_fiber_entry, @function
twossp_fiber_entry:
    movq %r12, %rdi
    call twossp_fiber_main@PLT
    ud2
    .size twossp_fiber_entry, .-twossp_fiber_entry
)");

enum class State : unsigned char { Ready, Barrier, Warp, Done };
enum class Op : unsigned char { Shfl, SyncWarp, Ldmatrix, LdmatrixTrans, Mma };
const char* op_name(Op op) {
    switch (op) {
        case Op::Shfl: return "__shfl_xor_sync";
        case Op::SyncWarp: return "__syncwarp";
        case Op::Ldmatrix: return "ldmatrix.x4";
        case Op::LdmatrixTrans: return "ldmatrix.x4.trans";
        default: return "mma.sync.m16n8k16";
    }
}

struct Copy {
    void* dst;
    const void* src;
    int bytes;
};

struct Fiber {
    uint3 idx;
    void* sp;
    unsigned char* stack_top;
    State state;
    Op op;
    uint32_t in[10];
    const void* addr;
    uint32_t out[4];
    std::vector<Copy> uncommitted;
    std::vector<std::vector<Copy>> groups;  // committed, oldest first
};

// Everything one OS thread needs to run blocks: fiber stacks, the shared-memory arena, a signal stack.
struct Worker {
    std::vector<Fiber> fibers;
    std::vector<unsigned char*> stacks;  // each FIBER_STACK bytes above a guard page
    unsigned char* arena;                // guard | static region | dynamic region | guard
    unsigned char* static_base;
    unsigned char* dynamic_end;
    void* signal_stack;

    Worker() {
        const size_t bytes = PAGE + MAX_STATIC_SHARED + MAX_SHARED + PAGE;
        arena = (unsigned char*)mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (arena == MAP_FAILED) abort();
        mprotect(arena, PAGE, PROT_NONE);
        mprotect(arena + bytes - PAGE, PAGE, PROT_NONE);
        static_base = arena + PAGE;
        dynamic_end = arena + bytes - PAGE;
        signal_stack = malloc(SIGNAL_STACK);
    }
    unsigned char* stack(size_t i) {
        while (stacks.size() <= i) {
            auto* m = (unsigned char*)mmap(nullptr, PAGE + FIBER_STACK, PROT_READ | PROT_WRITE,
                                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) abort();
            mprotect(m, PAGE, PROT_NONE);
            stacks.push_back(m);
        }
        return stacks[i];
    }
};

std::mutex g_workers_mutex;
std::vector<std::unique_ptr<Worker>> g_idle_workers;

std::unique_ptr<Worker> take_worker() {
    std::lock_guard<std::mutex> lock(g_workers_mutex);
    if (g_idle_workers.empty()) return std::make_unique<Worker>();
    auto w = std::move(g_idle_workers.back());
    g_idle_workers.pop_back();
    return w;
}
void return_worker(std::unique_ptr<Worker> w) {
    std::lock_guard<std::mutex> lock(g_workers_mutex);
    g_idle_workers.push_back(std::move(w));
}

enum Schedule { FORWARD, REVERSED, SHUFFLED };
const char* schedule_name(int s) { return s == FORWARD ? "forward" : s == REVERSED ? "reversed" : "shuffled"; }

// One block being run on this OS thread.
struct Block {
    const KernelInfo* kernel;
    void* const* args;
    Worker* worker;
    int n_threads;
    size_t dynamic_bytes;
    unsigned char* dynamic_base;
    std::vector<std::pair<const void*, size_t>> statics;  // key, offset
    size_t static_used = 0;
    void* scheduler_sp = nullptr;
    bool failed = false;
    std::string error;
    Schedule schedule;
};

thread_local Block* t_block = nullptr;
thread_local Fiber* t_fiber = nullptr;
thread_local sigjmp_buf t_fault_jump;
thread_local char t_fault_message[512];

std::string where() {
    char buf[160];
    if (!t_block) return "host code";
    if (!t_fiber)
        snprintf(buf, sizeof buf, "kernel %s, block (%u,%u,%u)", t_block->kernel->name, t_block_idx.x, t_block_idx.y,
                 t_block_idx.z);
    else
        snprintf(buf, sizeof buf, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", t_block->kernel->name,
                 t_block_idx.x, t_block_idx.y, t_block_idx.z, t_fiber->idx.x, t_fiber->idx.y, t_fiber->idx.z);
    return buf;
}

// Records the first error of the block and leaves the fiber for good (the block is abandoned).
[[noreturn]] __attribute__((format(printf, 1, 2))) void fail(const char* fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!t_block || !t_fiber) {
        fprintf(stderr, "twossp host CUDA: %s: %s\n", where().c_str(), msg);
        abort();
    }
    if (!t_block->failed) {
        t_block->failed = true;
        t_block->error = where() + ": " + msg;
    }
    t_fiber->state = State::Done;
    twossp_fiber_switch(&t_fiber->sp, t_block->scheduler_sp);
    __builtin_unreachable();
}

void yield(State s) {
    t_fiber->state = s;
    twossp_fiber_switch(&t_fiber->sp, t_block->scheduler_sp);
}

void complete(std::vector<Copy>& copies) {
    for (const Copy& c : copies) {
        if (c.bytes > 0) memcpy(c.dst, c.src, c.bytes);
        memset((unsigned char*)c.dst + c.bytes, 0, 16 - c.bytes);
    }
    copies.clear();
}

extern "C" void twossp_fiber_main(Fiber* f) {
    t_block->kernel->call(t_block->args);
    complete(f->uncommitted);
    for (auto& g : f->groups) complete(g);
    f->groups.clear();
    f->state = State::Done;
    twossp_fiber_switch(&f->sp, t_block->scheduler_sp);
    __builtin_unreachable();
}

void start_fiber(Fiber& f, unsigned char* stack_low) {
    f.stack_top = stack_low + PAGE + FIBER_STACK;
    auto* sp = (uint64_t*)(f.stack_top - 64);  // the frame twossp_fiber_switch pops
    uint32_t mxcsr = 0x1f80, fpucw = 0x037f;
    memcpy(sp, &mxcsr, 4);
    memcpy((char*)sp + 4, &fpucw, 4);
    sp[1] = 0;                                // r15
    sp[2] = 0;                                // r14
    sp[3] = 0;                                // r13
    sp[4] = (uint64_t)&f;                     // r12: the fiber, for twossp_fiber_entry
    sp[5] = 0;                                // rbx
    sp[6] = 0;                                // rbp
    sp[7] = (uint64_t)&twossp_fiber_entry;    // return address
    f.sp = sp;
    f.state = State::Ready;
    f.uncommitted.clear();
    f.groups.clear();
}

// ------------------------------------------------------------------------- warp collectives
void perform(Fiber* lanes, Op op) {
    switch (op) {
        case Op::SyncWarp: return;
        case Op::Shfl:
            for (int l = 0; l < 32; ++l) lanes[l].out[0] = lanes[l ^ (int)lanes[l].in[1]].in[0];
            return;
        case Op::Ldmatrix:
        case Op::LdmatrixTrans: {
            // Matrix i's rows come from the addresses of lanes 8i..8i+7 (8 b16 each); lane l receives
            // row l/4, elements 2(l%4) and +1 of each matrix, or with .trans column l/4, rows 2(l%4), +1.
            for (int i = 0; i < 4; ++i) {
                uint16_t m[8][8];
                for (int r = 0; r < 8; ++r) memcpy(m[r], lanes[8 * i + r].addr, 16);
                for (int l = 0; l < 32; ++l) {
                    const int a = l / 4, b = 2 * (l % 4);
                    const uint16_t lo = op == Op::Ldmatrix ? m[a][b] : m[b][a];
                    const uint16_t hi = op == Op::Ldmatrix ? m[a][b + 1] : m[b + 1][a];
                    lanes[l].out[i] = (uint32_t)lo | ((uint32_t)hi << 16);
                }
            }
            return;
        }
        case Op::Mma: {
            // PTX ISA, mma.m16n8k16 with .bf16: group g = lane/4, t = lane%4. A (16x16, row): a0 (g, 2t..2t+1),
            // a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..). B (16x8, col): b0 (k 2t..2t+1, n g),
            // b1 (k 2t+8.., n g). C/D (16x8 f32): c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
            auto half = [](uint32_t reg, int k) {
                const uint32_t u = (k & 1 ? reg >> 16 : reg & 0xffff) << 16;
                float f;
                memcpy(&f, &u, 4);
                return f;
            };
            auto a_at = [&](int r, int k) {
                const Fiber& f = lanes[(r % 8) * 4 + (k % 8) / 2];
                return half(f.in[4 + (r >= 8) + 2 * (k >= 8)], k);
            };
            auto b_at = [&](int k, int n) {
                const Fiber& f = lanes[n * 4 + (k % 8) / 2];
                return half(f.in[k >= 8 ? 9 : 8], k);
            };
            float d[16][8];
            for (int r = 0; r < 16; ++r)
                for (int n = 0; n < 8; ++n) {
                    const Fiber& f = lanes[(r % 8) * 4 + n / 2];
                    float acc;
                    memcpy(&acc, &f.in[2 * (r >= 8) + n % 2], 4);
                    for (int k = 0; k < 16; ++k) acc = fmaf(a_at(r, k), b_at(k, n), acc);
                    d[r][n] = acc;
                }
            for (int l = 0; l < 32; ++l) {
                const int g = l / 4, t = l % 4;
                const float v[4] = {d[g][2 * t], d[g][2 * t + 1], d[g + 8][2 * t], d[g + 8][2 * t + 1]};
                memcpy(lanes[l].out, v, 16);
            }
            return;
        }
    }
}

void warp_op(Op op) {
    t_fiber->op = op;
    yield(State::Warp);
}

void syncthreads() { yield(State::Barrier); }

void check_full_mask(unsigned mask, const char* what) {
    if (mask != 0xffffffffu) fail("%s with mask 0x%08x: the host build supports full-warp masks only", what, mask);
}

void syncwarp(unsigned mask) {
    check_full_mask(mask, "__syncwarp");
    warp_op(Op::SyncWarp);
}

uint32_t shfl_xor(unsigned mask, uint32_t bits, int lane_mask) {
    check_full_mask(mask, "__shfl_xor_sync");
    if (lane_mask < 0 || lane_mask > 31) fail("__shfl_xor_sync lane mask %d out of 0..31", lane_mask);
    t_fiber->in[0] = bits;
    t_fiber->in[1] = (uint32_t)lane_mask;
    warp_op(Op::Shfl);
    return t_fiber->out[0];
}

// ----------------------------------------------------------------------------- shared memory
bool in_shared(const void* p, size_t bytes) {
    const Worker* w = t_block->worker;
    return (const unsigned char*)p >= w->static_base && (const unsigned char*)p + bytes <= w->dynamic_end;
}

void* static_shared(const void* key, size_t bytes, size_t align) {
    Block* b = t_block;
    for (auto& [k, offset] : b->statics)
        if (k == key) return b->worker->static_base + offset;
    const size_t offset = (b->static_used + align - 1) / align * align;
    if (offset + bytes > MAX_STATIC_SHARED) fail("static shared memory over the 48 KiB limit");
    if (offset + bytes + b->dynamic_bytes > MAX_SHARED)
        fail("%zu bytes of static plus %zu of dynamic shared memory: over the H200's 227 KiB per block",
             offset + bytes, b->dynamic_bytes);
    b->statics.push_back({key, offset});
    b->static_used = offset + bytes;
    memset(b->worker->static_base + offset, POISON, bytes);
    return b->worker->static_base + offset;
}

void* dynamic_shared() { return t_block->dynamic_base; }

// ------------------------------------------------------------------------------- PTX: cp.async
void cp_async(void* smem, const void* gmem, int src_bytes) {
    if (!in_shared(smem, 16)) fail("cp.async destination %p is not in this block's shared memory", smem);
    if ((uintptr_t)smem % 16) fail("cp.async destination %p is not 16-byte aligned", smem);
    if (src_bytes < 0 || src_bytes > 16) fail("cp.async source size %d outside 0..16", src_bytes);
    if (src_bytes > 0) {
        if ((uintptr_t)gmem % 16) fail("cp.async.cg source %p is not 16-byte aligned", gmem);
        bool inside;
        {
            std::shared_lock<std::shared_mutex> lock(g_alloc_mutex);  // released before fail() leaves the fiber
            inside = find_allocation(gmem, src_bytes) != nullptr;
        }
        if (!inside) fail("cp.async reads %d bytes at %p, outside every device allocation", src_bytes, gmem);
    }
    memset(smem, POISON, 16);  // reads before the wait see NaN
    t_fiber->uncommitted.push_back({smem, gmem, src_bytes});
}

void cp_async_commit() {
    t_fiber->groups.push_back(std::move(t_fiber->uncommitted));
    t_fiber->uncommitted.clear();
}

void cp_async_wait(int groups) {
    auto& g = t_fiber->groups;
    const size_t keep = (size_t)groups;
    if (g.size() <= keep) return;
    const size_t done = g.size() - keep;
    for (size_t i = 0; i < done; ++i) complete(g[i]);
    g.erase(g.begin(), g.begin() + done);
}

// ------------------------------------------------------------------------ PTX: ldmatrix, mma
void ldmatrix_x4(unsigned (&r)[4], const void* smem, bool trans) {
    if (!in_shared(smem, 16)) fail("ldmatrix row address %p is not in this block's shared memory", smem);
    if ((uintptr_t)smem % 16) fail("ldmatrix row address %p is not 16-byte aligned", smem);
    t_fiber->addr = smem;
    warp_op(trans ? Op::LdmatrixTrans : Op::Ldmatrix);
    memcpy(r, t_fiber->out, 16);
}

void mma_m16n8k16_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    memcpy(t_fiber->in, c, 16);
    memcpy(t_fiber->in + 4, a, 16);
    t_fiber->in[8] = b0;
    t_fiber->in[9] = b1;
    warp_op(Op::Mma);
    memcpy(c, t_fiber->out, 16);
}

// ------------------------------------------------------------------------------- scheduling
// Runs every thread of the block to completion; returns false (with b.error) on the first fault.
bool run_block(Block& b) {
    Worker& w = *b.worker;
    const int n = b.n_threads;
    if ((int)w.fibers.size() < n) w.fibers.resize(n);
    Fiber* fibers = w.fibers.data();
    for (int i = 0; i < n; ++i) {
        Fiber& f = fibers[i];
        f.idx = {i % t_block_dim.x, (i / t_block_dim.x) % t_block_dim.y, i / (t_block_dim.x * t_block_dim.y)};
        start_fiber(f, w.stack(i));
    }
    // Poison the dynamic shared memory and a page below it; static arrays are poisoned when first used.
    b.dynamic_base = w.dynamic_end - (b.dynamic_bytes + 127) / 128 * 128;
    unsigned char* poison_from = std::max(w.static_base, b.dynamic_base - PAGE);
    memset(poison_from, POISON, w.dynamic_end - poison_from);

    std::mt19937_64 rng(((uint64_t)t_block_idx.x * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)t_block_idx.y << 32) ^
                        t_block_idx.z);
    const int warps = (n + 31) / 32;
    auto lanes_of = [&](int w) { return std::min(32, n - 32 * w); };
    auto run = [&](Fiber& f) {
        t_fiber = &f;
        t_thread_idx = f.idx;
        twossp_fiber_switch(&b.scheduler_sp, f.sp);
        t_fiber = nullptr;
    };
    // Performs warp w's collective once all its lanes wait in it: 1 done, 0 not ready, -1 fault.
    auto resolve = [&](int wi) {
        Fiber* lanes = fibers + 32 * wi;
        const int count = lanes_of(wi);
        int waiting = 0, exited = 0;
        for (int l = 0; l < count; ++l) {
            waiting += lanes[l].state == State::Warp;
            exited += lanes[l].state == State::Done;
        }
        if (waiting == 0) return 0;
        char msg[200] = "";
        if (count < 32)
            snprintf(msg, sizeof msg, "warp %d has %d threads: %s needs all 32", wi, count, op_name(lanes[0].op));
        else if (waiting + exited == count && exited > 0)
            snprintf(msg, sizeof msg, "warp %d: %d lanes exited, the other %d wait in a full-warp collective", wi,
                     exited, waiting);
        else if (waiting == count)
            for (int l = 1; l < 32; ++l)
                if (lanes[l].op != lanes[0].op)
                    snprintf(msg, sizeof msg, "warp %d: lane 0 is in %s, lane %d in %s (divergent collectives)", wi,
                             op_name(lanes[0].op), l, op_name(lanes[l].op));
        if (*msg) {
            b.failed = true;
            b.error = where() + ": " + msg;
            return -1;
        }
        if (waiting < count) return 0;  // the rest of the warp is at a barrier
        perform(lanes, lanes[0].op);
        for (int l = 0; l < 32; ++l) lanes[l].state = State::Ready;
        return 1;
    };
    // FORWARD runs the block in lockstep: every thread goes as far as it can, then the collectives of
    // all warps are performed together. REVERSED and SHUFFLED run one warp at a time as far as it can
    // go (its collectives performed as soon as its lanes arrive) before the next, in reverse or random
    // warp and lane order: the skew between warps that a missing __syncthreads exposes.
    std::vector<int> warp_order(warps), lane_order(32);
    for (;;) {
        bool progressed = false;
        if (b.schedule == FORWARD) {
            for (int i = 0; i < n; ++i)
                if (fibers[i].state == State::Ready) {
                    run(fibers[i]);
                    progressed = true;
                    if (b.failed) return false;
                }
            for (int wi = 0; wi < warps; ++wi) {
                const int r = resolve(wi);
                if (r < 0) return false;
                progressed |= r > 0;
            }
        } else {
            for (int wi = 0; wi < warps; ++wi) warp_order[wi] = b.schedule == REVERSED ? warps - 1 - wi : wi;
            if (b.schedule == SHUFFLED) std::shuffle(warp_order.begin(), warp_order.end(), rng);
            for (int wi : warp_order) {
                const int count = lanes_of(wi);
                for (;;) {
                    for (int l = 0; l < count; ++l) lane_order[l] = b.schedule == REVERSED ? count - 1 - l : l;
                    if (b.schedule == SHUFFLED) std::shuffle(lane_order.begin(), lane_order.begin() + count, rng);
                    bool ran = false;
                    for (int l = 0; l < count; ++l) {
                        Fiber& f = fibers[32 * wi + lane_order[l]];
                        if (f.state != State::Ready) continue;
                        run(f);
                        ran = progressed = true;
                        if (b.failed) return false;
                    }
                    const int r = resolve(wi);
                    if (r < 0) return false;
                    if (r > 0) {
                        progressed = true;
                        continue;
                    }
                    if (!ran) break;
                }
            }
        }
        int done = 0, at_barrier = 0;
        for (int i = 0; i < n; ++i) {
            done += fibers[i].state == State::Done;
            at_barrier += fibers[i].state == State::Barrier;
        }
        if (done == n) return true;
        if (progressed) continue;
        if (at_barrier + done == n) {
            for (int i = 0; i < n; ++i)
                if (fibers[i].state == State::Barrier) fibers[i].state = State::Ready;
            continue;
        }
        b.failed = true;
        b.error = where() + ": deadlock: " + std::to_string(at_barrier) +
                  " threads wait at __syncthreads while others of their warps wait in a warp collective";
        return false;
    }
}

// ------------------------------------------------------------- faults and alignment reports
struct sigaction g_previous_segv;

// A fault inside a kernel (a guard page: far out of bounds, or a fiber's stack overflowing) ends its
// block with an error; any other fault goes to the handler that was there before.
void on_fault(int sig, siginfo_t* info, void* ucontext) {
    if (!t_block) {
        sigaction(SIGSEGV, &g_previous_segv, nullptr);
        return;  // the fault repeats under the previous handler
    }
    const void* addr = info->si_addr;
    const char* what = "unmapped memory";
    if (t_fiber && (unsigned char*)addr < t_fiber->stack_top && (unsigned char*)addr >= t_fiber->stack_top - FIBER_STACK - PAGE)
        what = "the guard page of its fiber stack (stack overflow)";
    else if ((unsigned char*)addr >= t_block->worker->arena && (unsigned char*)addr < t_block->worker->dynamic_end + PAGE)
        what = "a guard page of shared memory (out of bounds)";
    char detail[160] = "";
    if (const Allocation* al = mapping_of(addr)) {
        what = detail;
        const unsigned char* p = (const unsigned char*)addr;
        if (p >= al->data)
            snprintf(detail, sizeof detail, "%zu bytes past the end of a %zu-byte device allocation",
                     (size_t)(p - al->data) - al->bytes, al->bytes);
        else
            snprintf(detail, sizeof detail, "%zu bytes before the start of a %zu-byte device allocation",
                     (size_t)(al->data - p), al->bytes);
    }
    snprintf(t_fault_message, sizeof t_fault_message, "%s: access to %p: %s", where().c_str(), addr, what);
    (void)sig;
    (void)ucontext;
    siglongjmp(t_fault_jump, 1);
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_previous_segv);
    });
}

// -------------------------------------------------------------------------------- launches
struct Launch {
    const KernelInfo* kernel;
    void* const* args;
    uint3 grid, block;
    size_t dynamic_bytes;
    Schedule schedule;
    std::atomic<unsigned long long> next{0};
    std::mutex error_mutex;
    std::string error;
};

void run_blocks(Launch& l) {
    auto worker = take_worker();
    stack_t ss;
    ss.ss_sp = worker->signal_stack;
    ss.ss_size = SIGNAL_STACK;
    ss.ss_flags = 0;
    stack_t old_ss;
    sigaltstack(&ss, &old_ss);
    const unsigned long long total = (unsigned long long)l.grid.x * l.grid.y * l.grid.z;
    t_block_dim = l.block;
    t_grid_dim = l.grid;
    for (;;) {
        const unsigned long long i = l.next.fetch_add(1);
        if (i >= total) break;
        {
            std::lock_guard<std::mutex> lock(l.error_mutex);
            if (!l.error.empty()) break;
        }
        t_block_idx = {(unsigned)(i % l.grid.x), (unsigned)(i / l.grid.x % l.grid.y),
                       (unsigned)(i / ((unsigned long long)l.grid.x * l.grid.y))};
        Block b;
        b.kernel = l.kernel;
        b.args = l.args;
        b.worker = worker.get();
        b.n_threads = l.block.x * l.block.y * l.block.z;
        b.dynamic_bytes = l.dynamic_bytes;
        b.schedule = l.schedule;
        t_block = &b;
        bool ok;
        std::string error;
        if (sigsetjmp(t_fault_jump, 1) == 0) {
            ok = run_block(b);
            error = b.error;
        } else {
            ok = false;
            error = t_fault_message;
        }
        t_block = nullptr;
        t_fiber = nullptr;
        if (!ok) {
            std::lock_guard<std::mutex> lock(l.error_mutex);
            if (l.error.empty()) l.error = error;
        }
    }
    sigaltstack(&old_ss, nullptr);
    return_worker(std::move(worker));
}

std::string run_launch(Launch& l, int threads) {
    const unsigned long long total = (unsigned long long)l.grid.x * l.grid.y * l.grid.z;
    const int n = (int)std::min<unsigned long long>(threads, total);
    std::vector<std::thread> pool;
    for (int i = 1; i < n; ++i) pool.emplace_back([&l] { run_blocks(l); });
    run_blocks(l);
    for (auto& t : pool) t.join();
    return l.error;
}

// Red zones still hold the poison: no kernel wrote outside its allocation.
std::string check_red_zones(const char* kernel) {
    std::shared_lock<std::shared_mutex> lock(g_alloc_mutex);
    for (auto& [_, al] : g_allocs) {
        for (unsigned char* p = al.zone_begin; p < al.zone_end; ++p) {
            if (p == al.data) p += al.bytes;
            if (p >= al.zone_end) break;
            if (*p != POISON) {
                char buf[300];
                const long long off = p < al.data ? -(long long)(al.data - p) : (long long)(p - al.data);
                snprintf(buf, sizeof buf, "kernel %s wrote outside a device allocation of %zu bytes at %p (byte %lld)",
                         kernel, al.bytes, (void*)al.data, off);
                return buf;
            }
        }
    }
    return "";
}

// The allocations a launch may write: those its non-const pointers and struct fields point into.
std::vector<const Allocation*> writable(const KernelInfo* k, void* const* args) {
    std::vector<const Allocation*> out;
    auto add = [&](uint64_t address) {
        if (const Allocation* al = find_allocation((const void*)address, 1))
            if (std::find(out.begin(), out.end(), al) == out.end()) out.push_back(al);
    };
    std::shared_lock<std::shared_mutex> lock(g_alloc_mutex);
    for (int i = 0; i < k->n_args; ++i) {
        if (k->kinds[i] == ARG_PTR) {
            uint64_t a;
            memcpy(&a, args[i], 8);
            add(a);
        } else if (k->kinds[i] == ARG_STRUCT) {
            for (size_t o = 0; o + 8 <= k->sizes[i]; o += 8) {
                uint64_t a;
                memcpy(&a, (const char*)args[i] + o, 8);
                add(a);
            }
        }
    }
    return out;
}

std::vector<Schedule> schedules() {
    const char* env = getenv("TWOSSP_HOST_SCHEDULES");
    std::string s = env ? env : "forward,reversed,shuffled";
    std::vector<Schedule> out;
    for (Schedule c : {FORWARD, REVERSED, SHUFFLED})
        if (s.find(schedule_name(c)) != std::string::npos) out.push_back(c);
    if (out.empty()) out.push_back(FORWARD);
    return out;
}

}  // namespace twossp_host

using namespace twossp_host;

// UBSan's alignment check (-fsanitize=alignment on the kernels) reports here, instead of in libubsan.
struct UbsanLocation {
    const char* file;
    uint32_t line, column;
};
struct UbsanTypeMismatch {
    UbsanLocation location;
    const void* type;
    unsigned char log_alignment;
    unsigned char check_kind;
};
extern "C" void __ubsan_handle_type_mismatch_v1(UbsanTypeMismatch* d, uintptr_t pointer) {
    const char* file = strrchr(d->location.file, '/');
    fail("misaligned access: %p is not %u-byte aligned (%s:%u)", (void*)pointer, 1u << d->log_alignment,
         file ? file + 1 : d->location.file, d->location.line);
}
extern "C" void __ubsan_handle_type_mismatch_v1_abort(UbsanTypeMismatch* d, uintptr_t pointer) {
    __ubsan_handle_type_mismatch_v1(d, pointer);
}

namespace {
void set_error(char* err, size_t len, const std::string& msg) {
    if (len == 0) return;
    snprintf(err, len, "%s", msg.c_str());
}
}  // namespace

/// A zero-filled device allocation of `bytes` between red zones and guard pages, or null.
extern "C" void* twossp_host_alloc(size_t bytes) {
    const size_t data = (bytes + 15) / 16 * 16;
    const size_t zone = (data + 256 + PAGE - 1) / PAGE * PAGE;  // at least 256 red-zone bytes in front
    const size_t map_bytes = zone + 2 * PAGE;
    auto* m = (unsigned char*)mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                                   -1, 0);
    if (m == MAP_FAILED) return nullptr;
    mprotect(m, PAGE, PROT_NONE);
    mprotect(m + map_bytes - PAGE, PAGE, PROT_NONE);
    Allocation al{m, map_bytes, m + PAGE + zone - data, bytes, m + PAGE, m + PAGE + zone};
    memset(al.zone_begin, POISON, al.data - al.zone_begin);
    memset(al.data + bytes, POISON, al.zone_end - (al.data + bytes));  // data itself is zero (fresh pages)
    std::unique_lock<std::shared_mutex> lock(g_alloc_mutex);
    g_allocs[(uintptr_t)al.data] = al;
    return al.data;
}

extern "C" void twossp_host_free(void* data) {
    std::unique_lock<std::shared_mutex> lock(g_alloc_mutex);
    auto it = g_allocs.find((uintptr_t)data);
    if (it == g_allocs.end()) return;
    munmap(it->second.map, it->second.map_bytes);
    g_allocs.erase(it);
}

/// Whether `name` is a registered kernel.
extern "C" int twossp_host_has_kernel(const char* name) {
    for (const KernelInfo* k : kernels())
        if (strcmp(k->name, name) == 0) return 1;
    return 0;
}

/// Runs one launch under every schedule of TWOSSP_HOST_SCHEDULES on `threads` OS threads; returns 0,
/// or 1 with a one-line reason in `err`.
extern "C" int twossp_host_launch(const char* name, const unsigned* grid, const unsigned* block, size_t dynamic_bytes,
                                  size_t dynamic_limit, void* const* args, const size_t* sizes, int n_args,
                                  int threads, char* err, size_t err_len) {
    const KernelInfo* k = nullptr;
    for (const KernelInfo* c : kernels())
        if (strcmp(c->name, name) == 0) k = c;
    char buf[300];
    if (!k) {
        snprintf(buf, sizeof buf, "kernel %s is not in the host build", name);
        set_error(err, err_len, buf);
        return 1;
    }
    if (n_args != k->n_args) {
        snprintf(buf, sizeof buf, "kernel %s takes %d arguments, the launch passes %d", name, k->n_args, n_args);
        set_error(err, err_len, buf);
        return 1;
    }
    for (int i = 0; i < n_args; ++i)
        if (sizes[i] != k->sizes[i]) {
            snprintf(buf, sizeof buf, "kernel %s: argument %d is %zu bytes, the launch passes %zu", name, i, k->sizes[i],
                     sizes[i]);
            set_error(err, err_len, buf);
            return 1;
        }
    const unsigned threads_per_block = block[0] * block[1] * block[2];
    const char* refused = nullptr;
    if (threads_per_block == 0 || threads_per_block > MAX_THREADS || block[2] > MAX_BLOCK_Z)
        refused = "more threads per block than an H200 allows (1024; z at most 64)";
    else if (grid[1] > MAX_GRID_YZ || grid[2] > MAX_GRID_YZ)
        refused = "grid y or z over 65535";
    else if (dynamic_bytes > dynamic_limit)
        refused = "more dynamic shared memory than the kernel's limit (48 KiB unless raised)";
    else if (dynamic_bytes > MAX_SHARED)
        refused = "more shared memory than an H200 has per block (227 KiB)";
    if (refused) {
        snprintf(buf, sizeof buf, "launching %s (grid %ux%ux%u, block %ux%ux%u, %zu bytes shared) failed: %s", name,
                 grid[0], grid[1], grid[2], block[0], block[1], block[2], dynamic_bytes, refused);
        set_error(err, err_len, buf);
        return 1;
    }
    install_fault_handler();

    const auto outputs = writable(k, args);
    const auto order = schedules();
    std::vector<std::vector<unsigned char>> before, first;
    if (order.size() > 1)
        for (const Allocation* al : outputs) before.emplace_back(al->data, al->data + al->bytes);
    for (size_t s = 0; s < order.size(); ++s) {
        if (s > 0)
            for (size_t i = 0; i < outputs.size(); ++i) memcpy(outputs[i]->data, before[i].data(), outputs[i]->bytes);
        Launch l;
        l.kernel = k;
        l.args = args;
        l.grid = {grid[0], grid[1], grid[2]};
        l.block = {block[0], block[1], block[2]};
        l.dynamic_bytes = dynamic_bytes;
        l.schedule = order[s];
        std::string e = run_launch(l, threads);
        if (e.empty()) e = check_red_zones(name);
        if (!e.empty()) {
            if (order.size() > 1) e += std::string(" [") + schedule_name(order[s]) + " schedule]";
            set_error(err, err_len, e);
            return 1;
        }
        if (order.size() == 1) break;
        if (s == 0) {
            for (const Allocation* al : outputs) first.emplace_back(al->data, al->data + al->bytes);
            continue;
        }
        for (size_t i = 0; i < outputs.size(); ++i) {
            if (memcmp(first[i].data(), outputs[i]->data, outputs[i]->bytes) == 0) continue;
            size_t at = 0;
            while (first[i][at] == outputs[i]->data[at]) ++at;
            snprintf(buf, sizeof buf,
                     "kernel %s: results depend on the thread schedule (%s vs %s differ at byte %zu of a %zu-byte "
                     "buffer): a race between threads, e.g. a missing barrier",
                     name, schedule_name(order[0]), schedule_name(order[s]), at, outputs[i]->bytes);
            set_error(err, err_len, buf);
            return 1;
        }
    }
    return 0;
}
