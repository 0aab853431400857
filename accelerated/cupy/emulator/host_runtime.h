// Host emulation of the CUDA execution model: g++ compiles the unmodified kernels/*.cu as host
// code, and every CUDA thread of a block runs as a fiber (its own stack, one OS thread).
//
// Force-included before the kernel source (g++ -include host_runtime.h -DROSETTA_HOST_EMULATION).
// The model, kept as close to CUDA's as a sequential emulator can be:
//   * blocks run one after another; the threads of a block are fibers that switch only where a
//     CUDA thread may wait for others: __syncthreads, warp shuffles, mma.sync and ldmatrix (warp
//     collectives); cp.async is a synchronous copy and its commit / wait_group are no-ops;
//   * __shared__ variables are function-level statics: one copy, shared by the fibers of the block
//     that runs, poisoned (0xFF bytes, a NaN) before every block at the addresses the launcher
//     finds in the library's symbol table, so a read of shared memory nobody wrote shows;
//   * the order in which waiting fibers resume is a parameter (lowest thread first, highest
//     first, or seeded random), so a missing barrier shows up as a result that depends on it;
//   * undefined behaviour that CUDA would leave silent is reported: threads waiting at two
//     different __syncthreads of the source (a divergent barrier), a full-mask warp collective with
//     an exited lane or in a partial warp, lanes of one warp at different collectives, deadlock.
// Not modelled: memory-model effects (every write is seen at once), real concurrency between
// blocks, timing. See host.py beside this file for the launcher.
#pragma once

#ifndef ROSETTA_HOST_EMULATION
#error "host_runtime.h is the host emulator of the CUDA kernels: compile with -DROSETTA_HOST_EMULATION"
#endif

#include <cuda_bf16.h>  // __half / __nv_bfloat16 with their host conversions (round to nearest even)
#include <cuda_fp16.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <source_location>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Qualifiers. The CUDA headers define them empty for a host compiler; three need a meaning here.
// ---------------------------------------------------------------------------------------------
#undef __global__
#undef __shared__
#undef __launch_bounds__
#define __global__ __attribute__((used))  // also the marker by which the launcher finds the kernels
#define __shared__ static                 // blocks run one at a time: one copy serves the block
#define __launch_bounds__(...)

// ---------------------------------------------------------------------------------------------
// Built-in variables: set by the scheduler whenever it switches to another fiber.
// ---------------------------------------------------------------------------------------------
static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Math and bit intrinsics the kernels use (host libm; the GPU's fast versions are approximations
// of these, within a few ulp).
// ---------------------------------------------------------------------------------------------
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmul_rn(float a, float b) { return a * b; }  // a rounded product (the GPU never fuses it into an FMA)

// CUDA's min/max overloads for the integer and float types (host C++ has only std::min/max).
#define ROSETTA_MIN_MAX(T)                                 \
    inline T min(T a, T b) { return b < a ? b : a; }      \
    inline T max(T a, T b) { return a < b ? b : a; }
ROSETTA_MIN_MAX(int)
ROSETTA_MIN_MAX(unsigned)
ROSETTA_MIN_MAX(long long)
ROSETTA_MIN_MAX(unsigned long long)
ROSETTA_MIN_MAX(float)
ROSETTA_MIN_MAX(double)
#undef ROSETTA_MIN_MAX

// ---------------------------------------------------------------------------------------------
// The scheduler: one fiber per CUDA thread of the running block.
// ---------------------------------------------------------------------------------------------
namespace rosetta_emu {

enum State { RUNNABLE, AT_SYNCTHREADS, AT_WARP_COLLECTIVE, EXITED };
enum Schedule { LOWEST_FIRST = 0, HIGHEST_FIRST = 1, RANDOM = 2 };
enum Collective { SHUFFLE = 1, MMA = 2, LDMATRIX = 3, LDMATRIX_TRANS = 4 };

constexpr size_t STACK_BYTES = 256 * 1024;  // per fiber; a guard page below catches overflow

struct Fiber {
    ucontext_t context;
    char* stack = nullptr;  // mmap'd: guard page + STACK_BYTES
    State state = EXITED;
    uint3 tid;
};

// One warp's exchange area. Double-buffered by phase parity: a lane can only reach collective
// n + 2 (same buffer as n) after every lane has arrived at n + 1, i.e. has read its result of n.
struct Warp {
    int arrived = 0, exited = 0, kind = 0;
    unsigned phase = 0;
    unsigned long long value[2][32];  // shuffles: each lane's operand (bits); ldmatrix: its row address
    unsigned a[2][32][4], b[2][32][2];  // mma: each lane's A and B fragment registers
    float A[2][16][16], B[2][16][8];   // mma: the assembled operands, by the last lane to arrive
    unsigned loaded[2][32][4];         // ldmatrix: each lane's destination registers
};

struct Runtime {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    int threads = 0, live = 0, current = 0;
    int at_barrier = 0;
    std::source_location barrier_site;  // the __syncthreads (file, line) the block is gathering at
    Schedule schedule = LOWEST_FIRST;
    std::mt19937 rng;
    ucontext_t launcher;
    void (*kernel)(void* const*) = nullptr;
    void* const* args = nullptr;
    bool failed = false;
    char message[1024] = {0};
};

static Runtime rt;
static std::mutex launch_mutex;

inline int lane_of(int t) { return t % 32; }
inline int warp_of(int t) { return t / 32; }

inline const char* describe(int t) {
    static char text[96];
    const Fiber& f = rt.fibers[t];
    std::snprintf(text, sizeof text, "thread (%u,%u,%u) of block (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z, blockIdx.x,
                  blockIdx.y, blockIdx.z);
    return text;
}

// Stop the launch with a message; the fibers of the block are abandoned (kernels hold no resources).
[[noreturn]] inline void fail(const char* format, ...) {
    va_list list;
    va_start(list, format);
    std::vsnprintf(rt.message, sizeof rt.message, format, list);
    va_end(list);
    rt.failed = true;
    setcontext(&rt.launcher);
    __builtin_unreachable();
}

// The runnable fiber to run next (the current one included when it may go on), or -1.
inline int pick_next() {
    const int n = rt.threads;
    if (rt.schedule == RANDOM) {
        int count = 0, chosen = -1;
        for (int t = 0; t < n; ++t)  // reservoir sampling: uniform over the runnable fibers
            if (rt.fibers[t].state == RUNNABLE && std::uniform_int_distribution<int>(0, count++)(rt.rng) == 0) chosen = t;
        return chosen;
    }
    for (int i = 0; i < n; ++i) {
        const int t = rt.schedule == LOWEST_FIRST ? i : n - 1 - i;
        if (rt.fibers[t].state == RUNNABLE) return t;
    }
    return -1;
}

// Leave the current fiber (waiting, exited, or just yielding) for the next runnable one.
inline void switch_away() {
    const int from = rt.current, to = pick_next();
    if (to < 0) {
        if (rt.live == 0) setcontext(&rt.launcher);  // the block is done
        std::string waiting;
        for (int t = 0; t < rt.threads && waiting.size() < 300; ++t)
            if (rt.fibers[t].state != EXITED)
                waiting += std::string(" ") + std::to_string(t) +
                           (rt.fibers[t].state == AT_SYNCTHREADS ? ":__syncthreads" : ":warp-collective");
        fail("deadlock in block (%u,%u,%u): %d of %d threads exited, the others wait forever:%s", blockIdx.x,
             blockIdx.y, blockIdx.z, rt.threads - rt.live, rt.threads, waiting.c_str());
    }
    if (to == from) return;
    rt.current = to;
    threadIdx = rt.fibers[to].tid;
    swapcontext(&rt.fibers[from].context, &rt.fibers[to].context);
}

inline void release_syncthreads() {
    rt.at_barrier = 0;
    for (int t = 0; t < rt.threads; ++t)
        if (rt.fibers[t].state == AT_SYNCTHREADS) rt.fibers[t].state = RUNNABLE;
}

// __syncthreads: wait until every thread of the block that has not exited arrives here. Threads
// waiting at two different __syncthreads of the source are a divergent barrier (undefined in CUDA).
inline void syncthreads(const std::source_location& site) {
    if (rt.at_barrier == 0) {
        rt.barrier_site = site;
    } else if (site.line() != rt.barrier_site.line() || std::strcmp(site.file_name(), rt.barrier_site.file_name())) {
        fail("divergent __syncthreads: %s waits at %s:%u, the threads before it at %s:%u", describe(rt.current),
             site.file_name(), site.line(), rt.barrier_site.file_name(), rt.barrier_site.line());
    }
    if (++rt.at_barrier == rt.live) release_syncthreads();
    else rt.fibers[rt.current].state = AT_SYNCTHREADS;
    switch_away();  // the last to arrive yields too, so the schedule decides who goes first
}

// Arrive at a full-warp collective; returns the buffer index whose contents are complete once
// the caller has been resumed. `deposit(buffer)` stores this lane's operands first;
// `complete(buffer)` runs once, by the last lane to arrive.
template <typename Deposit, typename Complete>
inline int warp_collective(int kind, unsigned mask, Deposit deposit, Complete complete) {
    const int t = rt.current, lane = lane_of(t);
    Warp& w = rt.warps[warp_of(t)];
    if (mask != 0xffffffffu) fail("%s: the emulator supports only full-warp masks, got 0x%08x", describe(t), mask);
    if ((warp_of(t) + 1) * 32 > rt.threads)
        fail("%s: a full-mask warp collective in a partial warp (block of %d threads)", describe(t), rt.threads);
    if (w.exited) fail("%s: a full-mask warp collective while %d lane(s) of its warp have exited", describe(t), w.exited);
    if (w.arrived == 0) w.kind = kind;
    else if (w.kind != kind) fail("%s: lanes of one warp wait at different warp collectives", describe(t));
    const int buffer = w.phase & 1;
    deposit(buffer, lane);
    if (++w.arrived == 32) {
        complete(buffer);
        w.arrived = 0;
        ++w.phase;
        for (int l = 0; l < 32; ++l)
            if (rt.fibers[warp_of(t) * 32 + l].state == AT_WARP_COLLECTIVE) rt.fibers[warp_of(t) * 32 + l].state = RUNNABLE;
    } else {
        rt.fibers[t].state = AT_WARP_COLLECTIVE;
    }
    switch_away();
    return buffer;
}

template <typename T>
inline T shuffle(unsigned mask, T value, int source_of_lane(int lane, int arg, int width), int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a value up to 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    const int lane = lane_of(rt.current);
    const int buffer = warp_collective(SHUFFLE, mask, [&](int b, int l) { rt.warps[warp_of(rt.current)].value[b][l] = bits; },
                                       [](int) {});
    const int source = source_of_lane(lane, arg, width);
    T result;
    std::memcpy(&result, &rt.warps[warp_of(rt.current)].value[buffer][source], sizeof(T));
    return result;
}

// CUDA's lane arithmetic: lanes form groups of `width`; a source outside the group gives own value.
inline int xor_source(int lane, int mask, int width) {
    const int source = lane ^ mask;
    return source / width == lane / width ? source : lane;
}
inline int index_source(int lane, int src, int width) { return (lane / width) * width + (src % width); }

inline float to_float(unsigned short bits, __half*) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
}
inline float to_float(unsigned short bits, __nv_bfloat16*) { return __uint_as_float((unsigned)bits << 16); }

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: D = A B + C for one warp.
// The fragment layout is transcribed from the PTX ISA, section "Matrix Fragments for mma.m16n8k16
// with floating point type"
// (https://docs.nvidia.com/cuda/parallel-thread-execution/#warp-level-matrix-fragment-mma-16816-float),
// independently of the comment in kernels/mma.cuh, so that the emulator checks the kernels' layout.
// With groupID = laneid >> 2 and threadID_in_group = laneid % 4, each .f16x2 register holds two
// elements, lower index in the low half:
//   A, elements a0..a7 (registers a[0..3]):
//     row = groupID for ai with 0 <= i < 2 or 4 <= i < 6, groupID + 8 otherwise
//     col = threadID_in_group * 2 + (i & 1), plus 8 for i >= 4
//   B, elements b0..b3 (registers b0, b1):
//     row = threadID_in_group * 2 + (i & 1), plus 8 for i >= 2;   col = groupID
//   C and D, elements c0..c3 (fp32):
//     row = groupID for i < 2, groupID + 8 otherwise;   col = threadID_in_group * 2 + (i & 1)
// Products and sums in fp32 (the tensor core's products of 16-bit inputs are exact in fp32 too).
template <typename T>
inline void mma_m16n8k16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    Warp& w = rt.warps[warp_of(rt.current)];
    auto element = [](const unsigned* registers, int i) { return (unsigned short)(registers[i / 2] >> (16 * (i % 2))); };
    auto deposit = [&](int buffer, int lane) {
        for (int r = 0; r < 4; ++r) w.a[buffer][lane][r] = a[r];
        w.b[buffer][lane][0] = b0;
        w.b[buffer][lane][1] = b1;
    };
    auto assemble = [&](int buffer) {  // every lane's fragments into the full A (16×16) and B (16×8)
        for (int lane = 0; lane < 32; ++lane) {
            const int group = lane >> 2, in_group = lane % 4;
            for (int i = 0; i < 8; ++i) {
                const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
                const int col = in_group * 2 + (i & 1) + (i >= 4 ? 8 : 0);
                w.A[buffer][row][col] = to_float(element(w.a[buffer][lane], i), (T*)nullptr);
            }
            for (int i = 0; i < 4; ++i) {
                const int row = in_group * 2 + (i & 1) + (i >= 2 ? 8 : 0);
                w.B[buffer][row][group] = to_float(element(w.b[buffer][lane], i), (T*)nullptr);
            }
        }
    };
    const int buffer = warp_collective(MMA, 0xffffffffu, deposit, assemble);
    const int lane = lane_of(rt.current), group = lane >> 2, in_group = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = i < 2 ? group : group + 8, col = in_group * 2 + (i & 1);
        float sum = c[i];
        for (int k = 0; k < 16; ++k) sum += w.A[buffer][row][k] * w.B[buffer][k][col];
        c[i] = sum;
    }
}

// ldmatrix.sync.aligned.m8n8.x4{,.trans}.shared.b16: a warp collective load of four 8×8 matrices
// of 16-bit elements. Transcribed from the PTX ISA, section "Warp-level matrix load instruction:
// ldmatrix" (https://docs.nvidia.com/cuda/parallel-thread-execution/#warp-level-matrix-instructions-ldmatrix),
// not from how the kernels use it:
//   * each lane supplies one address, the start of one 16-byte matrix row (8 consecutive b16
//     elements), which must be 16-byte aligned: lanes 0-7 the rows 0-7 of the first matrix, lanes
//     8-15 those of the second, 16-23 the third, 24-31 the fourth;
//   * destination register i of every lane receives a fragment of matrix i: "each thread in a warp
//     loads fragments of a row ... a group of four threads loads an entire row", i.e. the lane with
//     groupID = laneid >> 2 and threadID_in_group = laneid % 4 gets the elements
//     (row groupID, cols 2 * threadID_in_group and + 1), the lower column in the low half;
//   * .trans: "the matrix is loaded in column-major format", i.e. the lane gets the elements
//     (rows 2 * threadID_in_group and + 1, col groupID) of the stored matrix, the lower row in the low half.
// The rows are read once all 32 lanes have arrived (by the last lane, as the instruction reads them).
inline void ldmatrix_x4(unsigned* r, const void* row_address, bool trans) {
    const int t = rt.current;
    Warp& w = rt.warps[warp_of(t)];
    if (reinterpret_cast<uintptr_t>(row_address) % 16 != 0)
        fail("%s: ldmatrix row address %p is not 16-byte aligned", describe(t), row_address);
    auto deposit = [&](int buffer, int lane) { w.value[buffer][lane] = reinterpret_cast<uintptr_t>(row_address); };
    auto gather = [&](int buffer) {
        auto element = [&](int matrix, int row, int col) {
            unsigned short x;
            std::memcpy(&x, reinterpret_cast<const char*>(w.value[buffer][matrix * 8 + row]) + 2 * col, 2);
            return (unsigned)x;
        };
        for (int lane = 0; lane < 32; ++lane) {
            const int group = lane >> 2, in_group = lane % 4;
            for (int matrix = 0; matrix < 4; ++matrix)
                w.loaded[buffer][lane][matrix] =
                    trans ? element(matrix, 2 * in_group, group) | element(matrix, 2 * in_group + 1, group) << 16
                          : element(matrix, group, 2 * in_group) | element(matrix, group, 2 * in_group + 1) << 16;
        }
    };
    const int buffer = warp_collective(trans ? LDMATRIX_TRANS : LDMATRIX, 0xffffffffu, deposit, gather);
    for (int i = 0; i < 4; ++i) r[i] = w.loaded[buffer][lane_of(t)][i];
}

// cp.async.cg.shared.global [dst], [src], 16: emulated as a plain synchronous 16-byte copy (both
// addresses 16-byte aligned, as the ISA requires), and cp.async.commit_group / cp.async.wait_group
// as no-ops. The emulator therefore cannot see a missing or too weak wait_group (the data are
// always there); it does see a missing __syncthreads after the wait, through the thread order.
inline void cp_async_16(void* dst, const void* src) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
        fail("%s: cp.async of 16 bytes from %p to %p: both must be 16-byte aligned", describe(rt.current), src, dst);
    std::memcpy(dst, src, 16);
}

// Runs one fiber: the kernel, then the bookkeeping of an exited thread.
inline void fiber_main() {
    rt.kernel(rt.args);
    const int t = rt.current;
    Warp& w = rt.warps[warp_of(t)];
    if (w.arrived) fail("%s exited while %d lane(s) of its warp wait at a warp collective", describe(t), w.arrived);
    rt.fibers[t].state = EXITED;
    ++w.exited;
    --rt.live;
    if (rt.live > 0 && rt.at_barrier == rt.live) release_syncthreads();  // exited threads no longer count
    switch_away();
}

// Calls a kernel with its arguments read from an array of pointers to each argument's value.
template <typename... A, size_t... I>
inline void call_with(void (*kernel)(A...), void* const* args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}
template <typename... A>
inline void call_with(void (*kernel)(A...), void* const* args) {
    call_with(kernel, args, std::index_sequence_for<A...>{});
}

// The C type of a kernel parameter, by name, for the launcher's argument check.
template <typename T> inline std::string type_name() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) return "ptr:" + type_name<std::remove_pointer_t<U>>();
    else if constexpr (std::is_same_v<U, float>) return "float32";
    else if constexpr (std::is_same_v<U, double>) return "float64";
    else if constexpr (std::is_same_v<U, __half>) return "float16";
    else if constexpr (std::is_same_v<U, __nv_bfloat16>) return "bfloat16";
    else if constexpr (std::is_same_v<U, bool>) return "bool";
    else if constexpr (std::is_integral_v<U>) return (std::is_signed_v<U> ? "int" : "uint") + std::to_string(8 * sizeof(U));
    else return "other";
}
template <typename... A>
inline void signature_of(void (*)(A...), char* out, size_t size) {
    std::string text;
    ((text += (text.empty() ? "" : ",") + type_name<A>()), ...);
    std::snprintf(out, size, "%s", text.c_str());
}

}  // namespace rosetta_emu

// ---------------------------------------------------------------------------------------------
// The CUDA device API, on top of the scheduler.
// ---------------------------------------------------------------------------------------------
inline void __syncthreads(std::source_location site = std::source_location::current()) { rosetta_emu::syncthreads(site); }

template <typename T> inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
    return rosetta_emu::shuffle(mask, value, rosetta_emu::xor_source, lane_mask, width);
}
template <typename T> inline T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32) {
    return rosetta_emu::shuffle(mask, value, rosetta_emu::index_source, source_lane, width);
}

// Fibers never run at the same time, so a plain read-modify-write is atomic here.
template <typename T> inline T atomicAdd(T* address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}

// ---------------------------------------------------------------------------------------------
// Entry points for the Python launcher (parity_tests/cuda_emulation/__init__.py). The library is
// built with -fvisibility=hidden: only these are exported.
// ---------------------------------------------------------------------------------------------
#define ROSETTA_EXPORT extern "C" __attribute__((visibility("default")))

// Exports rosetta_call_<name>(args) and rosetta_signature_<name>(buffer, size) for kernel <name>.
#define ROSETTA_EXPORT_KERNEL(name)                                                                  \
    ROSETTA_EXPORT void rosetta_call_##name(void* const* args) { rosetta_emu::call_with(&name, args); } \
    ROSETTA_EXPORT void rosetta_signature_##name(char* out, size_t size) { rosetta_emu::signature_of(&name, out, size); }

// Poisoned before every block: the __shared__ variables, found by the launcher in the symbol table.
static std::vector<std::pair<char*, size_t>> rosetta_shared_regions;

ROSETTA_EXPORT void rosetta_set_shared_regions(char* const* starts, const size_t* sizes, int count) {
    rosetta_shared_regions.clear();
    for (int i = 0; i < count; ++i) rosetta_shared_regions.emplace_back(starts[i], sizes[i]);
}

// The address of this function: with its offset in the symbol table, the library's load address.
ROSETTA_EXPORT void* rosetta_anchor() { return (void*)&rosetta_anchor; }

// Runs kernel(args) over grid × block threads. Returns 0, or 1 with a message in `error`.
ROSETTA_EXPORT int rosetta_launch(void (*kernel)(void* const*), void* const* args, const unsigned* grid,
                              const unsigned* block, int schedule, unsigned seed, char* error, size_t error_size) {
    using namespace rosetta_emu;
    std::lock_guard<std::mutex> lock(launch_mutex);
    const int threads = (int)(block[0] * block[1] * block[2]);
    if (threads <= 0 || threads > 1024) {
        std::snprintf(error, error_size, "block of %d threads: CUDA allows 1 to 1024", threads);
        return 1;
    }
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    rt.schedule = (Schedule)schedule;
    rt.rng.seed(seed);
    rt.kernel = kernel;
    rt.args = args;
    rt.failed = false;
    rt.threads = threads;
    if ((int)rt.fibers.size() < threads) rt.fibers.resize(threads);
    rt.warps.assign((threads + 31) / 32, Warp{});
    const long page = 4096;
    for (int t = 0; t < threads; ++t) {
        Fiber& f = rt.fibers[t];
        if (f.stack == nullptr) {  // a PROT_NONE page below the stack turns an overflow into a crash
            void* memory = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (memory == MAP_FAILED) {
                std::snprintf(error, error_size, "mmap of a fiber stack failed");
                return 1;
            }
            mprotect(memory, page, PROT_NONE);
            f.stack = (char*)memory + page;
        }
        f.tid = uint3{(unsigned)(t % block[0]), (unsigned)(t / block[0] % block[1]), (unsigned)(t / (block[0] * block[1]))};
    }
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                blockIdx = uint3{x, y, z};
                for (auto& [start, size] : rosetta_shared_regions) std::memset(start, 0xFF, size);  // NaN
                for (Warp& w : rt.warps) w.arrived = w.exited = 0;
                for (int t = 0; t < threads; ++t) {
                    Fiber& f = rt.fibers[t];
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack;
                    f.context.uc_stack.ss_size = STACK_BYTES;
                    f.context.uc_link = nullptr;
                    makecontext(&f.context, fiber_main, 0);
                    f.state = RUNNABLE;
                }
                rt.live = threads;
                rt.at_barrier = 0;
                rt.current = pick_next();
                threadIdx = rt.fibers[rt.current].tid;
                swapcontext(&rt.launcher, &rt.fibers[rt.current].context);  // back when done or failed
                if (rt.failed) {
                    std::snprintf(error, error_size, "%s", rt.message);
                    return 1;
                }
            }
    return 0;
}
