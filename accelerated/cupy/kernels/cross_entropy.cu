// Softmax cross-entropy over the last dimension, forward and backward: one block per row, fp32 math.
// NVRTC-compatible. Entry points, for T in {f32, f16, bf16}:
//   cross_entropy_forward_T(logits, target, loss, lse, rows, V, ignore_index, smoothing)
//       logits (rows, V) T; target (rows,) int64; loss, lse (rows,) float32
//       loss[r] = (1 − ε)(lse − z_t) + ε (lse − mean z)   (0 where target == ignore_index)
//   cross_entropy_backward_T(logits, target, lse, row_scale, dlogits, rows, V, ignore_index, smoothing)
//       dlogits[r, j] = row_scale[r] · (exp(z_j − lse) − q_j),  q = (1 − ε) onehot(t) + ε/V
//       row_scale (rows,) float32 = g · s · w, computed by the caller (0 on ignored rows)
#include "common.cuh"


__device__ __forceinline__ float warp_reduce(float v, int is_max) { return is_max ? warp_max(v) : warp_sum(v); }

// Sum (is_max = 0) or max (is_max = 1) of v over the block; every thread gets it.
__device__ float block_reduce(float v, float* buf, int is_max) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_reduce(v, is_max);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    const float identity = is_max ? __int_as_float(0xff800000) : 0.0f;
    v = (threadIdx.x < warps) ? buf[threadIdx.x] : identity;
    if (warp == 0) v = warp_reduce(v, is_max);
    if (threadIdx.x == 0) buf[0] = v;
    __syncthreads();
    return buf[0];
}

template <typename T>
__device__ void cross_entropy_forward(const T* __restrict__ logits, const long long* __restrict__ target,
                                      float* __restrict__ loss, float* __restrict__ lse_out, int rows, int V,
                                      long long ignore_index, float smoothing) {
    __shared__ float buf[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const T* z = logits + (long long)row * V;
    float m = __int_as_float(0xff800000), s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, to_float(z[j]));
    m = block_reduce(m, buf, 1);  // max z
    float zsum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float zj = to_float(z[j]);
        s += __expf(zj - m);
        zsum += zj;
    }
    s = block_reduce(s, buf, 0);
    zsum = block_reduce(zsum, buf, 0);  // Σ z (label smoothing: −(1/V) Σ log p = lse − mean z)
    const float lse = m + logf(s);  // log Σ exp z
    const long long t = target[row];
    if (threadIdx.x == 0) {
        lse_out[row] = lse;
        float l = 0.0f;
        if (t != ignore_index) {
            l = lse - to_float(z[t]);  // −log p_t
            if (smoothing > 0.0f) l = (1.0f - smoothing) * l + smoothing * (lse - zsum / V);
        }
        loss[row] = l;
    }
}

template <typename T>
__device__ void cross_entropy_backward(const T* __restrict__ logits, const long long* __restrict__ target,
                                       const float* __restrict__ lse_in, const float* __restrict__ row_scale,
                                       T* __restrict__ dlogits, int rows, int V, long long ignore_index,
                                       float smoothing) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const long long base = (long long)row * V;
    const float lse = lse_in[row], scale = row_scale[row];
    const long long t = target[row];
    const float off = smoothing / V, on = (1.0f - smoothing) + smoothing / V;  // q_j
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float p = __expf(to_float(logits[base + j]) - lse);  // softmax(z)_j
        const float q = (t != ignore_index && j == t) ? on : off;
        dlogits[base + j] = from_float<T>(scale * (p - q));  // ← from ℓ = −Σ_j q_j log p_j
    }
}

#define CE_ENTRY_POINTS(T, SUFFIX)                                                                           \
    extern "C" __global__ void cross_entropy_forward_##SUFFIX(const T* logits, const long long* target,      \
                                                              float* loss, float* lse, int rows, int V,      \
                                                              long long ignore_index, float smoothing) {     \
        cross_entropy_forward<T>(logits, target, loss, lse, rows, V, ignore_index, smoothing);               \
    }                                                                                                        \
    extern "C" __global__ void cross_entropy_backward_##SUFFIX(const T* logits, const long long* target,     \
                                                               const float* lse, const float* row_scale,     \
                                                               T* dlogits, int rows, int V,                  \
                                                               long long ignore_index, float smoothing) {    \
        cross_entropy_backward<T>(logits, target, lse, row_scale, dlogits, rows, V, ignore_index, smoothing);\
    }

CE_ENTRY_POINTS(float, f32)
CE_ENTRY_POINTS(__half, f16)
CE_ENTRY_POINTS(__nv_bfloat16, bf16)
