// Fused flash attention, forward and backward: the CuPy backend's attention kernels.
//
// Compiled at run time by cupy.RawModule (NVRTC), so this file holds only device code and
// includes nothing but common.cuh (conversions, warp reductions) and the CUDA fp16/bf16 headers. The readable specification of the
// algorithm is the tiled NumPy attention of the reference; the math below is the same.
//
// Layouts (all contiguous, row-major):
//   q, o, d_o, dq    (B, H,   L, d)        lse, delta   (B, H, L) float
//   k, v, dk, dv     (B, Hkv, S, d)        key_mask     (B, S) int8/bool, 1 = may attend, or null
// Query head h reads kv head h / (H / Hkv) (grouped kv heads). is_causal is top-left aligned as
// in torch SDPA: query i may see key j when j <= i.
//
// Forward (online softmax, one pass over the keys, fp32 state per query row):
//   s_ij = scale · q_i · k_j                (−∞ where masked)
//   m_i  = running max,  l_i = Σ_j exp(s_ij − m_i),  acc_i = Σ_j exp(s_ij − m_i) v_j
//   o_i  = acc_i / l_i,  lse_i = m_i + log l_i     (a fully masked row: o_i = 0, lse_i = −∞)
// Backward (recomputes P from lse instead of storing it):
//   δ_i   = Σ_d do_id · o_id                                    (flash_bwd_preprocess_*)
//   p_ij  = exp(s_ij − lse_i),  dp_ij = do_i · v_j,  ds_ij = p_ij (dp_ij − δ_i)
//   dv_j  = Σ_i p_ij do_i,  dk_j = scale Σ_i ds_ij q_i,  dq_i = scale Σ_j ds_ij k_j
// dk/dv of one key block are accumulated in registers over all query blocks and all query
// heads sharing the kv head; dq is accumulated with fp32 atomicAdd into a zeroed buffer
// (B, H, L, d) that flash_bwd_convert_dq_* rounds to the element type. fp16/bf16 run every
// product on tensor cores (bwd_mma, P and ds rounded to the element type before their
// products); float32 uses fp32 FMA throughout (bwd_simt).
//
// Entry points (extern "C", tag ∈ {f32, f16, bf16}, D ∈ {32, 64, 128}):
//   flash_fwd_<tag>_d<D>              grid (ceil(L / FWD_BLOCK_M), B·H), 128 threads
//                                     FWD_BLOCK_M = 64 (f16/bf16, tensor cores), 16 (f32)
//   flash_bwd_preprocess_<tag>_d<D>   grid ceil(B·H·L / 4), 128 threads (one warp per row)
//   flash_bwd_<tag>_d<D>              grid (ceil(S / BWD_BLOCK), B·Hkv), 128 threads
//                                     BWD_BLOCK = 64 (f16/bf16, tensor cores),
//                                     32 (f32, D ≤ 64), 16 (f32, D = 128)
//   flash_bwd_convert_dq_<tag>        grid ceil(n / 256), 256 threads

#include "common.cuh"

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
// Tensor-core pieces (fp16 / bf16): mma.sync m16n8k16, fp32 accumulators.
//
// Fragment layout per warp (g = lane / 4, t = lane % 4), 32-bit registers of two 16-bit values,
// the lower-indexed element in the low half:
//   A 16×16 (row-major):   a0 = A[g][2t..2t+1]      a1 = A[g+8][2t..2t+1]
//                          a2 = A[g][2t+8..2t+9]    a3 = A[g+8][2t+8..2t+9]
//   B 16×8  (col-major):   b0 = B[2t..2t+1][g]      b1 = B[2t+8..2t+9][g]
//   C 16×8  (fp32):        c0, c1 = C[g][2t..2t+1]  c2, c3 = C[g+8][2t..2t+1]
// ---------------------------------------------------------------------------------------------

template <typename T> struct Mma;

template <> struct Mma<__half> {
    static __device__ __forceinline__ void run(float* c, const unsigned* a, unsigned b0, unsigned b1) {
#ifndef ROSETTA_HOST_EMULATION
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else  // CPU tests: parity_tests/cuda_emulation/host_runtime.h emulates the instruction
        rosetta_emu::mma_m16n8k16<__half>(c, a, b0, b1);
#endif
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&h);
    }
};

template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float* c, const unsigned* a, unsigned b0, unsigned b1) {
#ifndef ROSETTA_HOST_EMULATION
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else  // CPU tests: parity_tests/cuda_emulation/host_runtime.h emulates the instruction
        rosetta_emu::mma_m16n8k16<__nv_bfloat16>(c, a, b0, b1);
#endif
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&h);
    }
};

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

// ---------------------------------------------------------------------------------------------
// Shared-memory fragment loads and asynchronous copies (sm_80+). Each PTX statement sits behind
// one of these functions; under ROSETTA_HOST_EMULATION parity_tests/cuda_emulation/host_runtime.h
// emulates it (ldmatrix as a warp collective; cp.async as a synchronous copy, commit / wait as
// no-ops, so the emulator cannot see a missing wait: every wait below is followed by __syncthreads,
// which it does check).
// ---------------------------------------------------------------------------------------------

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA, "Warp-level matrix load instruction:
// ldmatrix"): lane l gives the address of row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned);
// r[i] of lane (g = lane / 4, t = lane % 4) receives matrix i's elements (g, 2t..2t+1), or with
// .trans its elements (2t..2t+1, g).
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

// Forward with tensor cores: 4 warps × 16 query rows = 64 rows per block, keys in tiles of BN
// (64; 32 at D = 128 to fit two stages in 48 KB). K/V tiles are double-buffered: tile j + 1 is
// copied with cp.async while tile j is computed on; fragments come from shared memory by ldmatrix.
template <typename T, int D>
__device__ __forceinline__ void fwd_mma(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const signed char* __restrict__ key_mask, T* __restrict__ o,
                                        float* __restrict__ lse, int H, int Hkv, int L, int S, float scale,
                                        int causal) {
    constexpr int BM = 64, BN = D <= 64 ? 64 : 32, STAGES = 2, STRIDE = D + 8;
    constexpr int KT = D / 16, NT = BN / 8, DT = D / 8, TILE = BN * STRIDE;
    static_assert(STAGES * BN >= BM, "the Q tile is staged in the K buffers");
    static_assert(2 * STAGES * TILE * 2 <= 48 * 1024, "static shared memory");
    static_assert(KT % 2 == 0 && DT % 2 == 0, "ldmatrix.x4 covers two k-steps / two n-tiles");
    __shared__ __align__(16) unsigned short ks[STAGES * TILE];  // K tiles by stage; first holds the Q tile
    __shared__ __align__(16) unsigned short vs[STAGES * TILE];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int bh = blockIdx.y, b = bh / H, h = bh % H, kvh = h / (H / Hkv);
    // Query blocks in reverse launch order: under causal the last blocks see the most keys, and
    // starting them first shortens the tail of the grid (the result does not depend on the order).
    const int m0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const unsigned short* qbase = reinterpret_cast<const unsigned short*>(q) + (long long)bh * L * D;
    const unsigned short* kbase = reinterpret_cast<const unsigned short*>(k) + ((long long)b * Hkv + kvh) * S * D;
    const unsigned short* vbase = reinterpret_cast<const unsigned short*>(v) + ((long long)b * Hkv + kvh) * S * D;
    const long long mask_row = (long long)b * S;
    const float log2e = 1.4426950408889634f;
    const float scale_log2 = scale * log2e;  // scores kept in base 2: exp(x) = exp2(x · log2 e)

    // Q fragments of this warp's 16 rows stay in registers for the whole pass. ldmatrix.x4 matrices
    // 0..3 = rows 0-7 / 8-15 × cols 0-7, then rows 0-7 / 8-15 × cols 8-15: a0..a3 of the A fragment.
    copy_tile_async<BM, D>(ks, qbase, m0, L);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned qf[KT][4];
    {
        const unsigned short* qw = ks + (warp * 16 + lane % 16) * STRIDE + (lane / 16) * 8;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) ldmatrix_x4(qf[kt], qw + kt * 16);
    }
    __syncthreads();  // the Q tile is no longer read: the K stages may be filled

    const int row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
    float m_run[2] = {neg_inf(), neg_inf()};  // running max of base-2 scores
    float l_run[2] = {0.f, 0.f};
    float acc[DT][4];
#pragma unroll
    for (int nd = 0; nd < DT; ++nd) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.f;

    const int n_end = causal ? min(S, m0 + BM) : S;
    const int n_tiles = (n_end + BN - 1) / BN;
    if (n_tiles > 0) {
        copy_tile_async<BN, D>(ks, kbase, 0, S);
        copy_tile_async<BN, D>(vs, vbase, 0, S);
    }
    cp_async_commit();
    for (int tile = 0; tile < n_tiles; ++tile) {
        const int n0 = tile * BN;
        const unsigned short* kst = ks + (tile % STAGES) * TILE;
        const unsigned short* vst = vs + (tile % STAGES) * TILE;
        if (tile + 1 < n_tiles) {  // the other stage, free since the barrier that ended tile − 1
            copy_tile_async<BN, D>(ks + ((tile + 1) % STAGES) * TILE, kbase, n0 + BN, S);
            copy_tile_async<BN, D>(vs + ((tile + 1) % STAGES) * TILE, vbase, n0 + BN, S);
        }
        cp_async_commit();   // (possibly empty: keeps one group per tile)
        cp_async_wait<1>();  // this thread's copies of this tile have landed
        __syncthreads();     // ... and everyone's

        // S = Q Kᵀ for 16 rows × BN keys. B[k][n] = K[n][k]: one ldmatrix.x4 of rows nt·8.. and
        // 32 columns gives b0, b1 of two consecutive k-steps.
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            const unsigned short* kr = kst + (nt * 8 + lane % 8) * STRIDE + (lane / 8) * 8;
#pragma unroll
            for (int kp = 0; kp < KT / 2; ++kp) {
                unsigned kf[4];
                ldmatrix_x4(kf, kr + kp * 32);
                Mma<T>::run(s[nt], qf[2 * kp], kf[0], kf[1]);
                Mma<T>::run(s[nt], qf[2 * kp + 1], kf[2], kf[3]);
            }
        }

        // Mask, scale, online softmax (each row lives in the 4 lanes of one quad). The per-key test
        // is skipped (warp-uniformly) where no key of the tile can be masked for this warp's rows:
        // no key mask, the tile inside S, and under causal its last key <= the warp's first row.
        const bool unmasked = key_mask == nullptr && n0 + BN <= S && (!causal || n0 + BN - 1 <= m0 + warp * 16);
        float tile_max[2] = {neg_inf(), neg_inf()};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = e / 2, j = n0 + nt * 8 + 2 * t + (e % 2);
                float x = unmasked || key_allowed(key_mask, mask_row, row[r], j, S, causal) ? s[nt][e] * scale_log2
                                                                                            : neg_inf();
                s[nt][e] = x;
                tile_max[r] = fmaxf(tile_max[r], x);
            }
        }
        float alpha[2], m_use[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            float m_new = fmaxf(m_run[r], tile_max[r]);
            m_use[r] = (m_new == neg_inf()) ? 0.f : m_new;  // no ∞ − ∞ on a row masked so far
            alpha[r] = exp2f(m_run[r] - m_use[r]);         // 0 when m_run = −∞
            m_run[r] = m_new;
        }
        float tile_sum[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = e / 2;
                float p = exp2f(s[nt][e] - m_use[r]);  // exactly 0 where masked
                s[nt][e] = p;
                tile_sum[r] += p;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 1);
            tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 2);
            l_run[r] = l_run[r] * alpha[r] + tile_sum[r];
        }
#pragma unroll
        for (int nd = 0; nd < DT; ++nd) {
            acc[nd][0] *= alpha[0]; acc[nd][1] *= alpha[0];
            acc[nd][2] *= alpha[1]; acc[nd][3] *= alpha[1];
        }

        // acc += P V: the S accumulators of two adjacent n-tiles are exactly one A fragment.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            unsigned a[4];
            a[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
            a[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
            a[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            // B[k][n] = V[key k][feature n], read transposed: matrices keys 0-7 / 8-15 × features
            // nd·8.., then the same for nd + 1: b0, b1 of two consecutive n-tiles.
            const unsigned short* vr = vst + (kk * 16 + lane % 16) * STRIDE + (lane / 16) * 8;
#pragma unroll
            for (int nd = 0; nd < DT; nd += 2) {
                unsigned vf[4];
                ldmatrix_x4<true>(vf, vr + nd * 8);
                Mma<T>::run(acc[nd], a, vf[0], vf[1]);
                Mma<T>::run(acc[nd + 1], a, vf[2], vf[3]);
            }
        }
        __syncthreads();  // stage tile % STAGES is no longer read: the copy issued next iteration may refill it
    }

    // o = acc / l; a fully masked row has l = 0: o = 0, lse = −∞.
    const float ln2 = 0.6931471805599453f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (row[r] >= L) continue;
        float inv = l_run[r] > 0.f ? 1.f / l_run[r] : 0.f;
        T* orow = o + ((long long)bh * L + row[r]) * D;
#pragma unroll
        for (int nd = 0; nd < DT; ++nd) {
            unsigned packed = Mma<T>::pack(acc[nd][2 * r] * inv, acc[nd][2 * r + 1] * inv);
            *reinterpret_cast<unsigned*>(orow + nd * 8 + 2 * t) = packed;
        }
        if (t == 0) lse[(long long)bh * L + row[r]] = l_run[r] > 0.f ? (m_run[r] + log2f(l_run[r])) * ln2 : neg_inf();
    }
}

// ---------------------------------------------------------------------------------------------
// Forward with fp32 FMA (float): 4 warps × 4 rows = 16 query rows per block; keys in tiles of 32,
// lane j scores key j of the tile, each lane accumulates D / 32 output features.
// ---------------------------------------------------------------------------------------------
template <typename T, int D>
__device__ __forceinline__ void fwd_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const signed char* __restrict__ key_mask, T* __restrict__ o,
                                         float* __restrict__ lse, int H, int Hkv, int L, int S, float scale,
                                         int causal) {
    constexpr int ROWS = 4, BM = 4 * ROWS, BN = 32, DL = D / 32;
    __shared__ float qs[BM][D];
    __shared__ float ks[BN][D + 1];
    __shared__ float vs[BN][D];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int bh = blockIdx.y, b = bh / H, h = bh % H, kvh = h / (H / Hkv);
    const int m0 = blockIdx.x * BM;
    const T* qbase = q + (long long)bh * L * D;
    const T* kbase = k + ((long long)b * Hkv + kvh) * S * D;
    const T* vbase = v + ((long long)b * Hkv + kvh) * S * D;
    const long long mask_row = (long long)b * S;

    for (int idx = threadIdx.x; idx < BM * D; idx += FA_THREADS) {
        int r = idx / D, c = idx % D;
        qs[r][c] = (m0 + r < L) ? to_float(qbase[(long long)(m0 + r) * D + c]) : 0.f;
    }

    float m_run[ROWS], l_run[ROWS], acc[ROWS][DL];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        m_run[r] = neg_inf();
        l_run[r] = 0.f;
#pragma unroll
        for (int c = 0; c < DL; ++c) acc[r][c] = 0.f;
    }

    const int n_end = causal ? min(S, m0 + BM) : S;
    for (int n0 = 0; n0 < n_end; n0 += BN) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < BN * D; idx += FA_THREADS) {
            int r = idx / D, c = idx % D;
            bool in = n0 + r < S;
            ks[r][c] = in ? to_float(kbase[(long long)(n0 + r) * D + c]) : 0.f;
            vs[r][c] = in ? to_float(vbase[(long long)(n0 + r) * D + c]) : 0.f;
        }
        __syncthreads();

        const int j = n0 + lane;
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const int lr = warp * ROWS + r, i = m0 + lr;
            float s = neg_inf();
            if (key_allowed(key_mask, mask_row, i, j, S, causal)) {
                float dot = 0.f;
#pragma unroll 8
                for (int c = 0; c < D; ++c) dot = fmaf(qs[lr][c], ks[lane][c], dot);
                s = dot * scale;
            }
            float m_new = fmaxf(m_run[r], warp_max(s));
            float m_use = (m_new == neg_inf()) ? 0.f : m_new;
            float alpha = expf(m_run[r] - m_use);
            float p = expf(s - m_use);  // 0 where masked
            l_run[r] = l_run[r] * alpha + warp_sum(p);
            m_run[r] = m_new;
#pragma unroll
            for (int c = 0; c < DL; ++c) acc[r][c] *= alpha;
            for (int jj = 0; jj < BN; ++jj) {
                float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                for (int c = 0; c < DL; ++c) acc[r][c] = fmaf(pj, vs[jj][lane + 32 * c], acc[r][c]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int i = m0 + warp * ROWS + r;
        if (i >= L) continue;
        float inv = l_run[r] > 0.f ? 1.f / l_run[r] : 0.f;
#pragma unroll
        for (int c = 0; c < DL; ++c) o[((long long)bh * L + i) * D + lane + 32 * c] = from_float<T>(acc[r][c] * inv);
        if (lane == 0) lse[(long long)bh * L + i] = l_run[r] > 0.f ? m_run[r] + logf(l_run[r]) : neg_inf();
    }
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------

// δ_i = Σ_d do_id · o_id, one warp per row of the (B·H·L, D) matrices.
template <typename T, int D>
__device__ __forceinline__ void bwd_preprocess(const T* __restrict__ o, const T* __restrict__ d_o,
                                               float* __restrict__ delta, long long rows) {
    const long long rix = (long long)blockIdx.x * (FA_THREADS / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (rix >= rows) return;
    float sum = 0.f;
#pragma unroll
    for (int c = lane; c < D; c += 32) sum = fmaf(to_float(o[rix * D + c]), to_float(d_o[rix * D + c]), sum);
    sum = warp_sum(sum);
    if (lane == 0) delta[rix] = sum;
}

// dq, dk, dv by recomputation, fp32 FMA. One block owns BN keys of one kv head; it loops over the
// query heads that read that kv head and over all query blocks of BM = BN rows.
template <typename T, int D, int BN>
__device__ __forceinline__ void bwd_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const signed char* __restrict__ key_mask, const T* __restrict__ d_o,
                                         const float* __restrict__ lse, const float* __restrict__ delta,
                                         float* __restrict__ dq_accum, T* __restrict__ dk, T* __restrict__ dv,
                                         int H, int Hkv, int L, int S, float scale, int causal) {
    constexpr int BM = BN, TPK = FA_THREADS / BN, DPT = D / TPK;
    static_assert(FA_THREADS % BN == 0 && D % TPK == 0, "tile shape");
    __shared__ float ks[BN][D + 1];
    __shared__ float vs[BN][D + 1];
    __shared__ float qs[BM][D + 1];
    __shared__ float dos[BM][D + 1];
    __shared__ float ps[BM][BN + 1];
    __shared__ float dss[BM][BN + 1];
    __shared__ float lse_s[BM];
    __shared__ float delta_s[BM];
    __shared__ unsigned char key_ok[BN];

    const int tid = threadIdx.x;
    const int bk = blockIdx.y, b = bk / Hkv, kvh = bk % Hkv, group = H / Hkv;
    const int n0 = blockIdx.x * BN;
    const long long kv_off = ((long long)b * Hkv + kvh) * S * D;

    for (int idx = tid; idx < BN * D; idx += FA_THREADS) {
        int r = idx / D, c = idx % D;
        bool in = n0 + r < S;
        ks[r][c] = in ? to_float(k[kv_off + (long long)(n0 + r) * D + c]) : 0.f;
        vs[r][c] = in ? to_float(v[kv_off + (long long)(n0 + r) * D + c]) : 0.f;
    }
    for (int j = tid; j < BN; j += FA_THREADS)
        key_ok[j] = (n0 + j < S) && (key_mask == nullptr || key_mask[(long long)b * S + n0 + j] != 0);

    const int jl = tid / TPK, d0 = (tid % TPK) * DPT;  // phase 2: key jl, features d0..d0+DPT
    float dk_acc[DPT], dv_acc[DPT];
#pragma unroll
    for (int c = 0; c < DPT; ++c) dk_acc[c] = dv_acc[c] = 0.f;

    // Under the causal mask, query rows before n0 see none of these keys.
    const int m_begin = causal ? (n0 / BM) * BM : 0;
    for (int hg = 0; hg < group; ++hg) {
        const int h = kvh * group + hg;
        const long long q_off = ((long long)b * H + h) * L;  // row offset of (b, h)
        for (int m0 = m_begin; m0 < L; m0 += BM) {
            __syncthreads();  // previous tile's shared data no longer read (and K/V/key_ok loaded)
            for (int idx = tid; idx < BM * D; idx += FA_THREADS) {
                int r = idx / D, c = idx % D;
                bool in = m0 + r < L;
                qs[r][c] = in ? to_float(q[(q_off + m0 + r) * D + c]) : 0.f;
                dos[r][c] = in ? to_float(d_o[(q_off + m0 + r) * D + c]) : 0.f;
            }
            for (int r = tid; r < BM; r += FA_THREADS) {
                bool in = m0 + r < L;
                lse_s[r] = in ? lse[q_off + m0 + r] : neg_inf();
                delta_s[r] = in ? delta[q_off + m0 + r] : 0.f;
            }
            __syncthreads();

            // Phase 1: p_ij = exp(s_ij − lse_i),  ds_ij = p_ij (do_i · v_j − δ_i).
            for (int e = tid; e < BM * BN; e += FA_THREADS) {
                int i = e / BN, j = e % BN, gi = m0 + i, gj = n0 + j;
                float p = 0.f, ds = 0.f;
                if (key_ok[j] && gi < L && (!causal || gj <= gi) && lse_s[i] != neg_inf()) {
                    float dot = 0.f, dp = 0.f;
#pragma unroll 8
                    for (int c = 0; c < D; ++c) {
                        dot = fmaf(qs[i][c], ks[j][c], dot);
                        dp = fmaf(dos[i][c], vs[j][c], dp);
                    }
                    p = expf(dot * scale - lse_s[i]);
                    ds = p * (dp - delta_s[i]);
                }
                ps[i][j] = p;
                dss[i][j] = ds;
            }
            __syncthreads();

            // Phase 2: dv_j += Σ_i p_ij do_i,  dk_j += Σ_i ds_ij q_i (scale applied at the end).
            for (int i = 0; i < BM; ++i) {
                float p = ps[i][jl], ds = dss[i][jl];
#pragma unroll
                for (int c = 0; c < DPT; ++c) {
                    dv_acc[c] = fmaf(p, dos[i][d0 + c], dv_acc[c]);
                    dk_acc[c] = fmaf(ds, qs[i][d0 + c], dk_acc[c]);
                }
            }

            // Phase 3: dq_i += scale Σ_j ds_ij k_j (fp32 atomics: other key blocks add to the same rows).
            const int il = tid / TPK;
            if (m0 + il < L) {
                float part[DPT];
#pragma unroll
                for (int c = 0; c < DPT; ++c) part[c] = 0.f;
                for (int j = 0; j < BN; ++j) {
                    float ds = dss[il][j];
#pragma unroll
                    for (int c = 0; c < DPT; ++c) part[c] = fmaf(ds, ks[j][d0 + c], part[c]);
                }
                float* dq_row = dq_accum + (q_off + m0 + il) * D + d0;
#pragma unroll
                for (int c = 0; c < DPT; ++c) atomicAdd(dq_row + c, part[c] * scale);
            }
        }
    }

    if (n0 + jl < S) {
        const long long off = kv_off + (long long)(n0 + jl) * D + d0;
#pragma unroll
        for (int c = 0; c < DPT; ++c) {
            dk[off + c] = from_float<T>(dk_acc[c] * scale);
            dv[off + c] = from_float<T>(dv_acc[c]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward with tensor cores (fp16 / bf16), FlashAttention-2 style. One block owns BN = 64 keys of
// one (batch, kv head); warp w owns the 16 keys 16w..16w+15 and keeps their dK and dV rows (16 × D
// each) in fp32 mma accumulators for the whole pass. The block loops over the query heads that
// read its kv head and over query tiles of BM rows (from the diagonal on when causal); per tile,
// two barriers:
//   phase 1, each warp on its own 16 keys, in chunks of 16 queries:
//     Sᵀ = K_w Qᵀ, dPᵀ = V_w dOᵀ                  (mma; the B fragments are rows of Q and dO)
//     Pᵀ = exp(scale·Sᵀ − lse) (0 where masked), dSᵀ = Pᵀ ⊙ (dPᵀ − δ)      (fp32, in registers)
//     dV_w += Pᵀ dO, dK_w += dSᵀ Q               (the Sᵀ/dPᵀ accumulators of the two 8-query tiles
//                                                 are one A fragment, as P in the forward; dO and
//                                                 Q are read transposed from shared memory)
//     dS (16-bit) → shared memory, transposed: ds_s[query][key]
//   barrier; then the next tile's Q, dO, lse, δ are fetched into registers (TileFetch), and
//   phase 2, warp w on dQ rows 16·(w % (BM/16)).. and column group w / (BM/16):
//     dQ_tile = dS K (mma, K read transposed), scale · dQ_tile → fp32 atomicAdd into dq_accum;
//   the fetched tile is stored to shared memory (nothing reads Q, dO, lse, δ after the barrier).
// P and dS enter their products rounded to T (as in FlashAttention-2); every sum is fp32.
// Static shared memory (16-bit tiles, rows padded by 8 elements against bank conflicts):
//   K, V 2·64·(D+8)·2 B; Q, dO 2·BM·(D+8)·2 B; dS BM·72·2 B; lse, δ 8·BM B; a flag 4 B:
//   D = 32, BM = 64: 30212 B    D = 64, BM = 64: 46596 B    D = 128, BM = 16: 45956 B
// D <= 64 keeps the warp's K and V A fragments in registers; D = 128 rereads them (registers).
// ---------------------------------------------------------------------------------------------

// The A fragment of the 16×16 tile at `p` (row-major, `stride` elements per row) for this lane.
__device__ __forceinline__ void load_a_frag(unsigned* a, const unsigned short* p, int stride) {
    const int g = (threadIdx.x % 32) / 4;
    a[0] = *reinterpret_cast<const unsigned*>(p + g * stride);
    a[1] = *reinterpret_cast<const unsigned*>(p + (g + 8) * stride);
    a[2] = *reinterpret_cast<const unsigned*>(p + g * stride + 8);
    a[3] = *reinterpret_cast<const unsigned*>(p + (g + 8) * stride + 8);
}

template <typename T>
__device__ __forceinline__ unsigned short to_bits16(float x) {
    return (unsigned short)(Mma<T>::pack(x, 0.f) & 0xffffu);
}

// The Q, dO, lse and δ of one backward tile (ROWS query rows) in registers, between a fetch from
// global memory and the store to shared memory, so that the loads overlap other work. Rows at or
// past L are zero, with lse = +∞ (base 2) so that P = 0 there; so is a fully masked row (lse = −∞).
template <int ROWS, int D>
struct TileFetch {
    static constexpr int CHUNKS = D / 8, PER_THREAD = ROWS * CHUNKS / FA_THREADS;  // 16-byte pieces
    static_assert(ROWS * CHUNKS % FA_THREADS == 0 && ROWS <= FA_THREADS, "tile shape");
    uint4 qv[PER_THREAD], dov[PER_THREAD];
    float lse2, delta;

    template <typename T>
    __device__ __forceinline__ void fetch(const T* q, const T* d_o, const float* lse, const float* delta_in,
                                          long long row0, int m0, int L) {
        const uint4* qsrc = reinterpret_cast<const uint4*>(q + row0 * D);
        const uint4* dsrc = reinterpret_cast<const uint4*>(d_o + row0 * D);
#pragma unroll
        for (int x = 0; x < PER_THREAD; ++x) {
            const int idx = threadIdx.x + x * FA_THREADS, r = idx / CHUNKS;
            const bool in = m0 + r < L;
            const long long at = (long long)(m0 + r) * CHUNKS + idx % CHUNKS;
            qv[x] = in ? qsrc[at] : make_uint4(0u, 0u, 0u, 0u);
            dov[x] = in ? dsrc[at] : make_uint4(0u, 0u, 0u, 0u);
        }
        const int r = threadIdx.x;
        const bool in = r < ROWS && m0 + r < L;
        const float l = in ? lse[row0 + m0 + r] : neg_inf();
        lse2 = l == neg_inf() ? __int_as_float(0x7f800000) : l * 1.4426950408889634f;
        delta = in ? delta_in[row0 + m0 + r] : 0.f;
    }

    __device__ __forceinline__ void store(unsigned short* qs, unsigned short* dos, float* lse_s, float* delta_s) const {
#pragma unroll
        for (int x = 0; x < PER_THREAD; ++x) {
            const int idx = threadIdx.x + x * FA_THREADS, r = idx / CHUNKS, c = (idx % CHUNKS) * 8;
            *reinterpret_cast<uint4*>(qs + r * (D + 8) + c) = qv[x];
            *reinterpret_cast<uint4*>(dos + r * (D + 8) + c) = dov[x];
        }
        if (threadIdx.x < ROWS) {
            lse_s[threadIdx.x] = lse2;
            delta_s[threadIdx.x] = delta;
        }
    }
};

template <typename T, int D, int BM>
__device__ __forceinline__ void bwd_mma(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const signed char* __restrict__ key_mask, const T* __restrict__ d_o,
                                        const float* __restrict__ lse, const float* __restrict__ delta,
                                        float* __restrict__ dq_accum, T* __restrict__ dk, T* __restrict__ dv,
                                        int H, int Hkv, int L, int S, float scale, int causal) {
    constexpr int BN = 64, STRIDE = D + 8, DS_STRIDE = BN + 8;
    constexpr int KT = D / 16, DT = D / 8;
    constexpr bool KV_REGS = D <= 64;
    constexpr int WM = BM / 16, WD = 4 / WM, DQ_COLS = D / WD, DQT = DQ_COLS / 8;  // phase 2 warp grid
    static_assert(BN == 16 * (FA_THREADS / 32), "one 16-key slice per warp");
    static_assert(BM % 16 == 0 && 4 % WM == 0 && DQ_COLS % 8 == 0, "tile shape");
    __shared__ __align__(16) unsigned short ks[BN * STRIDE];
    __shared__ __align__(16) unsigned short vs[BN * STRIDE];
    __shared__ __align__(16) unsigned short qs[BM * STRIDE];
    __shared__ __align__(16) unsigned short dos[BM * STRIDE];
    __shared__ __align__(16) unsigned short ds_s[BM * DS_STRIDE];
    __shared__ float lse_s[BM];    // lse in base 2; +∞ for a fully masked row or a row past L (P = 0)
    __shared__ float delta_s[BM];
    __shared__ int any_key;        // whether some key of the block may be attended at all

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int bk = blockIdx.y, b = bk / Hkv, kvh = bk % Hkv, group = H / Hkv;
    const int n0 = blockIdx.x * BN;
    const long long kv_off = ((long long)b * Hkv + kvh) * S * D;
    const float log2e = 1.4426950408889634f;
    const float scale_log2 = scale * log2e;

    if (tid == 0) any_key = 0;
    load_tile_16bit<BN, D>(ks, reinterpret_cast<const unsigned short*>(k) + kv_off, n0, S);
    load_tile_16bit<BN, D>(vs, reinterpret_cast<const unsigned short*>(v) + kv_off, n0, S);

    // The two keys of this thread's accumulator rows (g and g + 8 of the warp's slice).
    const int key[2] = {n0 + warp * 16 + g, n0 + warp * 16 + g + 8};
    bool key_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r)
        key_ok[r] = key[r] < S && (key_mask == nullptr || key_mask[(long long)b * S + key[r]] != 0);
    __syncthreads();  // any_key = 0 is seen before anyone sets it
    if (key_ok[0] || key_ok[1]) any_key = 1;

    float dk_acc[DT][4], dv_acc[DT][4];
#pragma unroll
    for (int nd = 0; nd < DT; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk_acc[nd][e] = dv_acc[nd][e] = 0.f;

    const unsigned short* kw = ks + (warp * 16) * STRIDE;  // this warp's keys: A fragments of Sᵀ
    const unsigned short* vw = vs + (warp * 16) * STRIDE;  // and of dPᵀ
    const int wm = warp % WM, dq_col0 = (warp / WM) * DQ_COLS;
    // Under the causal mask, query rows before n0 see none of these keys.
    const int m_begin = causal ? (n0 / BM) * BM : 0;
    __syncthreads();  // K, V and any_key complete
    const int m_end = any_key ? L : m_begin;  // a block of masked keys only: dK = dV = 0

    // D <= 64: the warp's K and V A fragments stay in registers (D/4 each); D = 128 rereads them.
    unsigned kf[KV_REGS ? KT : 1][4], vf[KV_REGS ? KT : 1][4];
    if constexpr (KV_REGS) {
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
            load_a_frag(kf[kt], kw + kt * 16 + 2 * t, STRIDE);
            load_a_frag(vf[kt], vw + kt * 16 + 2 * t, STRIDE);
        }
    }

    // The tiles, flattened: tile `it` is query rows m_begin + (it % m_tiles)·BM.. of query head
    // kvh·group + it / m_tiles. The next tile's Q, dO, lse, δ are fetched into registers during the
    // current tile's phase 2 and stored to shared memory after it (Q, dO, lse and δ are no longer
    // read then; phase 2 reads only ds_s and ks).
    const int m_tiles = m_end > m_begin ? (m_end - m_begin + BM - 1) / BM : 0, n_tiles = group * m_tiles;
    TileFetch<BM, D> next;
    auto fetch = [&](int it) {
        const long long r0 = ((long long)b * H + kvh * group + it / m_tiles) * L;
        next.fetch(q, d_o, lse, delta, r0, m_begin + (it % m_tiles) * BM, L);
    };
    if (n_tiles > 0) {
        fetch(0);
        next.store(qs, dos, lse_s, delta_s);
    }
    for (int it = 0; it < n_tiles; ++it) {
        const long long row0 = ((long long)b * H + kvh * group + it / m_tiles) * L;  // first row of (b, h)
        const int m0 = m_begin + (it % m_tiles) * BM;
        __syncthreads();  // Q, dO, lse, δ of this tile stored; ds_s of the previous tile no longer read

        // Phase 1, in chunks of 16 queries: Sᵀ and dPᵀ (16 keys × 16 queries each), Pᵀ and dSᵀ,
        // then dV += Pᵀ dO and dK += dSᵀ Q over those 16 queries.
#pragma unroll 1
        for (int kc = 0; kc < BM / 16; ++kc) {
            float s[2][4], dp[2][4];
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[h2][e] = dp[h2][e] = 0.f;
#pragma unroll
            for (int kt = 0; kt < KT; ++kt) {
                const int c = kt * 16 + 2 * t;
                unsigned ka[4], va[4];
                if constexpr (KV_REGS) {
#pragma unroll
                    for (int x = 0; x < 4; ++x) ka[x] = kf[kt][x], va[x] = vf[kt][x];
                } else {
                    load_a_frag(ka, kw + c, STRIDE);
                    load_a_frag(va, vw + c, STRIDE);
                }
#pragma unroll
                for (int h2 = 0; h2 < 2; ++h2) {  // B[d][query] = Q[query][d]: rows of Q and dO
                    const unsigned short* qr = qs + (kc * 16 + h2 * 8 + g) * STRIDE + c;
                    const unsigned short* dr = dos + (kc * 16 + h2 * 8 + g) * STRIDE + c;
                    Mma<T>::run(s[h2], ka, *reinterpret_cast<const unsigned*>(qr),
                                *reinterpret_cast<const unsigned*>(qr + 8));
                    Mma<T>::run(dp[h2], va, *reinterpret_cast<const unsigned*>(dr),
                                *reinterpret_cast<const unsigned*>(dr + 8));
                }
            }

            // Pᵀ (into s), dSᵀ (into dp); element e of s[h2]: key row e / 2, query il.
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = e / 2, il = kc * 16 + h2 * 8 + 2 * t + (e % 2);
                    const bool ok = key_ok[r] && (!causal || key[r] <= m0 + il);
                    const float p = ok ? exp2f(s[h2][e] * scale_log2 - lse_s[il]) : 0.f;
                    s[h2][e] = p;
                    dp[h2][e] = p * (dp[h2][e] - delta_s[il]);
                    ds_s[il * DS_STRIDE + warp * 16 + g + 8 * r] = to_bits16<T>(dp[h2][e]);
                }
            }

            // The accumulators of the two 8-query tiles are one A fragment (keys × queries), as P
            // in the forward; dO and Q are read transposed (B[query][d]).
            unsigned pa[4], sa[4];
            pa[0] = Mma<T>::pack(s[0][0], s[0][1]);
            pa[1] = Mma<T>::pack(s[0][2], s[0][3]);
            pa[2] = Mma<T>::pack(s[1][0], s[1][1]);
            pa[3] = Mma<T>::pack(s[1][2], s[1][3]);
            sa[0] = Mma<T>::pack(dp[0][0], dp[0][1]);
            sa[1] = Mma<T>::pack(dp[0][2], dp[0][3]);
            sa[2] = Mma<T>::pack(dp[1][0], dp[1][1]);
            sa[3] = Mma<T>::pack(dp[1][2], dp[1][3]);
            // (ldmatrix.x4.trans of rows kc·16 + 0-7 / 8-15 × columns nd·8.. and (nd + 1)·8..: b0, b1
            // of n-tiles nd and nd + 1, as V in the forward.)
            const int tr = (kc * 16 + lane % 16) * STRIDE + (lane / 16) * 8;
#pragma unroll
            for (int nd = 0; nd < DT; nd += 2) {
                unsigned bf[4];
                ldmatrix_x4<true>(bf, dos + tr + nd * 8);
                Mma<T>::run(dv_acc[nd], pa, bf[0], bf[1]);
                Mma<T>::run(dv_acc[nd + 1], pa, bf[2], bf[3]);
                ldmatrix_x4<true>(bf, qs + tr + nd * 8);
                Mma<T>::run(dk_acc[nd], sa, bf[0], bf[1]);
                Mma<T>::run(dk_acc[nd + 1], sa, bf[2], bf[3]);
            }
        }
        __syncthreads();  // ds_s complete; Q, dO, lse, δ no longer read
        if (it + 1 < n_tiles) fetch(it + 1);

        // Phase 2: dQ rows 16·wm.. (+16), columns dq_col0.. (+DQ_COLS) += scale · dS K.
        float dq[DQT][4];
#pragma unroll
        for (int nd = 0; nd < DQT; ++nd) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            const unsigned short* ar = ds_s + (wm * 16 + g) * DS_STRIDE + kk * 16 + 2 * t;
            unsigned a[4];
            a[0] = *reinterpret_cast<const unsigned*>(ar);
            a[1] = *reinterpret_cast<const unsigned*>(ar + 8 * DS_STRIDE);
            a[2] = *reinterpret_cast<const unsigned*>(ar + 8);
            a[3] = *reinterpret_cast<const unsigned*>(ar + 8 * DS_STRIDE + 8);
            const unsigned short* kr = ks + (kk * 16 + lane % 16) * STRIDE + dq_col0 + (lane / 16) * 8;
#pragma unroll
            for (int nd = 0; nd < DQT; nd += 2) {
                unsigned bf[4];
                ldmatrix_x4<true>(bf, kr + nd * 8);
                Mma<T>::run(dq[nd], a, bf[0], bf[1]);
                Mma<T>::run(dq[nd + 1], a, bf[2], bf[3]);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int i = m0 + wm * 16 + g + 8 * r;
            if (i >= L) continue;
            float* dq_row = dq_accum + (row0 + i) * D + dq_col0 + 2 * t;
#pragma unroll
            for (int nd = 0; nd < DQT; ++nd) {
                atomicAdd(dq_row + nd * 8, dq[nd][2 * r] * scale);
                atomicAdd(dq_row + nd * 8 + 1, dq[nd][2 * r + 1] * scale);
            }
        }
        if (it + 1 < n_tiles) next.store(qs, dos, lse_s, delta_s);
    }

    // dK = scale · Σ dSᵀ Q, dV = Σ Pᵀ dO for this thread's two keys.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (key[r] >= S) continue;
        const long long off = kv_off + (long long)key[r] * D + 2 * t;
#pragma unroll
        for (int nd = 0; nd < DT; ++nd) {
            *reinterpret_cast<unsigned*>(dk + off + nd * 8) = Mma<T>::pack(dk_acc[nd][2 * r] * scale, dk_acc[nd][2 * r + 1] * scale);
            *reinterpret_cast<unsigned*>(dv + off + nd * 8) = Mma<T>::pack(dv_acc[nd][2 * r], dv_acc[nd][2 * r + 1]);
        }
    }
}

template <typename T>
__device__ __forceinline__ void convert_dq(const float* __restrict__ src, T* __restrict__ dst, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = from_float<T>(src[i]);
}

}  // namespace flash

// ---------------------------------------------------------------------------------------------
// extern "C" entry points (unmangled names for cupy.RawModule.get_function).
// ---------------------------------------------------------------------------------------------

#define FA_FWD_ARGS(T)                                                                                   \
    const T *q, const T *k, const T *v, const signed char *key_mask, T *o, float *lse, int H, int Hkv, \
        int L, int S, float scale, int causal
#define FA_FWD_PASS q, k, v, key_mask, o, lse, H, Hkv, L, S, scale, causal

#define FA_BWD_ARGS(T)                                                                                      \
    const T *q, const T *k, const T *v, const signed char *key_mask, const T *d_o, const float *lse,      \
        const float *delta, float *dq_accum, T *dk, T *dv, int H, int Hkv, int L, int S, float scale, \
        int causal
#define FA_BWD_PASS q, k, v, key_mask, d_o, lse, delta, dq_accum, dk, dv, H, Hkv, L, S, scale, causal

#define FA_DEFINE_PREPROCESS(T, TAG, D)                                                                        \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                               \
        flash_bwd_preprocess_##TAG##_d##D(const T *o, const T *d_o, float *delta, long long rows) {            \
        flash::bwd_preprocess<T, D>(o, d_o, delta, rows);                                                      \
    }

// Tensor cores (fp16 / bf16); BM = query rows per backward tile (the backward's key block is 64).
#define FA_DEFINE_MMA(T, TAG, D, BM)                                                                       \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_fwd_##TAG##_d##D(FA_FWD_ARGS(T)) { \
        flash::fwd_mma<T, D>(FA_FWD_PASS);                                                                 \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_bwd_##TAG##_d##D(FA_BWD_ARGS(T)) { \
        flash::bwd_mma<T, D, BM>(FA_BWD_PASS);                                                             \
    }                                                                                                      \
    FA_DEFINE_PREPROCESS(T, TAG, D)

// fp32 FMA (float); BN = keys (and query rows) per backward block.
#define FA_DEFINE_SIMT(T, TAG, D, BN)                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_fwd_##TAG##_d##D(FA_FWD_ARGS(T)) { \
        flash::fwd_simt<T, D>(FA_FWD_PASS);                                                                \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_bwd_##TAG##_d##D(FA_BWD_ARGS(T)) { \
        flash::bwd_simt<T, D, BN>(FA_BWD_PASS);                                                            \
    }                                                                                                      \
    FA_DEFINE_PREPROCESS(T, TAG, D)

FA_DEFINE_SIMT(float, f32, 32, 32)
FA_DEFINE_SIMT(float, f32, 64, 32)
FA_DEFINE_SIMT(float, f32, 128, 16)
FA_DEFINE_MMA(__half, f16, 32, 64)
FA_DEFINE_MMA(__half, f16, 64, 64)
FA_DEFINE_MMA(__half, f16, 128, 16)
FA_DEFINE_MMA(__nv_bfloat16, bf16, 32, 64)
FA_DEFINE_MMA(__nv_bfloat16, bf16, 64, 64)
FA_DEFINE_MMA(__nv_bfloat16, bf16, 128, 16)

#define FA_DEFINE_CONVERT(T, TAG)                                                                         \
    extern "C" __global__ void flash_bwd_convert_dq_##TAG(const float *src, T *dst, long long n) {       \
        flash::convert_dq<T>(src, dst, n);                                                                \
    }

FA_DEFINE_CONVERT(__half, f16)
FA_DEFINE_CONVERT(__nv_bfloat16, bf16)
