// Fused flash attention, backward: flash_bwd_preprocess_<tag>_d<D>, flash_bwd_<tag>_d<D> and
// flash_bwd_convert_dq_<tag> (see flash_attention.cuh for the layouts, the algorithm and every
// entry point of the pair of files).
//
//   bwd_preprocess  δ = rowsum(dO ⊙ O), one warp per row
//   bwd_mma         fp16 / bf16 on tensor cores: 64 keys per block, query tiles of FA_BWD_MMA_BM_D<D>
//   bwd_simt        float32 on fp32 FMA: FA_BWD_SIMT_BN_D<D> keys (and query rows) per block
//   convert_dq      the fp32 dq accumulator rounded to the element type

#include "flash_attention.cuh"

// Query rows per tile of the tensor-core backward, by head dim (a compile-time choice; the lab
// overrides it): a multiple of 16 dividing 64, whole 16-byte pieces per thread for the tile fetch
// (BM · D / 8 a multiple of 128) and K, V, Q, dO, dA within 48 KB of static shared memory:
// BM ∈ {32, 64} at D = 32, {16, 32, 64} at D = 64, {16} at D = 128.
#ifndef FA_BWD_MMA_BM_D32
#define FA_BWD_MMA_BM_D32 64
#endif
#ifndef FA_BWD_MMA_BM_D64
#define FA_BWD_MMA_BM_D64 64
#endif
#ifndef FA_BWD_MMA_BM_D128
#define FA_BWD_MMA_BM_D128 16
#endif

// Keys (and query rows) per block of the float32 backward, by head dim: it sets the grid
// (flash_attention_kernels.backward_block) as well as the tiles. 128 threads split the block's keys
// evenly, and six fp32 tiles must fit 48 KB: BN ∈ {16, 32} at D = 32 and 64, {16} at D = 128.
#ifndef FA_BWD_SIMT_BN_D32
#define FA_BWD_SIMT_BN_D32 32
#endif
#ifndef FA_BWD_SIMT_BN_D64
#define FA_BWD_SIMT_BN_D64 32
#endif
#ifndef FA_BWD_SIMT_BN_D128
#define FA_BWD_SIMT_BN_D128 16
#endif

namespace flash {

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
    static_assert(4 * (4 * BN * (D + 1) + 2 * BM * (BN + 1) + 2 * BM) + BN <= 48 * 1024, "static shared memory");
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

            // Phase 1: p_ij = exp(a_ij − lse_i),  da_ij = p_ij (do_i · v_j − δ_i).
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
                    p = expf(__fmul_rn(dot, scale) - lse_s[i]);  // the forward's rounded score (fwd_simt)
                    ds = p * (dp - delta_s[i]);
                }
                ps[i][j] = p;
                dss[i][j] = ds;
            }
            __syncthreads();

            // Phase 2: dv_j += Σ_i p_ij do_i,  dk_j += Σ_i da_ij q_i (scale applied at the end).
            for (int i = 0; i < BM; ++i) {
                float p = ps[i][jl], ds = dss[i][jl];
#pragma unroll
                for (int c = 0; c < DPT; ++c) {
                    dv_acc[c] = fmaf(p, dos[i][d0 + c], dv_acc[c]);
                    dk_acc[c] = fmaf(ds, qs[i][d0 + c], dk_acc[c]);
                }
            }

            // Phase 3: dq_i += scale Σ_j da_ij k_j (fp32 atomics: other key blocks add to the same rows).
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
//     Aᵀ = scale · K_w Qᵀ, dPᵀ = V_w dOᵀ          (mma; the B fragments are rows of Q and dO)
//     Pᵀ = exp(Aᵀ − lse) (0 where masked, at most 1), dAᵀ = Pᵀ ⊙ (dPᵀ − δ)  (fp32, in registers)
//     dV_w += Pᵀ dO, dK_w += dAᵀ Q               (the Aᵀ/dPᵀ accumulators of the two 8-query tiles
//                                                 are one A fragment, as P in the forward; dO and
//                                                 Q are read transposed from shared memory)
//     dA (16-bit) → shared memory, transposed: ds_s[query][key]
//   barrier; then the next tile's Q, dO, lse, δ are fetched into registers (TileFetch), and
//   phase 2, warp w on dQ rows 16·(w % (BM/16)).. and column group w / (BM/16):
//     dQ_tile = dA K (mma, K read transposed), scale · dQ_tile → fp32 atomicAdd into dq_accum;
//   the fetched tile is stored to shared memory (nothing reads Q, dO, lse, δ after the barrier).
// P and dA enter their products rounded to T (as in FlashAttention-2); every sum is fp32.
// Static shared memory (16-bit tiles, rows padded by 8 elements against bank conflicts):
//   K, V 2·64·(D+8)·2 B; Q, dO 2·BM·(D+8)·2 B; dA BM·72·2 B; lse, δ 8·BM B; a flag 4 B:
//   D = 32, BM = 64: 30212 B    D = 64, BM = 64: 46596 B    D = 128, BM = 16: 45956 B (the defaults)
// D <= 64 keeps the warp's K and V A fragments in registers; D = 128 rereads them (registers).
// ---------------------------------------------------------------------------------------------

// The Q, dO, lse and δ of one backward tile (ROWS query rows) in registers, between a fetch from
// global memory and the store to shared memory, so that the loads overlap other work. Rows at or
// past L are zero, with lse = +∞ so that P = 0 there; so is a fully masked row (lse = −∞). lse stays
// in the forward's natural-log units, never converted (see the P of bwd_mma).
template <int ROWS, int D>
struct TileFetch {
    static constexpr int CHUNKS = D / 8, PER_THREAD = ROWS * CHUNKS / FA_THREADS;  // 16-byte pieces
    static_assert(ROWS * CHUNKS % FA_THREADS == 0 && ROWS <= FA_THREADS, "tile shape");
    uint4 qv[PER_THREAD], dov[PER_THREAD];
    float lse_use, delta;

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
        lse_use = l == neg_inf() ? __int_as_float(0x7f800000) : l;
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
            lse_s[threadIdx.x] = lse_use;
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
    static_assert(BM % 16 == 0 && 4 % WM == 0 && DQ_COLS % 16 == 0, "tile shape (ldmatrix.x4: two 8-column tiles)");
    static_assert(2 * (2 * BN * STRIDE + 2 * BM * STRIDE + BM * DS_STRIDE) + 8 * BM + 4 <= 48 * 1024,
                  "static shared memory");
    __shared__ __align__(16) unsigned short ks[BN * STRIDE];
    __shared__ __align__(16) unsigned short vs[BN * STRIDE];
    __shared__ __align__(16) unsigned short qs[BM * STRIDE];
    __shared__ __align__(16) unsigned short dos[BM * STRIDE];
    __shared__ __align__(16) unsigned short ds_s[BM * DS_STRIDE];
    __shared__ float lse_s[BM];    // lse; +∞ for a fully masked row or a row past L (P = 0)
    __shared__ float delta_s[BM];
    __shared__ int any_key;        // whether some key of the block may be attended at all

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int bk = blockIdx.y, b = bk / Hkv, kvh = bk % Hkv, group = H / Hkv;
    const int n0 = blockIdx.x * BN;
    const long long kv_off = ((long long)b * Hkv + kvh) * S * D;
    const float log2e = 1.4426950408889634f;

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

    const unsigned short* kw = ks + (warp * 16) * STRIDE;  // this warp's keys: A fragments of K Qᵀ
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

        // Phase 1, in chunks of 16 queries: Aᵀ and dPᵀ (16 keys × 16 queries each), Pᵀ and dAᵀ,
        // then dV += Pᵀ dO and dK += dAᵀ Q over those 16 queries.
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

            // Pᵀ (into s), dAᵀ (into dp); element e of s[h2]: key row e / 2, query il.
            // P = exp(a − lse) with a = scale · (q · k) rounded once, exactly as fwd_mma rounds it
            // (__fmul_rn: not fused into the subtraction), and the subtraction in the units lse is
            // stored in: at |a| ~ 4e8 (fp32 ulp 32) any other rounding of a or lse is off by several
            // units of the exponent, and P by factors up to 2^±32 (fp16 dV overflowed to ∞). Then
            // lse >= every a of its row and P <= 1 as in exact math; the clamp keeps P <= 1 should
            // the tensor cores round K Qᵀ here and Q Kᵀ in the forward differently (a NaN stays NaN).
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = e / 2, il = kc * 16 + h2 * 8 + 2 * t + (e % 2);
                    const bool ok = key_ok[r] && (!causal || key[r] <= m0 + il);
                    float p = ok ? exp2f((__fmul_rn(s[h2][e], scale) - lse_s[il]) * log2e) : 0.f;
                    p = p > 1.f ? 1.f : p;
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

        // Phase 2: dQ rows 16·wm.. (+16), columns dq_col0.. (+DQ_COLS) += scale · dA K.
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

    // dK = scale · Σ dAᵀ Q, dV = Σ Pᵀ dO for this thread's two keys.
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

// Tensor cores (fp16 / bf16): 64 keys per block, query tiles of FA_BWD_MMA_BM_D<D> rows.
#define FA_DEFINE_BWD_MMA(T, TAG, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_bwd_##TAG##_d##D(FA_BWD_ARGS(T)) { \
        flash::bwd_mma<T, D, FA_BWD_MMA_BM_D##D>(FA_BWD_PASS);                                           \
    }                                                                                                      \
    FA_DEFINE_PREPROCESS(T, TAG, D)

// fp32 FMA (float): FA_BWD_SIMT_BN_D<D> keys (and query rows) per block.
#define FA_DEFINE_BWD_SIMT(T, TAG, D)                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_bwd_##TAG##_d##D(FA_BWD_ARGS(T)) { \
        flash::bwd_simt<T, D, FA_BWD_SIMT_BN_D##D>(FA_BWD_PASS);                                         \
    }                                                                                                      \
    FA_DEFINE_PREPROCESS(T, TAG, D)

FA_DEFINE_BWD_SIMT(float, f32, 32)
FA_DEFINE_BWD_SIMT(float, f32, 64)
FA_DEFINE_BWD_SIMT(float, f32, 128)
FA_DEFINE_BWD_MMA(__half, f16, 32)
FA_DEFINE_BWD_MMA(__half, f16, 64)
FA_DEFINE_BWD_MMA(__half, f16, 128)
FA_DEFINE_BWD_MMA(__nv_bfloat16, bf16, 32)
FA_DEFINE_BWD_MMA(__nv_bfloat16, bf16, 64)
FA_DEFINE_BWD_MMA(__nv_bfloat16, bf16, 128)

#define FA_DEFINE_CONVERT(T, TAG)                                                                         \
    extern "C" __global__ void flash_bwd_convert_dq_##TAG(const float *src, T *dst, long long n) {       \
        flash::convert_dq<T>(src, dst, n);                                                                \
    }

FA_DEFINE_CONVERT(__half, f16)
FA_DEFINE_CONVERT(__nv_bfloat16, bf16)
