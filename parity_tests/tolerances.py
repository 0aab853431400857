"""Every tolerance of the project, written once, with its reasoning.

Errors are measured relative to the largest entry of the expected tensor:
    error = max|actual − expected| / max(max|expected|, floor)
"""

import numpy as np

# Central differences in float64 (eps = 1e-6): truncation O(eps²) ≈ 1e-12 and rounding
# ≈ 1e-16 / eps ≈ 1e-10 relative. The bound is 1e-6 (target 1e-8); observed ≈ 1e-9.
GRADCHECK_TOL = 1e-6

# A backend or dtype against the float64 reference run on the same (cast) inputs. float32's
# unit roundoff is 6e-8; a layer chains tens of dependent roundings, each amplified by the
# condition of softmax/normalization (≈ 10–100), so 1e-4 of the largest entry leaves margin
# without hiding a wrong formula (a real bug shows as O(1) error). float64 agrees to roundoff.
FORWARD_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
GRADIENT_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}

# Half precision (torch-cuda, later cupy): every stored intermediate (each Linear output,
# activation, attention probability, gradient) is rounded to 8 (bfloat16, u = 2⁻⁸ ≈ 3.9e-3) or
# 11 (float16, u = 2⁻¹¹ ≈ 4.9e-4) bits, and a layer chains 10–20 such roundings, so the error is
# a few tens of u however good the kernels. Measured on torch's CPU kernels over the parity
# strategies (thousands of examples, norms computed in float32 as the backend does): worst
# ≈ 30u for both dtypes (bf16 ≈ 0.12, fp16 ≈ 0.013). The bound is 40u. A wrong formula, mask
# or scale is still an O(1) error.
FORWARD_TOL["bfloat16"] = GRADIENT_TOL["bfloat16"] = 40 * 2.0**-8  # ≈ 0.16
FORWARD_TOL[np.dtype(np.float16)] = GRADIENT_TOL[np.dtype(np.float16)] = 40 * 2.0**-11  # ≈ 0.02

# Below this magnitude a tensor is compared absolutely (an all-zero gradient, a masked row).
ERROR_FLOOR = 1e-3

# A backend's gradients are also measured against the module's gradient scale S (its largest
# gradient entry, or the largest entry of the output gradient fed in; floor = this fraction
# of S), as gradcheck does: some gradients are zero or tiny in exact arithmetic (a key
# projection's bias under softmax, LayerNorm's input gradient along the normalized
# directions, GELU' far in its left tail) and come out as float32 rounding of terms of size
# ≈ S, so their error is ≈ 1e-7·S whatever the tensor's own size. A wrong formula still shows
# as an error of order one against 0.1·S.
GRADIENT_SCALE_FLOOR = 0.1

# ---- gradcheck itself (parity_tests/test_gradcheck.py) --------------------------------------------

# A correct backward passes gradcheck "to roundoff": the target, met with margin by the
# ≈ 1e-9 observed (truncation and rounding of central differences, see GRADCHECK_TOL).
GRADCHECK_TARGET = 1e-8

# A wrong gradient must show: a backward that adds 1e-3 to one weight-gradient entry (of size ≈ 1)
# has a relative error ≈ 1e-3, well above this, and a correct one (≈ 1e-9) well below.
GRADCHECK_DETECTS = 1e-4

# ---- float64 against float64: a closed form, torch's float64, a second route ---------------------
# float64's unit roundoff is u = 2⁻⁵³ ≈ 1.1e-16. Two float64 computations of one value differ by
# about u × (dependent roundings) × (the computation's condition); each bound below is that
# estimate with a margin of 10 or more. A wrong formula, mask, scale or order errs by O(1).
# They are passed as rtol (relative, entry by entry) and as atol (on entries of order one).

# A handful of operations on values of order one (an SGD or AdamW step by hand, sin/cos of a
# position, softmax of equal logits, a product by 1/(1 − p), x·σ(x)): a few u ≈ 5e-16.
FEW_ROUNDINGS = 1e-15

# Tens of dependent operations (a sum over a row or a sequence, a log-sum-exp, a learning-rate
# schedule's powers and cosine, gradients accumulated over repeated ids): ≲ 100u ≈ 1e-14.
SHORT_CHAIN = 1e-14

# A loss or model computed two ways (a mean of per-position losses against their sum, a model on
# token ids against one on their embeddings, a causal model with a later token changed, a
# norm's gradient where 1 − x̂² cancels, relative to the size of its terms): hundreds of roundings
# in another order; ≈ 1e-14 observed.
REORDERED = 1e-13

# A layer against an independent closed form, torch's float64, or another route through it (MHA
# against its projections + SDPA, autograd against backward, flash against plain attention, an
# optimizer against torch.optim, summed beam log-probabilities): hundreds of roundings amplified by
# a softmax's or a normalization's condition (≲ 10); ≲ 1e-13 observed.
CLOSED_FORM = 1e-12

# Known values quoted in a test to 11–15 significant digits (GELU's tanh form at 1 is quoted as
# 0.84119199011, 5.9e-10 from its float64 value): the quote's own rounding, not the layer's.
QUOTED_VALUE = 1e-9

# A by-hand first AdamW step written as lr·sign(g), leaving out ε = 1e-8 of g/(|g| + ε): off by
# ε/|g| ≤ 3.3e-8 relative for the test's |g| ≥ 0.3.
ADAM_STEP_WITHOUT_EPS = 1e-7

# LayerNorm's ε = 1e-5 inside the root makes a post-norm output's variance σ²/(σ² + ε) rather
# than 1: 1e-5/σ² below, under 1e-4 for the pre-norm variances σ² ≳ 0.1 of the test's inputs.
LAYER_NORM_EPS_EFFECT = 1e-4

# ---- float32 and float16 against the same computation in the same dtype ---------------------------

# float32's u = 2⁻²⁴ ≈ 6e-8: one rounding (a float32 round trip of a float64 state dict), or two
# float32 implementations of one short formula in nearly one order (an optimizer step against
# torch.optim's, a gradient norm, softmax rows summing to 1, accumulated Linear gradients,
# attention with and without its weights kept): ≲ 16u ≈ 1e-6.
FLOAT32_ROUNDOFF = 1e-6

# float16 keeps 10 fraction bits: a float16 parameter re-rounded from float32 master weights (a
# resumed run restarts them from the float16 parameters) is within one float16 unit, 2⁻¹⁰
# relative, of the uninterrupted run's.
FLOAT16_UNIT = 2.0**-10

# The flash kernel's log-sum-exp on a real GPU (test_kernels_compile.py, np.allclose: this atol plus
# its default rtol 1e-5, on values of order 1–10 and L, S up to 150, head_dim up to 128): fp32 sums
# of exact products, but exp2f/log2f are approximate GPU instructions, so 1e-4 for float32 and, for
# the half-precision kernels (exp2f of score differences), 1e-2, as the test was written (not re-measured here);
# the CPU emulator sees ≤ 3e-7 (KERNEL_LSE_TOL). A wrong mask or scale is off by O(1).
FLASH_LSE_ATOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float16): 1e-2, "bfloat16": 1e-2}

# ---- the CUDA kernels, one launch at a time, against float64 NumPy on the same rounded inputs ------
# (test_kernels_emulated.py on the CPU emulator, and the kernel lab accelerated/cupy/lab.py, whose
# DEFAULT_TOL / DEFAULT_LSE_TOL test_kernel_lab.py keeps equal to these.) Keys are element type
# names; error = max|got − want| / max(max|want|, 1): the data are O(1), so exact zeros stay checkable.
KERNEL_TOL = {
    "float32": 1e-5,   # fp32 math, sums of at most a few hundred terms (u = 6e-8): ≲ 170u; worst seen 1.1e-6
    "float16": 2e-3,   # outputs (and, on tensor cores, P and dS before their products) rounded to fp16 (u = 4.9e-4): 4u; worst seen 6.8e-4
    "bfloat16": 2e-2,  # the same roundings in bf16 (u = 3.9e-3): 5u; worst seen 4.8e-3
}
# The flash forward's log-sum-exp is fp32 whatever the element type (exact products of the rounded
# inputs, fp32 sums): worst seen 3e-7 on the emulator; the half-precision kernels take exp2f of
# score differences, an approximate instruction on a GPU, hence 1e-4 there (fp32: 1e-5).
KERNEL_LSE_TOL = {"float32": 1e-5, "float16": 1e-4, "bfloat16": 1e-4}
# The flash kernels at extreme scores (test_kernels_emulated.py: q and k of magnitude 1e2, 1e3, 1e4,
# scores |a| up to ≈ 4e8, softmax rows nearly or exactly one-hot), against float64 attention on the
# same rounded inputs. out and dV are sums of P <= 1 times O(1) data, measured as KERNEL_TOL measures
# them. dQ and dK are not: where a row's softmax saturates they vanish in exact math, and what any
# kernel returns there is the rounding of their terms scale·dA·K (dA = P (dP − δ), δ = rowsum(dO ⊙ O)
# as in FlashAttention and the reference), of size scale·max|dP|·max|K| (max|Q| for dK), ≈ 2e3–2e5
# here; as GRADIENT_SCALE_FLOOR does for the layers, their error is measured against that size
# (against max(|dQ|, 1) it is up to 3e-2 at 1e4 in float32 too, where torch's float32 SDPA on the
# CPU gives the same term-relative errors as long as it stays finite).
# float16, bfloat16: the element type's roundings as in KERNEL_TOL; worst seen 4.7e-4 and 2.4e-3
# (dV), dQ, dK ≤ 1.5e-4 of their terms. float32: the scores themselves are fp32 sums of d products,
# off by ≈ u·√d·|a| ≈ 1e-2 at magnitude 1e2 (|a| ≈ 1e4), which moves P by e^−g times that in a row
# whose two largest scores are g apart (torch's float32 SDPA alike): 1e-3 holds down to g ≈ 2; worst
# seen 2.7e-5 over 48 drawn shapes, ≤ 2e-7 in the test's. Before the kernels kept lse in the units of
# the scores (P rebuilt off by up to 2^±0.25 at 1e3, 2^±32 at 1e4) dV erred by ≈ 0.09 at 1e3 in both
# half types and was ∞ at 1e4 in float16: far over each bound.
KERNEL_EXTREME_SCORE_TOL = {"float32": 1e-3, "float16": 2e-3, "bfloat16": 2e-2}
# The fused kernels through the layer API (test_fused_kernels_compile.py: norms, cross-entropy,
# bias + activation, AdamW; CuPy on a GPU or the emulator) against the float64 reference layer: the
# module also rounds what it stores between kernels (a Linear's output, a parameter after a step).
KERNEL_LAYER_TOL = {
    "float32": 2e-5,   # fp32 roundings and reductions over up to 1000 entries; worst seen 2.5e-7
    "float16": 2e-2,   # ≈ 40u as FORWARD_TOL's half-precision bound (a layer's chained roundings); worst seen 3.4e-4
    "bfloat16": 8e-2,  # ≈ 20u, the same chain with bf16's 8 bits; worst seen 3.4e-3
}

# ---- statistics of seeded random draws (initializations, dropout masks) ---------------------------

# A sample mean of n draws of spread σ is within SAMPLE_SIGMAS·σ/√n of its expectation, a normal
# sample's standard deviation within SAMPLE_SIGMAS·σ/√(2n) of σ. At 5σ a correct draw fails for
# about one seed in 1.7 million (the tests' seeds pass at ≤ 2σ); a wrong scale is off by far more.
SAMPLE_SIGMAS = 5

# ---- Hugging Face checkpoints against transformers (parity_tests/test_hf_decoder.py, test_hf_encoders.py)
# (They also bound BERT's hidden states, pooler output and MLM logits and Marian's logits: observed ≤ 2.2e-15,
# gradients ≤ 4e-12; Marian's sinusoids, which transformers rounds to float32, recomputed in float64.)
# The same float64 weights through two implementations of one model (transformers' with its
# float32 RMSNorm and RoPE tables computed in float64, see the test's float64_oracle): a few
# layers of products, softmax and norms, each a few roundings of u ≈ 1.1e-16 amplified by the
# condition of softmax/normalization; observed ≈ 1e-15 of the largest logit. A wrong weight
# mapping, transposition, mask or RoPE layout errs by O(1).
HF_LOGITS_TOL = 1e-10
# Every parameter's gradient of a mean cross-entropy, hand-written backward (or torch's autograd
# of rosetta's model) against transformers' autograd in float64: the backward chains about twice
# the forward's roundings and some entries are cancellations of terms ≈ the gradient's scale;
# observed ≈ 1e-14 of each gradient's largest entry, the bound is 1e-8.
HF_GRADIENT_TOL = 1e-8
# transformers' scaled RoPE frequencies (computed in float32: arange, a power, a division, for llama3
# a blend of two terms) against the float64 oracle's: each step rounds by u32 ≈ 6e-8, a handful of
# steps; observed ≤ 4.5e-8 relative. A wrong regime or formula errs by 20% or more (factor ≥ 1.25).
HF_ROPE_FREQUENCY_TOL = 1e-6
# A beam-search hypothesis' score log P / n^length_penalty, rosetta (float64) against transformers, which
# casts the logits to float32 and sums the log-probabilities in float32: ≤ 8 steps of u32 ≈ 6e-8 on
# terms of the size of the sum; observed ≤ 1.7e-7 relative. A wrong length (n off by one) errs by ≥ 10%.
HF_BEAM_SCORE_TOL = 1e-5

# ---- ONNX export (parity_tests/test_onnx_export.py) ------------------------------------------------
# The same float32 weights through onnxruntime's CPU kernels and torch's: the graph is the model's
# own operations, but the two libraries fuse, order and vectorize the sums of matmuls, softmax and
# norms differently, so each of a few layers' dependent roundings (u32 ≈ 6e-8) may differ;
# observed ≤ 1e-6 of the largest logit (Llama's RMSNorm/RoPE, BERT, GPT-2, encoder-decoder). The
# issue's bound is 1e-5; a wrong mask, a lost padding or a specialized axis errs by O(1).
ONNX_LOGITS_TOL = 1e-5


# ---- weight quantization (reference/quantization.py) ----------------------------------------------

# |W − q·s| ≤ s/2 holds exactly in real arithmetic; in float64 the division W/s and the product q·s
# each round once (≤ u ≈ 1.1e-16 relative to values ≤ 127.5·s ≤ 1.01·max|W|), so the slack is a few u
# of the largest |W|; 1e-12 leaves a margin of 1e3 and is still far below any step s.
QUANTIZED_ROUNDING = 1e-12

# A quantized tiny model (d_model 32, one layer, 4–7 Linears in sequence, random weights) against
# the float model, relative to the largest output. Each Linear's weight moves by at most s/2 per
# entry: max|W_row|/254 (int8) or max|W_group|/14 (4 bits), so a Linear's output moves by
# ≲ Σ|x_i|·s/2, a few tenths of a percent (int8) or several percent (4 bits) of its size for random
# signs, and the chained Linears' errors add up through the norms and the softmax. Measured over
# the test's five models and five seeds (float64): worst 1.6% int8, 22% 4-bit (Llama-like, SwiGLU
# multiplies two quantized products), 2.2% LLM.int8 (whose activations are also rounded to 8 bits).
# The bounds are 2–3× that. The exact check beside it (the quantized model equals the float model
# with each W replaced by its Ŵ, to REORDERED) is what catches a wrong scale, packing or layout.
QUANTIZED_MODEL_TOL = {"int8": 0.05, "int4-g32": 0.5, "llm-int8": 0.05}


def relative_error(actual, expected, floor: float = ERROR_FLOOR) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != expected {expected.shape}")
    if not np.all(np.isfinite(actual)):
        return float("inf")
    if actual.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(expected))), floor)
    return float(np.max(np.abs(actual - expected))) / scale


def dtype_key(dtype):
    """The table key of a dtype: a NumPy dtype, or the name "bfloat16" (NumPy has none).

    Accepts NumPy dtypes, their names, and torch dtypes (torch.float32 -> float32).
    """
    name = str(dtype).replace("torch.", "")
    if name == "bfloat16":
        return name
    return np.dtype(name if "torch." in str(dtype) else dtype)


def assert_close(actual, expected, dtype, what: str, table=FORWARD_TOL, floor: float = ERROR_FLOOR) -> float:
    """Assert agreement within the tolerance for ``dtype``; returns the error.

    floor: the smallest scale the error is measured against (default ERROR_FLOOR).
    """
    key = dtype_key(dtype)
    tol = table[key]
    err = relative_error(actual, expected, floor)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.0e} ({key})")
    return err


def assert_sample_mean(values, mean: float, std: float, what: str) -> None:
    """The mean of ``values`` (draws of spread ``std``) within SAMPLE_SIGMAS standard errors of ``mean``."""
    values = np.asarray(values, dtype=np.float64)
    bound = SAMPLE_SIGMAS * std / np.sqrt(values.size)
    got = float(values.mean())
    if not abs(got - mean) <= bound:
        raise AssertionError(f"{what}: sample mean {got:.4g}, expected {mean:.4g} ± {bound:.2g}")


def assert_sample_std(values, std: float, what: str) -> None:
    """The standard deviation of normal draws ``values`` within SAMPLE_SIGMAS standard errors of ``std``."""
    values = np.asarray(values, dtype=np.float64)
    bound = SAMPLE_SIGMAS * std / np.sqrt(2 * values.size)
    got = float(values.std())
    if not abs(got - std) <= bound:
        raise AssertionError(f"{what}: sample standard deviation {got:.4g}, expected {std:.4g} ± {bound:.2g}")

# ---- erf (reference/arrays.py computes its own: NumPy has none) -----------------------------------
# erf against math.erf (correctly rounded to ≈ 1 ulp), in units in the last place of the expected
# value. float64: the Taylor sum below ½ and 1 − e^(−a²)·erfcx(a) above it (erfcx's fitted series
# is exact to ≈ 5e−18) each round a handful of times, all of terms no larger than the result:
# observed ≤ 2 ulp over [−8, 8], tiny and subnormal inputs; 4 leaves margin and still fails a wrong
# coefficient (≥ 1e−15 relative, tens of ulp). float32 is computed in float64 and rounded once,
# so it can be off by at most the one rounding: 1 ulp.
ERF_ULP = {np.dtype(np.float64): 4, np.dtype(np.float32): 1}
