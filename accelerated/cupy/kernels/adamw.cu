// Fused AdamW step (torch.optim.AdamW's update rule) over a flat list of parameters in one launch.
// NVRTC-compatible. For T in {f32, f16, bf16}: parameter and gradient in T; both moments, the update and a
// master copy of the parameter in fp32 (a half-precision moment underflows: v ≈ (1 − β₂)g² is below fp16's
// smallest value for |g| < 8e-3, and then m / (√v + ε) explodes; a half-precision parameter drops updates
// smaller than half its spacing, which at lr 1e-4 is all of them for bfloat16).
//   adamw_step_T(params, masters, grads, exp_avgs, exp_avg_sqs, chunk_tensor, chunk_start, sizes,
//                step_size, bias2_sqrt, chunk_size, lr, beta1, beta2, eps, weight_decay)
//   params, grads (T), masters, exp_avgs, exp_avg_sqs (fp32): (tensors,) uint64 device pointers; for float32
//       parameters masters[t] == params[t] (the parameter is its own master); sizes (tensors,) int64
//   chunk_tensor (blocks,) int32 and chunk_start (blocks,) int64: block b updates entries
//       [chunk_start[b], chunk_start[b] + chunk_size) of tensor chunk_tensor[b]
//   step_size (tensors,) float32 = lr / (1 − β₁ᵗ);  bias2_sqrt (tensors,) float32 = √(1 − β₂ᵗ)
//   θ ← θ(1 − ηλ);  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;  θ ← θ − step_size · m / (√v / bias2_sqrt + ε)
//   θ is the master entry while it still rounds to the parameter, else the parameter (written since the last
//   step, e.g. by load_state_dict); the parameter gets the updated master, rounded to T.
#include "common.cuh"


template <typename T>
__device__ void adamw_step(const unsigned long long* __restrict__ params, const unsigned long long* __restrict__ masters,
                           const unsigned long long* __restrict__ grads,
                           const unsigned long long* __restrict__ exp_avgs,
                           const unsigned long long* __restrict__ exp_avg_sqs, const int* __restrict__ chunk_tensor,
                           const long long* __restrict__ chunk_start, const long long* __restrict__ sizes,
                           const float* __restrict__ step_size, const float* __restrict__ bias2_sqrt,
                           int chunk_size, float lr, float beta1, float beta2, float eps, float weight_decay) {
    const int t = chunk_tensor[blockIdx.x];
    const long long start = chunk_start[blockIdx.x];
    const long long end = min(start + (long long)chunk_size, sizes[t]);
    T* p = reinterpret_cast<T*>(params[t]);
    float* w = reinterpret_cast<float*>(masters[t]);  // may be p itself (float32)
    const T* g = reinterpret_cast<const T*>(grads[t]);
    float* m = reinterpret_cast<float*>(exp_avgs[t]);
    float* v = reinterpret_cast<float*>(exp_avg_sqs[t]);
    const float decay = 1.0f - lr * weight_decay, alpha = step_size[t], b2 = bias2_sqrt[t];
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        const float gi = to_float(g[i]);
        const float stored = w[i], current = to_float(p[i]);
        const float theta = (to_float(from_float<T>(stored)) == current ? stored : current) * decay;  // θ(1 − ηλ)
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;         // first moment
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;    // second moment
        const float updated = theta - alpha * mi / (sqrtf(vi) / b2 + eps);
        m[i] = mi;
        v[i] = vi;
        w[i] = updated;
        p[i] = from_float<T>(updated);
    }
}

#define ADAMW_ENTRY_POINT(T, SUFFIX)                                                                          \
    extern "C" __global__ void adamw_step_##SUFFIX(                                                            \
        const unsigned long long* params, const unsigned long long* masters, const unsigned long long* grads,  \
        const unsigned long long* exp_avgs, const unsigned long long* exp_avg_sqs, const int* chunk_tensor,    \
        const long long* chunk_start, const long long* sizes, const float* step_size, const float* bias2_sqrt, \
        int chunk_size, float lr, float beta1, float beta2, float eps, float weight_decay) {                   \
        adamw_step<T>(params, masters, grads, exp_avgs, exp_avg_sqs, chunk_tensor, chunk_start, sizes,         \
                      step_size, bias2_sqrt, chunk_size, lr, beta1, beta2, eps, weight_decay);                 \
    }

ADAMW_ENTRY_POINT(float, f32)
ADAMW_ENTRY_POINT(__half, f16)
ADAMW_ENTRY_POINT(__nv_bfloat16, bf16)
