// Tensor-core and asynchronous-copy primitives (sm_80+): mma.sync m16n8k16 with fp32 accumulators,
// ldmatrix, cp.async. Each PTX statement sits behind one function here; under ROSETTA_HOST_EMULATION
// (the CPU emulator, accelerated/cupy/emulator/host_runtime.h) the same function calls the
// emulation instead: mma and ldmatrix as warp collectives, cp.async as a synchronous copy with
// commit / wait as no-ops (so the emulator cannot see a missing wait: every wait in the kernels is
// followed by __syncthreads, which it does check).
//
// Included as "mma.cuh" (NVRTC: through -I<kernels/>, see accelerated/cupy/nvrtc.py).
#pragma once

#include "common.cuh"

namespace flash {

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.<T>.<T>.f32, T = f16 or bf16: C (16×8, fp32) += A B.
//
// Fragment layout per warp (g = lane / 4, t = lane % 4), 32-bit registers of two 16-bit values,
// the lower-indexed element in the low half:
//   A 16×16 (row-major):   a0 = A[g][2t..2t+1]      a1 = A[g+8][2t..2t+1]
//                          a2 = A[g][2t+8..2t+9]    a3 = A[g+8][2t+8..2t+9]
//   B 16×8  (col-major):   b0 = B[2t..2t+1][g]      b1 = B[2t+8..2t+9][g]
//   C 16×8  (fp32):        c0, c1 = C[g][2t..2t+1]  c2, c3 = C[g+8][2t..2t+1]
// ---------------------------------------------------------------------------------------------

template <typename A, typename B> struct same_type { static constexpr bool value = false; };
template <typename A> struct same_type<A, A> { static constexpr bool value = true; };

// The one mma statement, for the 16-bit type named AB ("f16" or "bf16"): operands c, a, b0, b1 of run().
#define FLASH_MMA_M16N8K16(AB)                                                                  \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." AB "." AB ".f32 "                     \
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"             \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                 \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

template <typename T>
struct Mma {
    static constexpr bool BF16 = same_type<T, __nv_bfloat16>::value;
    static_assert(BF16 || same_type<T, __half>::value, "the tensor-core kernels take __half or __nv_bfloat16");

    // c[0..3] += A B for this lane's fragments (a: 4 registers; b0, b1).
    static __device__ __forceinline__ void run(float* c, const unsigned* a, unsigned b0, unsigned b1) {
#ifndef ROSETTA_HOST_EMULATION
        if constexpr (BF16) FLASH_MMA_M16N8K16("bf16");
        else FLASH_MMA_M16N8K16("f16");
#else
        rosetta_emu::mma_m16n8k16<T>(c, a, b0, b1);
#endif
    }

    // Two floats rounded to nearest-even T, lo in the low half: one 32-bit fragment register.
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        if constexpr (BF16) {
            __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
            return *reinterpret_cast<unsigned*>(&h);
        } else {
            __half2 h = __floats2half2_rn(lo, hi);
            return *reinterpret_cast<unsigned*>(&h);
        }
    }
};

#undef FLASH_MMA_M16N8K16

// x rounded to T, as its 16 bits.
template <typename T>
__device__ __forceinline__ unsigned short to_bits16(float x) {
    return (unsigned short)(Mma<T>::pack(x, 0.f) & 0xffffu);
}

// The A fragment of the 16×16 tile at `p` (row-major, `stride` elements per row) for this lane,
// by plain 32-bit shared-memory loads.
__device__ __forceinline__ void load_a_frag(unsigned* a, const unsigned short* p, int stride) {
    const int g = (threadIdx.x % 32) / 4;
    a[0] = *reinterpret_cast<const unsigned*>(p + g * stride);
    a[1] = *reinterpret_cast<const unsigned*>(p + (g + 8) * stride);
    a[2] = *reinterpret_cast<const unsigned*>(p + g * stride + 8);
    a[3] = *reinterpret_cast<const unsigned*>(p + (g + 8) * stride + 8);
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA, "Warp-level matrix load instruction:
// ldmatrix"): lane l gives the address of row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned);
// r[i] of lane (g = lane / 4, t = lane % 4) receives matrix i's elements (g, 2t..2t+1), or with
// .trans its elements (2t..2t+1, g).
// ---------------------------------------------------------------------------------------------
template <bool TRANS = false>
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const unsigned short* row) {
#ifndef ROSETTA_HOST_EMULATION
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(address));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(address));
#else
    rosetta_emu::ldmatrix_x4(r, row, TRANS);
#endif
}

// cp.async.cg.shared.global: 16 bytes from global to shared memory, bypassing the registers (and L1).
__device__ __forceinline__ void cp_async_16(unsigned short* dst, const unsigned short* src) {
#ifndef ROSETTA_HOST_EMULATION
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(src) : "memory");
#else
    rosetta_emu::cp_async_16(dst, src);
#endif
}

// Closes the group of this thread's cp.async issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifndef ROSETTA_HOST_EMULATION
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are pending (its own copies only:
// a __syncthreads must follow before other threads read them).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifndef ROSETTA_HOST_EMULATION
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace flash
