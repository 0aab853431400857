// Fused flash attention: what the forward (flash_attention_fwd.cu) and the backward
// (flash_attention_bwd.cu) share: the layouts, the mask rule, the tile loaders.
//
// Both files are compiled at run time by cupy.RawModule (NVRTC), so they hold only device code and
// include nothing but this header, mma.cuh (tensor-core primitives), common.cuh (conversions, warp
// reductions) and the CUDA fp16/bf16 headers. The readable specification of the algorithm is the
// tiled NumPy attention of the reference (reference/flash_attention.py); the math is the same.
// accelerated/cupy/lab.py runs one kernel against it (kernels/README.md).
//
// Layouts (all contiguous, row-major):
//   q, o, d_o, dq    (B, H,   L, d)        lse, delta   (B, H, L) float
//   k, v, dk, dv     (B, Hkv, S, d)        key_mask     (B, S) int8/bool, 1 = may attend, or null
// Query head h reads kv head h / (H / Hkv) (grouped kv heads). is_causal is top-left aligned as
// in torch SDPA: query i may see key j when j <= i.
//
// Forward (online softmax, one pass over the keys, fp32 state per query row; the letters are the
// reference's: A the scores, P the probabilities, S the key length):
//   a_ij = scale · q_i · k_j                (−∞ where masked)
//   m_i  = running max,  l_i = Σ_j exp(a_ij − m_i),  acc_i = Σ_j exp(a_ij − m_i) v_j
//   o_i  = acc_i / l_i,  lse_i = m_i + log l_i     (a fully masked row: o_i = 0, lse_i = −∞)
// Backward (recomputes P from lse instead of storing it):
//   δ_i   = Σ_d do_id · o_id                                    (flash_bwd_preprocess_*)
//   p_ij  = exp(a_ij − lse_i),  dp_ij = do_i · v_j,  da_ij = p_ij (dp_ij − δ_i)
//   dv_j  = Σ_i p_ij do_i,  dk_j = scale Σ_i da_ij q_i,  dq_i = scale Σ_j da_ij k_j
// Every kernel keeps a_ij and lse_i in these natural-log units, a_ij rounded once to fp32
// (__fmul_rn(q · k, scale)) in the forward and the backward alike: with both bitwise equal and
// lse_i >= max_j a_ij, p_ij <= 1 whatever the magnitude of the scores (at |a| ~ 1e8 the fp32 ulp
// is 8, and a score or an lse rounded once more, e.g. converted to base 2, is off by several units
// of the exponent). Where a base-2 exponential is faster, it takes the difference: exp2((a − m) log2 e).
// dk/dv of one key block are accumulated in registers over all query blocks and all query
// heads sharing the kv head; dq is accumulated with fp32 atomicAdd into a zeroed buffer
// (B, H, L, d) that flash_bwd_convert_dq_* rounds to the element type. fp16/bf16 run every
// product on tensor cores (fwd_mma, bwd_mma; P and dA rounded to the element type before their
// products); float32 uses fp32 FMA throughout (fwd_simt, bwd_simt).
//
// Entry points (extern "C", tag ∈ {f32, f16, bf16}, D ∈ {32, 64, 128}), all 128 threads a block:
//   flash_attention_fwd.cu
//     flash_fwd_<tag>_d<D>              grid (ceil(L / FWD_BLOCK_M), B·H)
//                                       FWD_BLOCK_M = 64 (f16/bf16, tensor cores), 16 (f32)
//   flash_attention_bwd.cu
//     flash_bwd_preprocess_<tag>_d<D>   grid ceil(B·H·L / 4) (one warp per row)
//     flash_bwd_<tag>_d<D>              grid (ceil(S / BWD_BLOCK), B·Hkv)
//                                       BWD_BLOCK = 64 (f16/bf16, tensor cores),
//                                       FA_BWD_SIMT_BN_D<D> (f32: 32, or 16 at D = 128)
//     flash_bwd_convert_dq_<tag>        grid ceil(n / 256), 256 threads (f16, bf16)
// Tile sizes that are a compile-time choice are macros with defaults (FA_FWD_MMA_BN_D<D>,
// FA_BWD_MMA_BM_D<D>, FA_BWD_SIMT_BN_D<D>): the kernel lab overrides them with -D/#define;
// accelerated/cupy/flash_attention_kernels.py (TILES) lists the defaults and the allowed values.
#pragma once

#include "mma.cuh"

#define FA_THREADS 128

namespace flash {

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// Whether key j may be attended by query i (both global indices within their sequences).
__device__ __forceinline__ bool key_allowed(const signed char* key_mask, long long mask_row, int i, int j,
                                            int S, int causal) {
    if (j >= S) return false;
    if (causal && j > i) return false;
    if (key_mask != nullptr && key_mask[mask_row + j] == 0) return false;
    return true;
}

// ---------------------------------------------------------------------------------------------
// Tile loaders: rows of a (n, D) 16-bit matrix into a shared tile[ROWS][D + 8] (rows padded by 8
// elements against bank conflicts), in 16-byte pieces.
// ---------------------------------------------------------------------------------------------

// Copy `rows` rows (from row0) of a (n, D) 16-bit matrix into shared tile[ROWS][D + 8] in 16-byte
// pieces; rows at or past n are zero.
template <int ROWS, int D>
__device__ __forceinline__ void load_tile_16bit(unsigned short* tile, const unsigned short* src, int row0, int n) {
    constexpr int STRIDE = D + 8;
    constexpr int CHUNKS = D / 8;  // 16-byte pieces per row
    for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += FA_THREADS) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * 8;
        uint4 value = make_uint4(0u, 0u, 0u, 0u);
        if (row0 + r < n) value = *reinterpret_cast<const uint4*>(src + (long long)(row0 + r) * D + c);
        *reinterpret_cast<uint4*>(tile + r * STRIDE + c) = value;
    }
}

// Issues the copy of `rows` rows (from row0) of a (n, D) 16-bit matrix into shared tile[ROWS][D + 8]
// in 16-byte cp.async pieces; rows at or past n are zeroed with plain stores.
template <int ROWS, int D>
__device__ __forceinline__ void copy_tile_async(unsigned short* tile, const unsigned short* src, int row0, int n) {
    constexpr int STRIDE = D + 8;
    constexpr int CHUNKS = D / 8;                  // 16-byte pieces per row
    constexpr int STEP = FA_THREADS / CHUNKS;      // rows per pass of the block
    static_assert(FA_THREADS % CHUNKS == 0 && ROWS % STEP == 0, "whole rows per pass, whole passes per tile");
    const int r0 = threadIdx.x / CHUNKS, c = (threadIdx.x % CHUNKS) * 8;
    unsigned short* dst = tile + r0 * STRIDE + c;
    const unsigned short* from = src + (long long)(row0 + r0) * D + c;
#pragma unroll 1
    for (int x = 0; x < ROWS / STEP; ++x) {
        if (row0 + r0 + x * STEP < n) cp_async_16(dst + x * STEP * STRIDE, from + x * STEP * D);
        else *reinterpret_cast<uint4*>(dst + x * STEP * STRIDE) = make_uint4(0u, 0u, 0u, 0u);
    }
}

}  // namespace flash
