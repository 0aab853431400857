// LayerNorm and RMSNorm, forward and backward: one block per row, fp32 accumulation.
// NVRTC-compatible (extern "C" entry points, common.cuh and the CUDA fp16/bf16 headers only).
// Entry points, for T in {f32, f16, bf16}:
//   norm_forward_T(x, weight, bias, y, mean, rstd, rows, D, eps, rms, has_bias)
//       x, y (rows, D) T; weight, bias (D,) T; mean, rstd (rows,) float32 (mean = 0 for RMSNorm)
//   norm_backward_input_T(dy, x, weight, mean, rstd, dx, rows, D, rms)      dx (rows, D) T
//   norm_backward_params_T(dy, x, mean, rstd, dweight, dbias, rows, D, rows_per_block, has_bias)
//       dweight, dbias (D,) float32, zero-initialized by the caller (atomicAdd over row chunks)
#include "common.cuh"


// Sum of v over the block; every thread gets the result. buf: 32 floats of shared memory.
__device__ float block_sum(float v, float* buf) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // the previous call's readers are done with buf
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    v = (threadIdx.x < warps) ? buf[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) buf[0] = v;
    __syncthreads();
    return buf[0];
}

template <typename T>
__device__ void norm_forward(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                             T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                             int rows, int D, float eps, int rms, int has_bias) {
    __shared__ float buf[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const T* xr = x + (long long)row * D;
    T* yr = y + (long long)row * D;
    float mean = 0.0f;
    if (!rms) {  // μ = mean(x)
        float s = 0.0f;
        for (int j = threadIdx.x; j < D; j += blockDim.x) s += to_float(xr[j]);
        mean = block_sum(s, buf) / D;
    }
    float s2 = 0.0f;  // σ² = mean((x − μ)²), two-pass (RMSNorm: mean(x²))
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const float c = to_float(xr[j]) - mean;
        s2 += c * c;
    }
    const float rstd = rsqrtf(block_sum(s2, buf) / D + eps);
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float v = (to_float(xr[j]) - mean) * rstd * to_float(weight[j]);  // x̂ ⊙ γ
        if (has_bias) v += to_float(bias[j]);                          // + β
        yr[j] = from_float<T>(v);
    }
    if (threadIdx.x == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

template <typename T>
__device__ void norm_backward_input(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ weight,
                                    const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                                    T* __restrict__ dx, int rows, int D, int rms) {
    __shared__ float buf[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const long long base = (long long)row * D;
    const float mean = mean_in[row], rstd = rstd_in[row];
    float sg = 0.0f, sgx = 0.0f;  // Σ ĝ and Σ ĝ ⊙ x̂ with ĝ = dy ⊙ γ
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const float g = to_float(dy[base + j]) * to_float(weight[j]);
        const float xh = (to_float(x[base + j]) - mean) * rstd;
        sg += g;
        sgx += g * xh;
    }
    const float g_mean = rms ? 0.0f : block_sum(sg, buf) / D;
    const float gx_mean = block_sum(sgx, buf) / D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {  // dx = r (ĝ − mean(ĝ) − x̂ mean(ĝ ⊙ x̂))
        const float g = to_float(dy[base + j]) * to_float(weight[j]);
        const float xh = (to_float(x[base + j]) - mean) * rstd;
        dx[base + j] = from_float<T>(rstd * (g - g_mean - xh * gx_mean));
    }
}

template <typename T>
__device__ void norm_backward_params(const T* __restrict__ dy, const T* __restrict__ x,
                                     const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                                     float* __restrict__ dweight, float* __restrict__ dbias,
                                     int rows, int D, int rows_per_block, int has_bias) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;  // one column per thread: coalesced row reads
    if (j >= D) return;
    const int first = blockIdx.y * rows_per_block;
    const int last = min(rows, first + rows_per_block);
    float sw = 0.0f, sb = 0.0f;  // dγ = Σ_rows dy ⊙ x̂,  dβ = Σ_rows dy
    for (int row = first; row < last; ++row) {
        const long long at = (long long)row * D + j;
        const float d = to_float(dy[at]);
        sw += d * (to_float(x[at]) - mean_in[row]) * rstd_in[row];
        sb += d;
    }
    atomicAdd(dweight + j, sw);
    if (has_bias) atomicAdd(dbias + j, sb);
}

#define NORM_ENTRY_POINTS(T, SUFFIX)                                                                         \
    extern "C" __global__ void norm_forward_##SUFFIX(const T* x, const T* weight, const T* bias, T* y,       \
                                                     float* mean, float* rstd, int rows, int D, float eps,   \
                                                     int rms, int has_bias) {                                \
        norm_forward<T>(x, weight, bias, y, mean, rstd, rows, D, eps, rms, has_bias);                       \
    }                                                                                                        \
    extern "C" __global__ void norm_backward_input_##SUFFIX(const T* dy, const T* x, const T* weight,        \
                                                            const float* mean, const float* rstd, T* dx,     \
                                                            int rows, int D, int rms) {                      \
        norm_backward_input<T>(dy, x, weight, mean, rstd, dx, rows, D, rms);                                 \
    }                                                                                                        \
    extern "C" __global__ void norm_backward_params_##SUFFIX(const T* dy, const T* x, const float* mean,     \
                                                             const float* rstd, float* dweight,              \
                                                             float* dbias, int rows, int D,                  \
                                                             int rows_per_block, int has_bias) {             \
        norm_backward_params<T>(dy, x, mean, rstd, dweight, dbias, rows, D, rows_per_block, has_bias);       \
    }

NORM_ENTRY_POINTS(float, f32)
NORM_ENTRY_POINTS(__half, f16)
NORM_ENTRY_POINTS(__nv_bfloat16, bf16)
