// Bias + activation, forward and backward, elementwise over (rows, N) with the bias along N; fp32 math.
// NVRTC-compatible. activation: 0 relu, 1 gelu (exact, erf), 2 gelu_tanh, 3 silu. For T in {f32, f16, bf16}:
//   bias_activation_forward_T(x, bias, y, n, N, activation)          y = act(x + b)
//   bias_activation_backward_T(dy, x, bias, dx, n, N, activation)    dx = dy ⊙ act'(x + b)
//   (n = rows · N; the bias gradient Σ_rows dx is a column sum the caller takes)
#include "common.cuh"


__device__ __forceinline__ float activate(float u, int activation) {
    switch (activation) {
        case 0: return u > 0.0f ? u : 0.0f;                                        // relu
        case 1: return 0.5f * u * (1.0f + erff(u * 0.70710678118654752f));       // u Φ(u)
        case 2: {                                                                  // tanh approximation
            const float t = tanhf(0.79788456080286536f * (u + 0.044715f * u * u * u));
            return 0.5f * u * (1.0f + t);
        }
        default: return u / (1.0f + __expf(-u));                                   // silu: u σ(u)
    }
}

__device__ __forceinline__ float activate_grad(float u, int activation) {
    switch (activation) {
        case 0: return u > 0.0f ? 1.0f : 0.0f;
        case 1: {  // Φ(u) + u φ(u)
            const float cdf = 0.5f * (1.0f + erff(u * 0.70710678118654752f));
            return cdf + u * 0.39894228040143268f * __expf(-0.5f * u * u);
        }
        case 2: {  // ½(1 + t) + ½ u (1 − t²) k (1 + 3·0.044715 u²)
            const float k = 0.79788456080286536f;
            const float t = tanhf(k * (u + 0.044715f * u * u * u));
            return 0.5f * (1.0f + t) + 0.5f * u * (1.0f - t * t) * k * (1.0f + 0.134145f * u * u);
        }
        default: {  // σ(u) (1 + u (1 − σ(u)))
            const float s = 1.0f / (1.0f + __expf(-u));
            return s * (1.0f + u * (1.0f - s));
        }
    }
}

template <typename T>
__device__ void bias_activation_forward(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                                        long long n, int N, int activation) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        y[i] = from_float<T>(activate(to_float(x[i]) + to_float(bias[i % N]), activation));
    }
}

template <typename T>
__device__ void bias_activation_backward(const T* __restrict__ dy, const T* __restrict__ x,
                                         const T* __restrict__ bias, T* __restrict__ dx, long long n, int N,
                                         int activation) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float u = to_float(x[i]) + to_float(bias[i % N]);
        dx[i] = from_float<T>(to_float(dy[i]) * activate_grad(u, activation));
    }
}

#define BIAS_ACT_ENTRY_POINTS(T, SUFFIX)                                                                    \
    extern "C" __global__ void bias_activation_forward_##SUFFIX(const T* x, const T* bias, T* y, long long n, \
                                                                int N, int activation) {                    \
        bias_activation_forward<T>(x, bias, y, n, N, activation);                                           \
    }                                                                                                       \
    extern "C" __global__ void bias_activation_backward_##SUFFIX(const T* dy, const T* x, const T* bias,    \
                                                                 T* dx, long long n, int N, int activation) {\
        bias_activation_backward<T>(dy, x, bias, dx, n, N, activation);                                     \
    }

BIAS_ACT_ENTRY_POINTS(float, f32)
BIAS_ACT_ENTRY_POINTS(__half, f16)
BIAS_ACT_ENTRY_POINTS(__nv_bfloat16, bf16)
