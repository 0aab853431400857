"""`real-models`: BERT-base and GPT-2-small-sized random models against transformers, on the CPU.

A random checkpoint of each size is built with transformers from its config, written with
``save_pretrained`` into a temporary folder and read back with ``rosetta.hf.load_pretrained`` on the
reference (NumPy) and on accelerated.torch, float32. Side by side in one run, at each thread setting
(threadpoolctl holds NumPy's BLAS, ``torch.set_num_threads`` torch's pool):

Every implementation of a row group is loaded first, then timed in rounds (one call of each per
round; ``time_interleaved``), so that the load of a shared machine falls on all of them alike.

* training pass = forward + cross-entropy + backward (no optimizer), gradients cleared before each:
  BERT (``BertForMaskedLM``): the MLM logits against random labels at every position;
  GPT-2 (``GPT2LMHeadModel``): the LM loss, logits of tokens 0..N-2 against tokens 1..N-1.
  Rows: reference (hand-written backward), accelerated.torch (autograd), transformers with
  ``attn_implementation="eager"`` and ``"sdpa"``. Median ms over reps after warm-up.
* generation (GPT-2): greedy, with the KV cache, batch 1: ``generate(model, prompt, n, temperature=0)``
  on both backends against transformers' ``generate(do_sample=False)`` (EOS off, so every row makes n
  tokens); new tokens per second of the median call. accelerated.torch runs twice: as loaded, and
  prepared once after loading with ``accelerated.torch.decoding.pack_for_decoding`` ("packed": its
  weights also stored (in, out), the layout of transformers' GPT-2 Conv1D weights; the copies cost
  one more copy of the weights in memory).

Ratios: time of the reference and of accelerated.torch over transformers' (each attention
implementation, and the faster of the two, which is what the targets are judged against), and
accelerated.torch's tokens/s over transformers'. Targets (the issue "Real models"): reference
forward+backward <= 1.5x transformers, accelerated.torch <= 1.0x, accelerated.torch generation
>= 1.0x transformers' tokens/s.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from . import common
from .cpu import _threads

TARGET_REFERENCE = 1.5
TARGET_TORCH = 1.0
TARGET_GENERATION = 1.0
HF_ATTENTION = ("eager", "sdpa")
IMPLEMENTATIONS = ("reference", "accelerated.torch") + tuple(f"transformers ({a})" for a in HF_ATTENTION)
#: generation also times accelerated.torch after pack_for_decoding (weights kept a second time, (in, out))
PACKED = "accelerated.torch (packed)"
GENERATION_IMPLEMENTATIONS = IMPLEMENTATIONS[:2] + (PACKED,) + IMPLEMENTATIONS[2:]
TORCH_ROWS = ("accelerated.torch", PACKED)

# the architectures' published sizes; vocabularies as bert-base-uncased and gpt2
BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 512}
GPT2_SMALL = {"vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}


def build_checkpoints(folder, layers=None, sizes=None) -> dict:
    """Write the random BERT and GPT-2 checkpoints into folder/{bert,gpt2}; returns their configs.

    Dropout is 0 (Rosetta builds these models without dropout); ``sizes`` overrides config fields
    of both (the test's tiny models)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    bert = dict(BERT_BASE, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    gpt2 = dict(GPT2_SMALL, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if layers is not None:
        bert["num_hidden_layers"] = gpt2["n_layer"] = layers
    for key, value in (sizes or {}).get("bert", {}).items():
        bert[key] = value
    for key, value in (sizes or {}).get("gpt2", {}).items():
        gpt2[key] = value
    torch.manual_seed(0)
    out = {}
    for name, config, cls in (("bert", BertConfig(**bert), BertForMaskedLM),
                              ("gpt2", GPT2Config(**gpt2), GPT2LMHeadModel)):
        model = cls(config)
        model.save_pretrained(Path(folder) / name)
        out[name] = {k: v for k, v in (bert if name == "bert" else gpt2).items()}
        del model
    return out


# ---- one training pass per implementation --------------------------------------------------------

def _inputs(model_name: str, vocab: int, batch: int, seq: int, seed: int = 0):
    """(ids (B, N), targets) of one model: BERT labels every position; GPT-2 predicts the next token."""
    rng = np.random.default_rng(seed)
    if model_name == "bert":
        ids = rng.integers(1, vocab, size=(batch, seq))
        return ids, rng.integers(0, vocab, size=(batch, seq))
    ids = rng.integers(0, vocab, size=(batch, seq))
    return ids, ids[:, 1:]


def rosetta_pass(backend: str, folder, model_name: str, ids, targets):
    """(step, parameter count, model): forward + cross-entropy + backward of a loaded checkpoint."""
    from rosetta.hf import load_pretrained

    if backend == "numpy":
        import reference as rt
    else:
        import accelerated.torch as rt
    model = load_pretrained(folder, backend=backend, dtype="float32")
    model.train()
    loss_fn = rt.CrossEntropyLoss()
    x = rt.asarray(ids)
    extra = {"token_type_ids": rt.asarray(np.zeros_like(ids))} if model_name == "bert" else {}
    y = rt.asarray(np.ascontiguousarray(targets).reshape(-1))
    params = list(model.parameters())

    def step():
        if backend == "numpy":
            model.zero_grad()
        else:
            for p in params:
                p.grad = None
        logits = model(x, **extra)  # (B, N, V)
        if model_name == "gpt2":
            logits = logits[:, :-1]  # (B, N-1, V)
        vocab = logits.shape[-1]
        loss = loss_fn(logits.reshape(-1, vocab), y)  # ()
        if backend == "numpy":
            model.backward(loss_fn.backward()[0].reshape(logits.shape) if model_name == "bert"
                           else _pad_last(loss_fn.backward()[0].reshape(logits.shape)))
        else:
            loss.backward()
        return loss

    count = sum(int(np.prod(tuple(p.shape))) for p in params)
    return step, count, model


def _pad_last(grad):
    """d logits[:, :-1] (B, N-1, V) → d logits (B, N, V): the last position gets no gradient."""
    return np.concatenate([grad, np.zeros_like(grad[:, :1])], axis=1)


def transformers_pass(folder, model_name: str, attention: str, ids, targets):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cls = AutoModelForMaskedLM if model_name == "bert" else AutoModelForCausalLM
    model = cls.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32)
    model.train()
    x = torch.from_numpy(np.ascontiguousarray(ids))
    extra = {"token_type_ids": torch.zeros_like(x)} if model_name == "bert" else {}
    y = torch.from_numpy(np.ascontiguousarray(targets)).reshape(-1)

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=x, **extra).logits
        if model_name == "gpt2":
            logits = logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y)
        loss.backward()
        return loss

    return step, sum(p.numel() for p in model.parameters()), model


# ---- generation ------------------------------------------------------------------------------

def generation_runner(implementation: str, folder, prompt, new_tokens: int):
    """(call returning the tokens (1, P + n) as NumPy, model) for one implementation."""
    if implementation in ("reference",) + TORCH_ROWS:
        from rosetta.hf import load_pretrained

        if implementation == "reference":
            import reference as rt

            model = load_pretrained(folder, backend="numpy", dtype="float32")
        else:
            import accelerated.torch as rt
            from accelerated.torch.decoding import pack_for_decoding

            # prepared once, as a server would: each linear map's weight also stored (in, out), the layout
            # transformers' GPT-2 keeps its Conv1D weights in (one token's product then reads contiguous rows)
            model = load_pretrained(folder, backend="torch", dtype="float32")
            if implementation == PACKED:
                model = pack_for_decoding(model)
        x = rt.asarray(prompt)

        def call():
            return np.asarray(rt.to_numpy(rt.generate(model, x, new_tokens, temperature=0.0)))

        return call, model
    import torch
    from transformers import AutoModelForCausalLM

    attention = implementation.split("(")[1].rstrip(")")
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None  # a random model may pick EOS; every call makes n tokens
    model.generation_config.pad_token_id = 0
    x = torch.from_numpy(np.ascontiguousarray(prompt))
    mask = torch.ones_like(x)

    def call():
        with torch.no_grad():
            out = model.generate(x, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, num_beams=1, use_cache=True)
        return out.numpy()

    return call, model


# ---- the suite ---------------------------------------------------------------------------------

def time_interleaved(calls: dict, warmup: int, reps: int):
    """({name: common.summarize of its per-call ms}, {name: its last result}).

    Every call is warmed up, then the reps run in rounds, one call of each per round (the order
    rotated each round), so that a change in the machine's load falls on every row alike."""
    last = {}
    for name, fn in calls.items():
        for _ in range(warmup):
            last[name] = fn()
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            last[name] = calls[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: common.summarize(t) for name, t in times.items()}, last


def _threads_all(threads):
    """Hold NumPy's BLAS and torch's pool (both used by every row here) to ``threads``."""
    return _threads("torch", threads)


def run(thread_settings=(1, 2), layers=None, batch: int = 2, seq: int = 128, warmup: int = 1, reps: int = 3,
        prompt_len: int = 16, new_tokens: int = 32, gen_warmup: int = 1, gen_reps: int = 3, models=("bert", "gpt2"),
        sizes=None, progress=print) -> dict:
    """Measure every implementation at each thread setting; returns the JSON document (not yet written)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would fill the table's output
    results, generation = [], []
    load_start = os.getloadavg()  # other processes' share of the CPUs, recorded beside the figures
    progress = progress or (lambda *_: None)
    with tempfile.TemporaryDirectory(prefix="rosetta-bench-real-") as tmp:
        configs = build_checkpoints(tmp, layers, sizes)
        for threads in thread_settings:
            with _threads_all(threads):
                for name in models:
                    folder = Path(tmp) / name
                    vocab = configs[name]["vocab_size"]
                    ids, targets = _inputs(name, vocab, batch, seq)
                    start = time.perf_counter()
                    steps, params = {}, {}
                    for implementation in IMPLEMENTATIONS:
                        if implementation == "reference":
                            steps[implementation], params[implementation], _ = rosetta_pass(
                                "numpy", folder, name, ids, targets)
                        elif implementation == "accelerated.torch":
                            steps[implementation], params[implementation], _ = rosetta_pass(
                                "torch", folder, name, ids, targets)
                        else:
                            attention = implementation.split("(")[1].rstrip(")")
                            steps[implementation], params[implementation], _ = transformers_pass(
                                folder, name, attention, ids, targets)
                    timings, losses = time_interleaved(steps, warmup, reps)
                    del steps
                    gc.collect()
                    rows = {}
                    for implementation in IMPLEMENTATIONS:
                        timing, loss = timings[implementation], losses[implementation]
                        row = {"model": name, "task": "forward+backward", "implementation": implementation,
                               "threads": threads, "parameters": params[implementation], "batch": batch, "seq": seq,
                               "loss": float(loss.detach() if hasattr(loss, "detach") else loss),
                               "tokens_per_s": batch * seq / timing["median_ms"] * 1e3, **timing}
                        rows[implementation] = row
                        results.append(row)
                        progress(f"  {name} {implementation:24s} {threads} thr: {timing['median_ms']:9.1f} ms "
                                 f"(loss {row['loss']:.4f})")
                    progress(f"  ({name}, {threads} thr: {time.perf_counter() - start:.0f} s)")
                    _ratios(rows, "median_ms", lower_is_better=True)
                if "gpt2" in models:
                    folder = Path(tmp) / "gpt2"
                    prompt = np.random.default_rng(1).integers(0, configs["gpt2"]["vocab_size"], size=(1, prompt_len))
                    calls = {implementation: generation_runner(implementation, folder, prompt, new_tokens)[0]
                             for implementation in GENERATION_IMPLEMENTATIONS}
                    timings, tokens = time_interleaved(calls, gen_warmup, gen_reps)
                    del calls
                    gc.collect()
                    rows = {}
                    for implementation in GENERATION_IMPLEMENTATIONS:
                        timing, out = timings[implementation], tokens[implementation]
                        row = {"model": "gpt2", "task": "generation", "implementation": implementation,
                               "threads": threads, "batch": 1, "prompt_len": prompt_len, "new_tokens": new_tokens,
                               "generated": int(out.shape[1] - prompt_len),
                               "tokens_per_s": new_tokens / timing["median_ms"] * 1e3, **timing}
                        rows[implementation] = row
                        generation.append(row)
                        progress(f"  gpt2 generate {implementation:24s} {threads} thr: "
                                 f"{row['tokens_per_s']:8.1f} tokens/s")
                    expected = tokens["transformers (eager)"]
                    for implementation, row in rows.items():
                        row["same_tokens_as_transformers"] = bool(np.array_equal(tokens[implementation], expected))
                    _ratios(rows, "tokens_per_s", lower_is_better=False)
        torch_threads = torch.get_num_threads()
    config = {"batch": batch, "seq": seq, "dtype": "float32", "warmup": warmup, "reps": reps,
              "prompt_len": prompt_len, "new_tokens": new_tokens, "gen_warmup": gen_warmup, "gen_reps": gen_reps,
              "threads": list(thread_settings), "torch_default_threads": torch_threads,
              "models": {name: configs[name] for name in models},
              "loss": {"bert": "cross-entropy of the MLM logits against random labels at every position",
                       "gpt2": "LM cross-entropy: logits of tokens 0..N-2 against tokens 1..N-1"},
              "pass": "forward + cross-entropy + backward, gradients cleared before each (no optimizer)",
              "torch_generation": "two rows: as loaded, and 'packed': pack_for_decoding(model) once after loading, "
                                  "each linear map's weight also stored (in, out), as transformers' GPT-2 Conv1D "
                                  "weights (one more copy of the weights in memory)",
              "targets": {"reference_over_transformers": TARGET_REFERENCE,
                          "torch_over_transformers": TARGET_TORCH,
                          "torch_generation_tokens_per_s_over_transformers": TARGET_GENERATION,
                          "judged_against": "the faster transformers row (eager or sdpa) at the same threads"}}
    import transformers

    document = common.record("real-models", "python -m rosetta.bench real-models", "cpu", config,
                             results + generation)
    document["versions"]["transformers"] = transformers.__version__
    document["targets_met"] = targets_met(document)
    document["load_average"] = {"start": [round(x, 2) for x in load_start],
                                "end": [round(x, 2) for x in os.getloadavg()],
                                "note": "1, 5 and 15-minute load averages of the machine (os.getloadavg)"}
    return document


def _ratios(rows: dict, key: str, lower_is_better: bool) -> None:
    """Each row's figure over each transformers row's (and over the better one), and the target check."""
    base = {a: rows[f"transformers ({a})"][key] for a in HF_ATTENTION}
    best = min(base.values()) if lower_is_better else max(base.values())
    for implementation, row in rows.items():
        for attention, value in base.items():
            row[f"ratio_vs_{attention}"] = row[key] / value
        row["ratio_vs_best_transformers"] = row[key] / best
        if lower_is_better:
            target = {"reference": TARGET_REFERENCE, "accelerated.torch": TARGET_TORCH}.get(implementation)
            row["target"] = target
            row["meets_target"] = None if target is None else row["ratio_vs_best_transformers"] <= target
        else:
            target = TARGET_GENERATION if implementation in TORCH_ROWS else None
            row["target"] = target
            row["meets_target"] = None if target is None else row["ratio_vs_best_transformers"] >= target


def targets_met(document: dict) -> list:
    """One line per judged row: what, threads, the ratio, the target, met or not."""
    out = []
    for row in document["results"]:
        if row.get("target") is not None:
            out.append({"model": row["model"], "task": row["task"], "implementation": row["implementation"],
                        "threads": row["threads"], "ratio": row["ratio_vs_best_transformers"],
                        "target": row["target"], "comparison": "<=" if row["task"] != "generation" else ">=",
                        "met": row["meets_target"]})
    return out


COLUMNS = [("model", "model", ""), ("task", "task", ""), ("implementation", "implementation", ""),
           ("threads", "threads", ""), ("ms (median)", "median_ms", ".1f"), ("min", "min_ms", ".1f"),
           ("max", "max_ms", ".1f"), ("tokens/s", "tokens_per_s", ",.1f"), ("/eager", "ratio_vs_eager", ".2f"),
           ("/sdpa", "ratio_vs_sdpa", ".2f"), ("target", "target", ""), ("met", "meets_target", "")]


def report(document: dict) -> str:
    c = document["config"]
    v = document["versions"]
    head = (f"real-models: {document['device']['name']} ({document['device']['cpu_count']} cores), "
            f"numpy {v['numpy']}, torch {v['torch']}, transformers {v.get('transformers')}; float32; "
            f"forward+backward at batch {c['batch']} x seq {c['seq']} (median of {c['reps']} after {c['warmup']} "
            f"warm-up); greedy generation, batch 1, prompt {c['prompt_len']}, {c['new_tokens']} new tokens "
            f"(median of {c['gen_reps']}). Ratios: time (training) or tokens/s (generation) over transformers'.")
    lines = [head, common.format_table(document["results"], COLUMNS)]
    if "load_average" in document:
        lines.append(f"load average (1/5/15 min) at start {document['load_average']['start']}, "
                     f"at end {document['load_average']['end']} on {document['device']['cpu_count']} cores")
    for t in document["targets_met"]:
        lines.append(f"  {t['model']} {t['task']} {t['implementation']} {t['threads']} thr: "
                     f"{t['ratio']:.2f} (target {t['comparison']} {t['target']}): {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def plot(document: dict, path):
    """Left: forward+backward ms per model and thread setting; right: generation tokens/s. None if empty."""
    from .plots import _pyplot

    rows = [r for r in document["results"] if r.get("median_ms")]
    if not rows:
        return None
    plt = _pyplot()
    colors = dict(zip(GENERATION_IMPLEMENTATIONS, ("tab:green", "tab:blue", "tab:cyan", "tab:gray", "silver")))
    panels = (("forward+backward", "median_ms", "ms per forward+backward (median)"),
              ("generation", "tokens_per_s", "generated tokens/s (median call)"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100)
    for ax, (task, key, ylabel) in zip(axes, panels):
        task_rows = [r for r in rows if r["task"] == task]
        groups = sorted({(r["model"], r["threads"]) for r in task_rows}, key=lambda g: (g[0], g[1]))
        shown = GENERATION_IMPLEMENTATIONS if task == "generation" else IMPLEMENTATIONS
        width = 0.8 / len(shown)
        for i, implementation in enumerate(shown):
            xs, values = [], []
            for g, (model, threads) in enumerate(groups):
                for r in task_rows:
                    if (r["model"], r["threads"], r["implementation"]) == (model, threads, implementation):
                        xs.append(g + (i - (len(shown) - 1) / 2) * width)
                        values.append(r[key])
            if values:
                ax.bar(xs, values, width, label=implementation, color=colors[implementation])
                for x, value in zip(xs, values):
                    ax.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(groups)), [f"{m}\n{t} thread{'s' if t != 1 else ''}" for m, t in groups], fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    c = document["config"]
    fig.suptitle(f"random BERT-base / GPT-2-small-sized models vs transformers, float32, batch {c['batch']} x "
                 f"seq {c['seq']}; {document['device']['name']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
