// Fused flash attention, forward: flash_fwd_<tag>_d<D> (see flash_attention.cuh for the layouts,
// the algorithm and every entry point of the pair of files).
//
//   fwd_mma   fp16 / bf16 on tensor cores: 64 query rows per block, keys in double-buffered tiles
//             of FA_FWD_MMA_BN_D<D> (cp.async, ldmatrix, mma.sync)
//   fwd_simt  float32 on fp32 FMA: 16 query rows per block, keys in tiles of 32

#include "flash_attention.cuh"

// Keys per tile of the tensor-core forward, by head dim (a compile-time choice; the lab overrides
// it). Two K and two V stages of BN × (D + 8) 16-bit elements must fit 48 KB of static shared
// memory, and two stages must hold the 64-row Q tile: BN ∈ {32, 64, 128} at D = 32, {32, 64} at
// D = 64, {32} at D = 128.
#ifndef FA_FWD_MMA_BN_D32
#define FA_FWD_MMA_BN_D32 64
#endif
#ifndef FA_FWD_MMA_BN_D64
#define FA_FWD_MMA_BN_D64 64
#endif
#ifndef FA_FWD_MMA_BN_D128
#define FA_FWD_MMA_BN_D128 32
#endif

namespace flash {

// Forward with tensor cores: 4 warps × 16 query rows = 64 rows per block, keys in tiles of BN
// (FA_FWD_MMA_BN_D<D>: 64; 32 at D = 128 to fit two stages in 48 KB). K/V tiles are double-buffered:
// tile j + 1 is copied with cp.async while tile j is computed on; fragments come from shared memory
// by ldmatrix.
template <typename T, int D, int BN>
__device__ __forceinline__ void fwd_mma(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const signed char* __restrict__ key_mask, T* __restrict__ o,
                                        float* __restrict__ lse, int H, int Hkv, int L, int S, float scale,
                                        int causal) {
    constexpr int BM = 64, STAGES = 2, STRIDE = D + 8;
    constexpr int KT = D / 16, NT = BN / 8, DT = D / 8, TILE = BN * STRIDE;
    static_assert(STAGES * BN >= BM, "the Q tile is staged in the K buffers");
    static_assert(2 * STAGES * TILE * 2 <= 48 * 1024, "static shared memory");
    static_assert(KT % 2 == 0 && DT % 2 == 0, "ldmatrix.x4 covers two k-steps / two n-tiles");
    static_assert(BN % 16 == 0, "P V takes the keys 16 at a time");
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
    const float log2e = 1.4426950408889634f;  // exp(x) = exp2(x · log2 e), on the difference x − m

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
    float m_run[2] = {neg_inf(), neg_inf()};  // running max of the scores a = scale · q · k
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

        // Q Kᵀ for 16 rows × BN keys. B[k][n] = K[n][k]: one ldmatrix.x4 of rows nt·8.. and
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
        // The scores a = scale · (q · k) stay in natural-log units, rounded once (__fmul_rn: never
        // fused into the subtraction below), as the backward recomputes them: it rebuilds
        // P = exp(a − lse) from the stored lse, and at |a| ~ 4e8 (fp32 ulp 32) a second rounding
        // (a base-2 copy of the scores or of lse) would put P off by factors up to 2^±32.
        const bool unmasked = key_mask == nullptr && n0 + BN <= S && (!causal || n0 + BN - 1 <= m0 + warp * 16);
        float tile_max[2] = {neg_inf(), neg_inf()};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = e / 2, j = n0 + nt * 8 + 2 * t + (e % 2);
                float x = unmasked || key_allowed(key_mask, mask_row, row[r], j, S, causal) ? __fmul_rn(s[nt][e], scale)
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
            alpha[r] = exp2f((m_run[r] - m_use[r]) * log2e);  // 0 when m_run = −∞
            m_run[r] = m_new;
        }
        float tile_sum[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = e / 2;
                float p = exp2f((s[nt][e] - m_use[r]) * log2e);  // exactly 0 where masked, 1 at the max
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

        // acc += P V: the P accumulators of two adjacent n-tiles are exactly one A fragment.
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

    // o = acc / l, lse = m + log l (>= m: the backward's P <= 1); a fully masked row has l = 0: o = 0, lse = −∞.
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
        if (t == 0) lse[(long long)bh * L + row[r]] = l_run[r] > 0.f ? m_run[r] + logf(l_run[r]) : neg_inf();
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
                s = __fmul_rn(dot, scale);  // rounded once, as the backward recomputes it (see fwd_mma)
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

}  // namespace flash

// ---------------------------------------------------------------------------------------------
// extern "C" entry points (unmangled names for cupy.RawModule.get_function).
// ---------------------------------------------------------------------------------------------

#define FA_FWD_ARGS(T)                                                                                   \
    const T *q, const T *k, const T *v, const signed char *key_mask, T *o, float *lse, int H, int Hkv, \
        int L, int S, float scale, int causal
#define FA_FWD_PASS q, k, v, key_mask, o, lse, H, Hkv, L, S, scale, causal

// Tensor cores (fp16 / bf16), keys in tiles of FA_FWD_MMA_BN_D<D>.
#define FA_DEFINE_FWD_MMA(T, TAG, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_fwd_##TAG##_d##D(FA_FWD_ARGS(T)) { \
        flash::fwd_mma<T, D, FA_FWD_MMA_BN_D##D>(FA_FWD_PASS);                                         \
    }

// fp32 FMA (float).
#define FA_DEFINE_FWD_SIMT(T, TAG, D)                                                                  \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_fwd_##TAG##_d##D(FA_FWD_ARGS(T)) { \
        flash::fwd_simt<T, D>(FA_FWD_PASS);                                                            \
    }

FA_DEFINE_FWD_SIMT(float, f32, 32)
FA_DEFINE_FWD_SIMT(float, f32, 64)
FA_DEFINE_FWD_SIMT(float, f32, 128)
FA_DEFINE_FWD_MMA(__half, f16, 32)
FA_DEFINE_FWD_MMA(__half, f16, 64)
FA_DEFINE_FWD_MMA(__half, f16, 128)
FA_DEFINE_FWD_MMA(__nv_bfloat16, bf16, 32)
FA_DEFINE_FWD_MMA(__nv_bfloat16, bf16, 64)
FA_DEFINE_FWD_MMA(__nv_bfloat16, bf16, 128)
