"""`hf-agreement`: how closely Rosetta's Hugging Face models agree with transformers, per architecture and backend.

Not a test (the bounds live in parity_tests/test_hf_decoder.py, test_hf_encoders.py): the measured
worst figures, in one place. For each architecture a tiny random checkpoint is built with
transformers (``from_config`` + ``save_pretrained`` into a temporary folder), for each seed at one
of several sizes (heads, kv heads, head_dim cycle with the seed), and read back with
``rosetta.hf.load_pretrained`` on each backend. Inputs are a batch of 3 rows of 9 tokens, rows 1
and 2 padded (left for the Llama family, right for GPT-2, BERT and Marian's source).

    error = max|a − b| / max(max|b|, 10⁻³)      (b: transformers in float64, a: Rosetta)

(the floor is parity_tests' ERROR_FLOOR; it matters only for the key biases' gradients, zero in
exact arithmetic).

* outputs: logits (BertModel: the last hidden state and the pooler output, the worse of the two),
  at non-padded positions, on reference and torch in float64 and float32 and on the CuPy backend
  (its CUDA kernels on the CPU host emulator) in float32;
* gradients, float64: a loss's gradient w.r.t. every parameter, the reference's hand-written
  backward and torch's autograd of Rosetta's model against transformers' autograd; the worst
  parameter is named. Loss: cross-entropy (next token for the decoders, random labels for BERT's
  MLM and Marian), and for BertModel Σ h ⊙ R₁ + Σ pooled ⊙ R₂ (random R: it has no logits);
* generation: 20 greedy tokens with the KV cache against ``generate(do_sample=False)``
  (decoder-only models and Marian; Marian's rows compared up to their first EOS, as transformers
  pads finished rows with the pad id): identical or not, per backend.

transformers computes RMSNorm and the RoPE tables in float32 even in a float64 model; as in
parity_tests/test_hf_decoder.py, ``float64_oracle`` recomputes both (the same formulas) in float64,
and Marian's float32 sinusoid table is replaced by its float64 formula, so the float64 figures
measure Rosetta, not transformers' float32 parts.
"""

from __future__ import annotations

import math
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from . import common

VOCAB = 64
POSITIONS = 64
BATCH, LENGTH = 3, 9
PROMPT, NEW_TOKENS = 5, 20
#: the Mistral window, shorter than LENGTH so that it masks something
WINDOW = 3
ARCHITECTURES = ("bert-mlm", "bert-model", "gpt2", "llama-gqa-untied", "llama-gqa-tied", "llama3", "mistral-window",
                 "qwen2", "marian")
DECODERS = ("gpt2", "llama-gqa-untied", "llama-gqa-tied", "llama3", "mistral-window", "qwen2")
DESCRIPTIONS = {
    "bert-mlm": "BertForMaskedLM -> EncoderModel (MLM logits)",
    "bert-model": "BertModel -> EncoderModel (last hidden state and pooler output)",
    "gpt2": "GPT2LMHeadModel -> DecoderLM",
    "llama-gqa-untied": "LlamaForCausalLM, grouped-query attention, untied output",
    "llama-gqa-tied": "LlamaForCausalLM, grouped-query attention, tie_word_embeddings",
    "llama3": "LlamaForCausalLM, rope_scaling llama3 (factor 4, original context 32: all three regimes)",
    "mistral-window": f"MistralForCausalLM, sliding_window {WINDOW} < {LENGTH} tokens",
    "qwen2": "Qwen2ForCausalLM (q/k/v biases)",
    "marian": "MarianMTModel -> Transformer (encoder-decoder)",
}
#: (backend, dtype) columns; gradients are measured in float64 only
BACKENDS = (("reference", "float64"), ("torch", "float64"), ("reference", "float32"), ("torch", "float32"),
            ("emulated-cupy", "float32"))
#: (head_dim, heads, kv heads), cycled by seed; GPT-2, BERT and Marian use kv = heads; llama3 needs head_dim 8
SIZES = ((4, 4, 2), (8, 2, 1), (4, 6, 3), (2, 4, 4))
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}


def size_of(arch: str, seed: int) -> dict:
    head_dim, heads, kv = SIZES[seed % len(SIZES)]
    if arch == "llama3":
        head_dim = 8
    if not arch.startswith(("llama", "mistral", "qwen2")):
        kv = heads
    return {"head_dim": head_dim, "heads": heads, "kv_heads": kv, "d_model": head_dim * heads, "layers": 2}


#: the denominator's floor, parity_tests' ERROR_FLOOR: the key projections' bias gradients are zero in exact
#: arithmetic without RoPE (softmax ignores a constant added to a query's scores): max|b| is rounding noise there
FLOOR = 1e-3


def error(actual, expected) -> float:
    """max|a − b| / max(max|b|, FLOOR) (inf when a has a non-finite entry)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if not np.all(np.isfinite(actual)):
        return float("inf")
    return float(np.max(np.abs(actual - expected))) / max(float(np.max(np.abs(expected))), FLOOR)


# ---- the float64 oracle (parity_tests/test_hf_decoder.py uses it too) -----------------------------------


def _rms_forward(self, x):  # LlamaRMSNorm's formula in the input's dtype (transformers: float32)
    import torch

    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _rope_forward(self, x, position_ids):  # LlamaRotaryEmbedding's tables in float64 (transformers: float32)
    import torch

    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq64
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def inverse_frequencies(parameters: dict, dim: int) -> list:
    """transformers' RoPE frequencies (modeling_rope_utils) in float64 (dim/2,): θ_i = base^(−2i/d);
    "linear" divides them by its factor; "llama3" written as Meta's apply_scaling (a loop with one
    branch per regime), apart from rosetta's vectorized form."""
    base = parameters["rope_theta"]
    freqs = [base ** (-i / dim) for i in range(0, dim, 2)]
    kind = parameters.get("rope_type", "default")
    if kind == "linear":
        return [freq / parameters["factor"] for freq in freqs]
    if kind != "llama3":
        assert kind == "default", f"the oracle has no rope_type {kind!r}"
        return freqs
    scale, low, high = parameters["factor"], parameters["low_freq_factor"], parameters["high_freq_factor"]
    old = parameters["original_max_position_embeddings"]
    scaled = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            scaled.append(freq)
        elif wavelen > old / low:
            scaled.append(freq / scale)
        else:
            smooth = (old / wavelen - low) / (high - low)
            scaled.append((1 - smooth) * freq / scale + smooth * freq)
    return scaled


def float64_oracle(model):
    """``model`` in float64 throughout, eval mode (RMSNorm and RoPE recomputed in float64)."""
    import torch

    model.double().eval()
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = types.MethodType(_rms_forward, module)
        elif name.endswith("RotaryEmbedding"):
            config = module.config
            dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            module.inv_freq64 = torch.tensor(inverse_frequencies(config.rope_parameters, dim), dtype=torch.float64)
            module.forward = types.MethodType(_rope_forward, module)
    return model


def marian_formula_table(n_pos: int, dim: int) -> np.ndarray:
    """transformers' MarianSinusoidalPositionalEmbedding table in float64 (sin half, then cos half)."""
    position_enc = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(n_pos)])
    out = np.empty((n_pos, dim))
    half = dim // 2 if dim % 2 == 0 else dim // 2 + 1
    out[:, :half] = np.sin(position_enc[:, 0::2])
    out[:, half:] = np.cos(position_enc[:, 1::2])
    return out


# ---- checkpoints -------------------------------------------------------------------------------


def hf_config(arch: str, size: dict):
    import transformers

    d, heads, layers = size["d_model"], size["heads"], size["layers"]
    ids = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if arch.startswith("bert"):
        return transformers.BertConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=layers,
                                       num_attention_heads=heads, intermediate_size=2 * d,
                                       max_position_embeddings=POSITIONS, type_vocab_size=2,
                                       initializer_range=0.2, pad_token_id=0)
    if arch == "marian":
        return transformers.MarianConfig(
            vocab_size=VOCAB, d_model=d, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
            decoder_attention_heads=heads, encoder_ffn_dim=2 * d, decoder_ffn_dim=2 * d,
            max_position_embeddings=POSITIONS, pad_token_id=VOCAB - 1, decoder_start_token_id=VOCAB - 1,
            eos_token_id=0, forced_eos_token_id=None, activation_function="swish", scale_embedding=True,
            init_std=0.2)
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=d, n_layer=layers, n_head=heads,
                                       **ids)
    shared = dict(vocab_size=VOCAB, hidden_size=d, intermediate_size=d + 8, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=size["kv_heads"], max_position_embeddings=POSITIONS,
                  rope_theta=500.0, **ids)
    if arch == "llama3":
        return transformers.LlamaConfig(**shared, rope_scaling=dict(LLAMA3_ROPE))
    if arch == "mistral-window":
        return transformers.MistralConfig(**shared, sliding_window=WINDOW)
    if arch == "qwen2":
        return transformers.Qwen2Config(**shared)
    return transformers.LlamaConfig(**shared, tie_word_embeddings=arch == "llama-gqa-tied")


#: Marian's generation checkpoint: small weights, no embedding scale, no logits bias (as the tests'
#: "varied" case); the logits checkpoint's greedy tokens repeat one or two ids
MARIAN_GENERATION = {"init_std": 0.02, "scale_embedding": False}


def build_checkpoint(arch: str, size: dict, seed: int, folder: Path, generation: bool = False):
    """Write a random checkpoint of ``arch`` into ``folder``; return transformers' float64 model (eval).
    generation: Marian's checkpoint for greedy decoding (MARIAN_GENERATION)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = hf_config(arch, size)
    if generation:
        for field, value in MARIAN_GENERATION.items():
            setattr(config, field, value)
    if arch == "bert-mlm":
        model = transformers.BertForMaskedLM(config)
    elif arch == "bert-model":
        model = transformers.BertModel(config)
    elif arch == "marian":
        model = transformers.MarianMTModel(config)
        with torch.no_grad():
            # a zero buffer otherwise: the logits checkpoint gives it something to carry
            model.final_logits_bias.normal_(0.0, 0.0 if generation else 1.0)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        with torch.no_grad():  # N(0, 0.3²) weights, norm gains 1 + N(0, 0.3²): logits far from uniform
            for name, p in model.named_parameters():
                p.normal_(1.0 if "norm" in name or "ln_" in name else 0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    model = float64_oracle(model)
    if arch == "marian":
        for stack in (model.model.encoder, model.model.decoder):
            weight = stack.embed_positions.weight
            weight.data = torch.from_numpy(marian_formula_table(*weight.shape))
    return model


def inputs(arch: str, seed: int) -> dict:
    """ids (B, N), mask (B, N) 1 = token, plus token types / decoder inputs / labels as the architecture needs."""
    rng = np.random.default_rng(1000 + seed)
    vocab = VOCAB - 1 if arch == "marian" else VOCAB  # Marian's last id is its pad / decoder start
    ids = rng.integers(0, vocab, (BATCH, LENGTH))
    lengths = [LENGTH] + [int(n) for n in rng.integers(1, LENGTH, BATCH - 1)]
    keep = np.arange(LENGTH)[None, :] < np.asarray(lengths)[:, None]
    if arch in DECODERS and arch != "gpt2":
        keep = keep[:, ::-1]  # left padding
    mask = keep.astype(np.int64)
    case = {"ids": ids, "mask": mask, "padding": ~keep}
    if arch.startswith("bert"):
        case["types"] = rng.integers(0, 2, (BATCH, LENGTH))
        case["labels"] = np.where(keep, rng.integers(0, VOCAB, (BATCH, LENGTH)), -100)
        case["r_hidden"] = rng.standard_normal((BATCH, LENGTH, 1))
        case["r_pooled"] = rng.standard_normal((BATCH, 1))
    elif arch == "marian":
        tgt = rng.integers(0, vocab, (BATCH, LENGTH - 2))
        tgt[:, 0] = VOCAB - 1
        case["tgt"] = tgt
        case["labels"] = rng.integers(0, VOCAB, tgt.shape)
    else:
        case["labels"] = np.where(keep, np.roll(ids, -1, axis=1), -100)
    case["prompt"] = rng.integers(1, vocab, (2, PROMPT))
    return case


# ---- one architecture's measurements ------------------------------------------------------------


def hf_outputs(arch: str, hf, case: dict, grad: bool = False) -> dict:
    """transformers' outputs by name (float64, NumPy unless grad: then torch tensors)."""
    import torch

    t = torch.from_numpy
    context = torch.enable_grad() if grad else torch.no_grad()
    with context:
        if arch.startswith("bert"):
            out = hf(input_ids=t(case["ids"]), token_type_ids=t(case["types"]), attention_mask=t(case["mask"]))
            named = ({"logits": out.logits} if arch == "bert-mlm"
                     else {"hidden states": out.last_hidden_state, "pooled": out.pooler_output})
        elif arch == "marian":
            named = {"logits": hf(input_ids=t(case["ids"]), attention_mask=t(case["mask"]),
                                  decoder_input_ids=t(case["tgt"])).logits}
        else:
            named = {"logits": hf(t(case["ids"]), attention_mask=t(case["mask"])).logits}
    return named if grad else {k: v.numpy() for k, v in named.items()}


def rosetta_outputs(arch: str, rt, model, case: dict) -> dict:
    """Rosetta's outputs by the same names (backend tensors)."""
    pad = rt.asarray(case["padding"])
    if arch.startswith("bert"):
        out = model(rt.asarray(case["ids"]), token_type_ids=rt.asarray(case["types"]), key_padding_mask=pad)
        return {"logits": out} if arch == "bert-mlm" else {"hidden states": out[0], "pooled": out[1]}
    if arch == "marian":
        return {"logits": model(rt.asarray(case["ids"]), rt.asarray(case["tgt"]), src_key_padding_mask=pad,
                                memory_key_padding_mask=pad)}
    return {"logits": model(rt.asarray(case["ids"]), key_padding_mask=pad if case["padding"].any() else None)}


def output_error(arch: str, got: dict, want: dict, case: dict) -> float:
    """The worst output's error; a decoder's padded positions are left out (their logits are not defined)."""
    keep = case["mask"] == 1 if arch in DECODERS else slice(None)
    return max(error(got[name][keep], want[name][keep]) for name in want)


def hf_gradients(arch: str, hf, case: dict) -> dict:
    """transformers' autograd gradients in float64, by Rosetta parameter name."""
    import torch

    from rosetta.hf import architecture
    from rosetta.hf.folder import TensorSource

    if arch == "marian":
        hf.final_logits_bias.requires_grad_(True)  # a buffer in transformers, Rosetta's generator.bias
    hf.zero_grad()
    out = hf_outputs(arch, hf, case, grad=True)
    if arch == "bert-model":
        loss = ((out["hidden states"] * torch.from_numpy(case["r_hidden"])).sum()
                + (out["pooled"] * torch.from_numpy(case["r_pooled"])).sum())
    else:
        logits = out["logits"]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(case["labels"]).reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in hf.named_parameters(remove_duplicate=False) if p.grad is not None}
    if arch == "marian":
        grads["final_logits_bias"] = hf.final_logits_bias.grad.numpy()
    config = hf.config.to_dict()
    return architecture(config).to_rosetta(config, TensorSource(grads, "transformers' gradients"))


def rosetta_gradients(arch: str, rt, model, case: dict) -> dict:
    """Rosetta's float64 gradients: the hand-written backward (reference) or autograd (torch)."""
    import torch

    model.zero_grad()
    model.train()
    out = rosetta_outputs(arch, rt, model, case)
    on_torch = rt.__name__ == "accelerated.torch"
    if arch == "bert-model":
        r_hidden = np.broadcast_to(case["r_hidden"], out["hidden states"].shape)
        r_pooled = np.broadcast_to(case["r_pooled"], out["pooled"].shape)
        if on_torch:
            ((out["hidden states"] * torch.from_numpy(r_hidden.copy())).sum()
             + (out["pooled"] * torch.from_numpy(r_pooled.copy())).sum()).backward()
        else:
            model.backward((np.array(r_hidden), np.array(r_pooled)))
    else:
        logits, labels = out["logits"], case["labels"]
        if on_torch:
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                              torch.from_numpy(labels).reshape(-1), ignore_index=-100).backward()
        else:
            loss = rt.CrossEntropyLoss(ignore_index=-100)
            loss(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
            model.backward(loss.backward()[0].reshape(logits.shape))
    model.eval()
    return {name: np.asarray(rt.to_numpy(p.grad.detach() if on_torch else p.grad), dtype=np.float64)
            for name, p in model.named_parameters()}


def worst_gradient(got: dict, want: dict) -> dict:
    """The worst gradient error and its parameter, over every parameter and over those whose gradient is
    not below FLOOR (the null key-bias gradients left out); a parameter on one side only counts as inf."""
    if set(got) != set(want):
        missing = "missing: " + ",".join(sorted(set(got) ^ set(want)))
        return {"gradient_error": float("inf"), "worst_gradient_parameter": missing,
                "gradient_error_nonnull": float("inf"), "worst_nonnull_gradient_parameter": missing}
    errors = {name: error(got[name], want[name]) for name in want}
    nonnull = [name for name in want if np.max(np.abs(want[name]), initial=0.0) >= FLOOR]
    worst = max(errors, key=errors.get)
    worst_nonnull = max(nonnull, key=errors.get)
    return {"gradient_error": errors[worst], "worst_gradient_parameter": worst,
            "gradient_error_nonnull": errors[worst_nonnull], "worst_nonnull_gradient_parameter": worst_nonnull}


def hf_generation(arch: str, hf, case: dict) -> list:
    """transformers' greedy tokens, each row as a list (Marian: up to its first EOS)."""
    import torch

    prompt = torch.from_numpy(case["prompt"])
    with torch.no_grad():
        if arch == "marian":
            tokens = hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 num_beams=1, max_new_tokens=NEW_TOKENS).numpy()
            return _until_eos(tokens)
        return hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=NEW_TOKENS, pad_token_id=0).numpy().tolist()


def rosetta_generation(arch: str, rt, model, case: dict) -> list:
    prompt = rt.asarray(case["prompt"])
    if arch == "marian":
        return _until_eos(rt.to_numpy(rt.greedy_decode(model, prompt, NEW_TOKENS + 1, bos_id=VOCAB - 1, eos_id=0)))
    return np.asarray(rt.to_numpy(rt.generate(model, prompt, NEW_TOKENS, temperature=0.0))).tolist()


def _until_eos(tokens) -> list:
    """Each row up to and including its first EOS (0) after the start token."""
    rows = []
    for row in np.asarray(tokens):
        ends = np.flatnonzero(row[1:] == 0)
        rows.append(row[: ends[0] + 2].tolist() if ends.size else row.tolist())
    return rows


def _namespaces(backend: str, stack):
    """The backend's namespace; the CuPy one enters the host emulator on ``stack``."""
    if backend == "reference":
        import reference

        return reference
    if backend == "torch":
        import accelerated.torch

        return accelerated.torch
    from accelerated.cupy_emulator import emulated_cupy

    return stack.enter_context(emulated_cupy())


def measure(arch: str, seed: int, backends=BACKENDS, emulation_missing=None) -> list:
    """One row per (backend, dtype) for one architecture and seed."""
    import contextlib

    from rosetta.hf import load_pretrained

    size = size_of(arch, seed)
    case = inputs(arch, seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rosetta-hf-agreement-") as folder:
        hf = build_checkpoint(arch, size, seed, Path(folder))
        want = hf_outputs(arch, hf, case)
        want_grads = hf_gradients(arch, hf, case)
        generation_folder = Path(folder) / "generation" if arch == "marian" else Path(folder)
        if arch == "marian":
            want_tokens = hf_generation(arch, build_checkpoint(arch, size, seed, generation_folder, True), case)
        else:
            want_tokens = hf_generation(arch, hf, case) if arch in DECODERS else None
        # how varied transformers' greedy tokens are (a row repeating one token would prove little)
        distinct = None if want_tokens is None else len({t for row in want_tokens
                                                          for t in row[1 if arch == "marian" else PROMPT:]})
        for backend, dtype in backends:
            row = {"architecture": arch, "seed": seed, **size, "backend": backend, "dtype": dtype,
                   "output_error": None, "gradient_error": None, "worst_gradient_parameter": None,
                   "gradient_error_nonnull": None, "worst_nonnull_gradient_parameter": None,
                   "generation_identical": None, "distinct_generated_tokens": distinct, "skipped": None}
            if backend == "emulated-cupy" and emulation_missing:
                row["skipped"] = f"CuPy on the CUDA host emulator: {emulation_missing}"
                rows.append(row)
                continue
            start = time.perf_counter()
            with contextlib.ExitStack() as stack:
                rt = _namespaces(backend, stack)
                model = load_pretrained(folder, backend=rt, dtype=dtype)
                got = {k: np.asarray(rt.to_numpy(v), dtype=np.float64)
                       for k, v in rosetta_outputs(arch, rt, model, case).items()}
                row["output_error"] = output_error(arch, got, want, case)
                if dtype == "float64":
                    row.update(worst_gradient(rosetta_gradients(arch, rt, model, case), want_grads))
                if want_tokens is not None:
                    if arch == "marian":
                        model = load_pretrained(generation_folder, backend=rt, dtype=dtype)
                    row["generation_identical"] = rosetta_generation(arch, rt, model, case) == want_tokens
            row["seconds"] = round(time.perf_counter() - start, 3)
            rows.append(row)
    return rows


def summarize(rows: list) -> list:
    """Per (architecture, backend, dtype): the worst figures over seeds, and generation identical on every seed."""
    out = {}
    for row in rows:
        key = (row["architecture"], row["backend"], row["dtype"])
        entry = out.setdefault(key, {"architecture": key[0], "backend": key[1], "dtype": key[2], "seeds": 0,
                                     "worst_output_error": None, "worst_gradient_error": None,
                                     "worst_gradient_parameter": None, "worst_nonnull_gradient_error": None,
                                     "worst_nonnull_gradient_parameter": None, "generation_identical": None,
                                     "fewest_distinct_generated_tokens": None,
                                     "skipped": row["skipped"]})
        if row["skipped"]:
            continue
        entry["seeds"] += 1
        if entry["worst_output_error"] is None or row["output_error"] > entry["worst_output_error"]:
            entry["worst_output_error"] = row["output_error"]
        if row["gradient_error"] is not None and (entry["worst_gradient_error"] is None
                                                  or row["gradient_error"] > entry["worst_gradient_error"]):
            entry["worst_gradient_error"] = row["gradient_error"]
            entry["worst_gradient_parameter"] = f"{row['worst_gradient_parameter']} (seed {row['seed']})"
        if row["gradient_error_nonnull"] is not None and (entry["worst_nonnull_gradient_error"] is None
                                                          or row["gradient_error_nonnull"]
                                                          > entry["worst_nonnull_gradient_error"]):
            entry["worst_nonnull_gradient_error"] = row["gradient_error_nonnull"]
            entry["worst_nonnull_gradient_parameter"] = (f"{row['worst_nonnull_gradient_parameter']} "
                                                         f"(seed {row['seed']})")
        if row["generation_identical"] is not None:
            fewest = entry["fewest_distinct_generated_tokens"]
            entry["fewest_distinct_generated_tokens"] = min(row["distinct_generated_tokens"], fewest or 10**9)
            before = entry["generation_identical"]
            entry["generation_identical"] = row["generation_identical"] and (before is None or before)
    return list(out.values())


def run(seeds: int = 3, architectures=ARCHITECTURES, backends=BACKENDS, progress=print) -> dict:
    """Measure every architecture × backend over ``seeds`` seeds; the benchmark JSON document."""
    import torch
    import transformers

    from accelerated.cupy_emulator import unavailable_reason

    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    unknown = sorted(set(architectures) - set(ARCHITECTURES))
    if unknown:
        raise ValueError(f"architectures must be among {list(ARCHITECTURES)}, got {unknown}")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    missing = unavailable_reason()
    rows = []
    start = time.perf_counter()
    for arch in architectures:
        for seed in range(seeds):
            rows.extend(measure(arch, seed, backends, missing))
            if progress:
                progress(f"  {arch} seed {seed}: {time.perf_counter() - start:.1f} s")
    config = {"seeds": list(range(seeds)), "sizes": "(head_dim, heads, kv heads) cycled by seed: "
              f"{[list(s) for s in SIZES]}; GPT-2, BERT, Marian kv = heads; llama3 head_dim 8; 2 layers",
              "batch": BATCH, "length": LENGTH, "vocab": VOCAB,
              "padding": "row 0 full, rows 1-2 random lengths; left padding for Llama/Mistral/Qwen2, right for "
                         "GPT-2, BERT and Marian's source",
              "error": "max|rosetta - transformers| / max|transformers| over non-padded positions (decoders), "
                       "all positions (BERT, Marian); BertModel: worse of last hidden state and pooler output; "
                       f"denominator floored at {FLOOR} (the key projections' bias gradients are 0 in exact arithmetic)",
              "oracle": "transformers in float64 with RMSNorm and RoPE tables recomputed in float64 "
                        "(transformers keeps them in float32) and Marian's sinusoids from their float64 formula",
              "gradients": "float64, every parameter; cross-entropy of the logits (next token for decoders, random "
                           "labels for BERT MLM and Marian); BertModel: sum(h*R1) + sum(pooled*R2), random R; "
                           "'nonnull': over the parameters whose transformers gradient reaches the floor "
                           "(the key projections' biases left out)",
              "generation": f"{NEW_TOKENS} greedy tokens with the KV cache from a ({2}, {PROMPT}) prompt vs "
                            "transformers' generate(do_sample=False); Marian: rows up to their first EOS, on a "
                            f"second checkpoint with {MARIAN_GENERATION} and no logits bias (varied tokens); "
                            "distinct_generated_tokens: how many ids transformers' generated tokens use",
              "architectures": {a: DESCRIPTIONS[a] for a in architectures},
              "emulated_cupy": missing or "available (CuPy kernels on the CPU host emulator)",
              "torch_threads": torch.get_num_threads()}
    document = common.record("hf-agreement", "python -m rosetta.bench hf-agreement", "cpu", config, rows)
    document["versions"]["transformers"] = transformers.__version__
    document["summary"] = summarize(rows)
    document["seconds"] = round(time.perf_counter() - start, 1)
    return document


COLUMNS = [("architecture", "architecture", ""), ("backend", "backend", ""), ("dtype", "dtype", ""),
           ("seeds", "seeds", ""), ("worst logits error", "worst_output_error", ".1e"),
           ("worst gradient error", "worst_gradient_error", ".1e"), ("its parameter", "worst_gradient_parameter", ""),
           ("worst non-null", "worst_nonnull_gradient_error", ".1e"),
           ("its parameter", "worst_nonnull_gradient_parameter", ""),
           ("generation identical", "generation_identical", "")]


def report(document: dict) -> str:
    v = document["versions"]
    head = (f"hf-agreement: {document['device']['name']}, numpy {v['numpy']}, torch {v['torch']}, "
            f"transformers {v.get('transformers')}; error = max|a - b| / max(max|b|, {FLOOR}) against transformers "
            f"(float64 oracle), worst over {len(document['config']['seeds'])} seed(s); gradients float64 only; "
            f"{document.get('seconds', 0)} s")
    return "\n".join([head, common.format_table(document["summary"], COLUMNS)])


def markdown(document: dict) -> str:
    """The summary as a Markdown table, one row per architecture (for docs/real_models.md)."""
    cells = {(e["architecture"], e["backend"], e["dtype"]): e for e in document["summary"]}
    architectures = list(dict.fromkeys(e["architecture"] for e in document["summary"]))
    head = (["architecture"] + [f"logits {b} {d.replace('float', 'f')}" for b, d in BACKENDS]
            + ["gradient reference f64 (worst parameter)", "gradient torch f64 (worst parameter)",
               "with the null key-bias gradients (ref / torch)", "20 greedy tokens identical (fewest distinct ids)"])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arch in architectures:
        row = [arch]
        for key in BACKENDS:
            e = cells.get((arch,) + key)
            row.append("-" if e is None or e["worst_output_error"] is None else f"{e['worst_output_error']:.1e}")
        grads = [cells.get((arch, backend, "float64")) for backend in ("reference", "torch")]
        for e in grads:
            if e is None or e["worst_nonnull_gradient_error"] is None:
                row.append("-")
                continue
            name = e["worst_nonnull_gradient_parameter"].split(" (")[0]
            row.append(f"{e['worst_nonnull_gradient_error']:.1e} (`{name}`)")
        if any(e is None or e["worst_gradient_error"] is None for e in grads):
            row.append("-")
        elif all(e["worst_gradient_error"] == e["worst_nonnull_gradient_error"] for e in grads):
            row.append("same")
        else:
            row.append(" / ".join(f"{e['worst_gradient_error']:.1e}" for e in grads))
        entries = [e for e in document["summary"]
                   if e["architecture"] == arch and e["generation_identical"] is not None]
        if not entries:
            row.append("-")
        else:
            fewest = min(e["fewest_distinct_generated_tokens"] for e in entries)
            wrong = [f"{e['backend']} {e['dtype']}" for e in entries if not e["generation_identical"]]
            row.append(("yes, every backend" if not wrong else "**no**: " + ", ".join(wrong)) + f" ({fewest})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
