"""The training command: a Transformer learns a synthetic task (copy, reverse, sort), then is scored by greedy decoding."""

from __future__ import annotations

import importlib
import json
import os
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reference.checks import check_choice, describe
from .tasks import BOS, EOS, PAD, TASKS, SyntheticTask

#: presets of the training config; "small" is the default, sized for a 2-core CPU (see docs/training.md)
PRESETS = {
    "small": {
        # task
        "task": "reverse", "num_symbols": 10, "min_len": 10, "max_len": 14, "heldout_size": 1000,
        # model (reference.Transformer)
        "d_model": 64, "num_heads": 4, "d_ff": 128, "num_encoder_layers": 2, "num_decoder_layers": 2,
        "dropout": 0.0, "norm_first": False, "tie_embeddings": False, "dtype": "float32",
        # optimization
        "steps": 1000, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 100, "schedule": "cosine",
        "betas": [0.9, 0.98], "eps": 1e-9, "weight_decay": 0.0, "label_smoothing": 0.1, "clip_norm": 1.0,
        # run
        "seed": 0, "eval_batch_size": 250, "threads": 1,
    },
}
PRESETS["tiny"] = {  # seconds on a CPU: for tests and smoke runs
    **PRESETS["small"],
    "num_symbols": 4, "min_len": 2, "max_len": 4, "heldout_size": 64,
    "d_model": 32, "num_heads": 2, "d_ff": 64, "num_encoder_layers": 2, "num_decoder_layers": 2,
    "steps": 300, "batch_size": 32, "lr": 2e-3, "warmup_steps": 30,
}
DEFAULT_PRESET = "small"
SCHEDULES = ("cosine", "inverse_sqrt", "constant")
BACKENDS = {"numpy": "reference", "torch": "accelerated.torch", "cupy": "accelerated.cupy"}
#: what the training loop uses from a backend's namespace (the API every backend shares)
BACKEND_NAMES = ("Transformer", "CrossEntropyLoss", "AdamW", "WarmupCosine", "WarmupInverseSqrt",
                 "clip_grad_norm_", "asarray", "to_numpy", "greedy_decode")
#: the model's positional table: longer inputs than this are refused by the model
MODEL_MAX_LEN = 256


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what to install or use instead."""


def parse_overrides(items) -> dict:
    """``["small", "d_model=32", "lr=3e-3"]`` → the preset's config with those values replaced.

    At most one preset name (default "small"); every key=value must name a key of the config,
    and its value is parsed as that key's type (bool accepts true/false/1/0; betas "0.9,0.98").
    """
    preset, pairs = None, []
    for item in items or ():
        if "=" in item:
            pairs.append(item)
        elif preset is None:
            preset = check_choice("config", item, set(PRESETS))
        else:
            raise ValueError(f"config may name one preset, got {preset!r} and {item!r}")
    config = json.loads(json.dumps(PRESETS[preset or DEFAULT_PRESET]))  # a deep copy
    for pair in pairs:
        key, _, text = pair.partition("=")
        key = key.strip()
        if key not in config:
            raise ValueError(f"config key must be one of {sorted(config)}, got {key!r} (in {pair!r})")
        config[key] = _parse_value(key, text.strip(), config[key])
    return config


def _parse_value(key: str, text: str, default):
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list):
            return [float(part) for part in text.split(",")]
        return text
    except ValueError:
        raise ValueError(f"config value of {key!r} must be a {type(default).__name__} like {default!r}, "
                         f"got {text!r}") from None


def check_config(config: dict) -> dict:
    """Reject configs the run cannot use, before any time is spent."""
    check_choice("task", config["task"], set(TASKS))
    check_choice("schedule", config["schedule"], set(SCHEDULES))
    for key in ("steps", "batch_size", "eval_batch_size", "d_model", "num_heads", "d_ff", "threads"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"config {key} must be a positive int, got {describe(config[key])}")
    if config["d_model"] % config["num_heads"]:
        raise ValueError(f"config d_model ({config['d_model']}) must be divisible by num_heads ({config['num_heads']})")
    if config["max_len"] + 2 > MODEL_MAX_LEN:
        raise ValueError(f"config max_len must be at most {MODEL_MAX_LEN - 2} (the model's positions), "
                         f"got {config['max_len']}")
    if len(config["betas"]) != 2:
        raise ValueError(f"config betas must be two numbers, got {config['betas']!r}")
    return config


def load_backend(name: str):
    """The namespace of backend ``name`` (numpy, torch, cupy) with the names training uses.

    Raises ValueError for an unknown name and BackendUnavailable (with what to install or do)
    when the backend cannot be imported or does not provide the training API yet.
    """
    check_choice("backend", name, set(BACKENDS))
    module_name = BACKENDS[name]
    try:
        namespace = importlib.import_module(module_name)
    except ImportError as error:
        extra = {"torch": "torch", "cupy": "cuda12"}.get(name, "")
        hint = "" if "pip install" in str(error) else f"; install it with: pip install 'rosetta-transformer[{extra}]'"
        raise BackendUnavailable(f"backend {name!r} is not available: {error}{hint}") from None
    except Exception as error:  # noqa: BLE001 - e.g. CuPy without a GPU raises at import
        raise BackendUnavailable(f"backend {name!r} is not available on this machine: {error}") from None
    missing = [attr for attr in BACKEND_NAMES if not hasattr(namespace, attr)]
    if missing:
        raise BackendUnavailable(
            f"backend {name!r} ({module_name}) does not provide {', '.join(missing)}, which training needs; "
            f"train with --backend numpy instead"
        )
    return namespace


def model_config(config: dict, vocab_size: int) -> dict:
    """The Transformer arguments of a training config (what a checkpoint's config["model"] holds)."""
    return {
        "src_vocab_size": vocab_size, "tgt_vocab_size": vocab_size, "d_model": config["d_model"],
        "num_heads": config["num_heads"], "d_ff": config["d_ff"], "num_encoder_layers": config["num_encoder_layers"],
        "num_decoder_layers": config["num_decoder_layers"], "dropout": config["dropout"],
        "norm_first": config["norm_first"], "max_len": MODEL_MAX_LEN, "tie_embeddings": config["tie_embeddings"],
        "padding_idx": PAD, "dtype": config["dtype"],
    }


def make_task_from_config(config: dict) -> SyntheticTask:
    return SyntheticTask(config["task"], config["num_symbols"], config["min_len"], config["max_len"],
                         seed=config["seed"], heldout_size=config["heldout_size"])


def make_schedule(rt, config: dict, optimizer):
    """Linear warm-up, then a cosine to min_lr, or the paper's 1/√t (peak lr at warmup), or constant."""
    warmup, steps, lr = config["warmup_steps"], config["steps"], config["lr"]
    if config["schedule"] == "cosine":
        return rt.WarmupCosine(lr, min(warmup, steps), steps, min(config["min_lr"], lr), optimizer=optimizer)
    if config["schedule"] == "inverse_sqrt":
        # the paper's d^(−½)·min(t^(−½), t·w^(−3/2)) scaled so that its peak at t = w is lr
        factor = lr * math.sqrt(config["d_model"] * max(warmup, 1))
        return rt.WarmupInverseSqrt(config["d_model"], max(warmup, 1), factor, optimizer=optimizer)
    return rt.WarmupCosine(lr, 0, steps, lr, optimizer=optimizer)


# ---- decoding and scoring -------------------------------------------------------------------

def _greedy(namespace_module: str):
    return importlib.import_module(namespace_module).greedy_decode  # every backend's namespace has it


def output_sequences(ids) -> list:
    """Generated ids (B, N) → one list per row: without a leading BOS, cut before the first EOS."""
    ids = np.asarray(ids)
    rows = []
    for row in ids.tolist():
        if row and row[0] == BOS:
            row = row[1:]
        rows.append(row[: row.index(EOS)] if EOS in row else row)
    return rows


def greedy_outputs(model, src, src_key_padding_mask, rt=None, module_name: str = "reference") -> list:
    """Greedy decoding of a source batch (ids (B, S) with EOS): one symbol-id list per row."""
    to_numpy = rt.to_numpy if rt is not None else np.asarray
    asarray = rt.asarray if rt is not None else np.asarray
    max_len = src.shape[1] + 1  # the tasks' targets are as long as the source: symbols + EOS, plus one spare
    generated = _greedy(module_name)(model, asarray(src), max_len, BOS, EOS,
                                     src_key_padding_mask=asarray(src_key_padding_mask), use_cache=True)
    return output_sequences(to_numpy(generated))


def exact_match(model, task: SyntheticTask, batch_size: int, rt=None, module_name: str = "reference") -> float:
    """The fraction of held-out sequences whose greedy output equals the target exactly."""
    correct = total = 0
    for batch in task.heldout_batches(batch_size):
        outputs = greedy_outputs(model, batch.src, batch.src_key_padding_mask, rt, module_name)
        for out, target in zip(outputs, batch.tgt_out.tolist()):
            correct += out == target[: target.index(EOS)]
            total += 1
    return correct / total if total else float("nan")


def teacher_forced_exact_match(model, task: SyntheticTask, batch_size: int, rt=None) -> float:
    """Fraction of held-out targets whose every position is the argmax given the true prefix.

    This equals greedy exact match (greedy reproduces the target exactly iff each step's argmax
    after the correct prefix is the next target token), at the cost of one forward pass.
    """
    asarray = rt.asarray if rt is not None else np.asarray
    to_numpy = rt.to_numpy if rt is not None else np.asarray
    correct = total = 0
    for batch in task.heldout_batches(batch_size):
        mask = asarray(batch.src_key_padding_mask)
        logits = model(asarray(batch.src), asarray(batch.tgt_in), src_key_padding_mask=mask,
                       memory_key_padding_mask=mask)  # (B, T, V)
        predicted = to_numpy(logits).argmax(axis=-1)  # (B, T)
        ok = (predicted == batch.tgt_out) | (batch.tgt_out == PAD)  # (B, T)
        correct += int(ok.all(axis=1).sum())
        total += len(batch.tgt_out)
    return correct / total if total else float("nan")


# ---- the run --------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What a run measured: per-step loss and learning rate, held-out accuracy, speed, files written."""

    config: dict
    backend: str
    losses: list = field(default_factory=list)
    learning_rates: list = field(default_factory=list)
    exact_match: float = float("nan")
    teacher_forced_exact_match: float = float("nan")
    heldout_sequences: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    total_seconds: float = 0.0
    target_tokens: int = 0
    num_parameters: int = 0
    world_size: int = 1  # processes under torchrun (torch backend)
    fsdp: bool = False  # parameters, gradients and optimizer state sharded over them (FSDP2) instead of DDP
    mixed_precision: str | None = None  # FSDP2's compute dtype when not the parameters' (bf16, fp16)
    files: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.target_tokens / self.train_seconds if self.train_seconds else 0.0

    def summary(self) -> dict:
        data = asdict(self)
        del data["losses"], data["learning_rates"]
        data["tokens_per_second"] = round(self.tokens_per_second, 1)
        data["final_loss"] = self.losses[-1] if self.losses else None
        return data


def train(config: dict, backend: str = "numpy", out_dir=None, progress: bool = True, fsdp: bool = False,
          mixed_precision: str | None = None) -> TrainResult:
    """Train a Transformer on config's task, score it on the held-out split, write the outputs.

    Per step: a fresh batch; logits = model(src, tgt_in) with source padding masked; label-
    smoothed cross-entropy against tgt_out ignoring PAD; backward; clip the gradient norm;
    AdamW step; schedule step. Then exact-match greedy accuracy on the held-out sequences.
    With out_dir: model.safetensors (checkpoint), run.json (config and results), loss_curve.png.

    BLAS runs on config["threads"] threads (default 1): OpenBLAS's default of one thread per
    core makes this model's many small matrix products about 20 times slower on a busy 2-core
    machine (docs/training.md, "Where the time went"). The torch backend's own thread pool is
    held to the same count for the run.

    fsdp (torch backend, under torchrun): shard parameters, gradients and optimizer state over
    the ranks with FSDP2 instead of replicating them with DDP; mixed_precision "bf16"/"fp16"
    computes in that dtype. Evaluation and the checkpoint use the whole model gathered from the
    shards (docs/distributed.md, "DDP vs FSDP").
    """
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    config = check_config(dict(config))
    check_fsdp(backend, fsdp, mixed_precision)
    rt = load_backend(backend)
    module_name = BACKENDS[backend]
    task = make_task_from_config(config)
    model = rt.Transformer(**model_config(config, task.vocab_size), seed=config["seed"])
    loss_fn = rt.CrossEntropyLoss(ignore_index=PAD, label_smoothing=config["label_smoothing"])
    result = TrainResult(config=config, backend=backend, num_parameters=sum(int(np.prod(p.shape))
                                                                            for p in model.parameters()),
                         fsdp=fsdp, mixed_precision=mixed_precision)

    dist = _distributed(backend)  # torch: DDP (or FSDP2) under torchrun, a world of one otherwise
    if fsdp and not dist.enabled:
        raise ValueError("--fsdp (fsdp=True) needs processes to shard over: expected a run launched by torchrun, "
                         "e.g. torchrun --nproc_per_node=2 -m rosetta.cli train --backend torch --fsdp, "
                         "got a plain process (no RANK/WORLD_SIZE in the environment)")
    if dist and dist.enabled:
        dist.seed_dropout(model, config["seed"])
    if fsdp:  # the model itself, its parameters now DTensor shards
        model = step_model = dist.fully_shard(model, mixed_precision)
    else:
        step_model = dist.wrap(model) if dist else model
    # built after sharding, from the shards: under FSDP its state is sharded too
    optimizer = rt.AdamW(model.parameters(), lr=config["lr"], betas=tuple(config["betas"]), eps=config["eps"],
                         weight_decay=config["weight_decay"])
    schedule = make_schedule(rt, config, optimizer)
    is_main = dist is None or dist.is_main

    with threadpool_limits(limits=config["threads"], user_api="blas"), _backend_threads(backend, config["threads"]):
        model.train()
        bar = _progress_bar(config["steps"], progress and is_main)
        train_start = time.perf_counter()
        for _ in range(config["steps"]):
            batch = task.train_batch(config["batch_size"])
            lr = schedule.lr
            arrays = (batch.src, batch.tgt_in, batch.tgt_out, batch.src_key_padding_mask)
            # under DDP each rank takes its rows of the same global batch
            src, tgt_in, tgt_out, mask = dist.shard(*arrays) if dist else (rt.asarray(a) for a in arrays)
            logits = step_model(src, tgt_in, src_key_padding_mask=mask, memory_key_padding_mask=mask)  # (B, T, V)
            loss = loss_fn(logits, tgt_out)  # ()
            optimizer.zero_grad()
            if dist:  # autograd, so DDP's all-reduce hooks fire; weighted to the global batch's mean
                count = int((tgt_out != PAD).sum())
                dist.backward(loss, count)
                loss_value = dist.reduce_mean(float(loss.detach()), weight=count)
            else:
                model.backward(loss_fn.backward()[0])  # fills every parameter's grad
                loss_value = float(rt.to_numpy(loss))
            rt.clip_grad_norm_(model.parameters(), config["clip_norm"])
            optimizer.step()
            schedule.step()
            result.losses.append(loss_value)
            result.learning_rates.append(lr)
            result.target_tokens += batch.num_target_tokens
            elapsed = time.perf_counter() - train_start
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", lr=f"{lr:.2e}",
                            tok_s=f"{result.target_tokens / max(elapsed, 1e-9):,.0f}", refresh=False)
            bar.update(1)
        bar.close()
        result.train_seconds = time.perf_counter() - train_start
        if fsdp:  # every rank gathers the whole model from the shards: evaluation and the checkpoint use it
            model = rt.Transformer(**model_config(config, task.vocab_size), seed=config["seed"])
            model.load_state_dict(dist.full_state_dict(step_model))

        eval_start = time.perf_counter()
        model.eval()
        result.heldout_sequences = len(task.heldout)
        result.exact_match = exact_match(model, task, config["eval_batch_size"], rt, module_name)
        result.teacher_forced_exact_match = teacher_forced_exact_match(model, task, config["eval_batch_size"], rt)
        result.eval_seconds = time.perf_counter() - eval_start

    if dist:
        result.world_size = dist.world_size
        dist.close()
    if out_dir is not None and is_main:  # one rank writes
        result.files = write_outputs(Path(out_dir), model, task, result)
    result.total_seconds = time.perf_counter() - start
    if out_dir is not None and is_main:
        (Path(out_dir) / "run.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    return result


def check_fsdp(backend: str, fsdp, mixed_precision) -> None:
    """Refuse FSDP options the run cannot honour (the process group is checked once it is set up)."""
    if not isinstance(fsdp, bool):
        raise TypeError(f"fsdp must be a bool, got {describe(fsdp)}")
    if mixed_precision is not None and not fsdp:
        raise ValueError(f"--fsdp-mixed-precision (mixed_precision) needs --fsdp, got {mixed_precision!r} without it")
    if fsdp and backend != "torch":
        raise ValueError(f"--fsdp needs --backend torch (FSDP2 shards torch modules), got --backend {backend}")
    if mixed_precision is not None:
        from accelerated.torch.distributed import MIXED_PRECISION

        check_choice("--fsdp-mixed-precision (mixed_precision)", mixed_precision, set(MIXED_PRECISION))


def _distributed(backend: str):
    """The torch backend trains through accelerated.torch.distributed (DDP or FSDP2 under torchrun)."""
    if backend != "torch":
        return None
    from accelerated.torch.distributed import setup_distributed

    return setup_distributed()


@contextmanager
def _backend_threads(backend: str, threads: int):
    """torch computes on its own thread pool, not BLAS's: hold it to ``threads`` for the run, then restore it."""
    if backend != "torch":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_outputs(out_dir: Path, model, task: SyntheticTask, result: TrainResult) -> dict:
    """Write the checkpoint and the loss-curve PNG; return every output's path (train writes run.json last)."""
    from .checkpoint import save_checkpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_config = {
        "model": model_config(result.config, task.vocab_size),
        "task": task.spec(),
        "train": result.config,
        "results": {"exact_match": result.exact_match, "heldout_sequences": result.heldout_sequences,
                    "steps": len(result.losses), "final_loss": result.losses[-1] if result.losses else None},
    }
    files = {
        "checkpoint": str(save_checkpoint(out_dir / "model.safetensors", model, checkpoint_config)),
        "loss_curve": str(plot_loss_curve(result.losses, result.learning_rates, out_dir / "loss_curve.png",
                                          title=f"{task.task}: {result.config['d_model']}-d, "
                                                f"{result.exact_match:.1%} exact match",
                                          floor=smoothing_floor(task.vocab_size, result.config["label_smoothing"]))),
        "run": str(out_dir / "run.json"),
    }
    return files


def smoothing_floor(num_classes: int, label_smoothing: float) -> float:
    """The least label-smoothed cross-entropy any prediction can reach: the entropy H(q) of the target q."""
    eps = label_smoothing
    right, other = 1 - eps + eps / num_classes, eps / num_classes  # q at the target, q elsewhere
    return -right * math.log(right) - (num_classes - 1) * (other * math.log(other) if other > 0 else 0.0)


def plot_loss_curve(losses, learning_rates, path, title: str = "", floor=None) -> Path:
    """A PNG of the training loss per step (raw and smoothed) with the learning rate on a second axis.

    floor (optional): the loss of a perfect model under label smoothing, drawn as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss (per step)")
    if len(losses) >= 2:
        smooth, value = [], losses[0]
        for loss in losses:  # exponential moving average, weight 0.95 on the past
            value = 0.95 * value + 0.05 * loss
            smooth.append(value)
        ax.plot(steps, smooth, color="tab:blue", linewidth=1.8, label="loss (moving average)")
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1.0, label=f"label-smoothing floor {floor:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (label-smoothed)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    lr_axis = ax.twinx()
    lr_axis.plot(steps, learning_rates, color="tab:orange", linewidth=1.2, label="learning rate")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    lines = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)


# ---- using a trained model: decode text, draw attention --------------------------------------

def task_from_checkpoint(config: dict) -> SyntheticTask:
    """The task a checkpoint was trained on (its symbols and rule), without a held-out split."""
    spec = config.get("task") if isinstance(config, dict) else None
    if not isinstance(spec, dict) or "task" not in spec or "num_symbols" not in spec:
        raise ValueError(f"checkpoint config must have a 'task' entry with task and num_symbols, got {describe(spec)}")
    return SyntheticTask(spec["task"], spec["num_symbols"], spec.get("min_len", 1), spec.get("max_len", 1),
                         seed=spec.get("seed", 0), heldout_size=0)


def decode_text(model, task: SyntheticTask, text: str, max_len=None, backend: str = "numpy"):
    """Greedy output for space-separated symbols: (generated ids, BOS first; the output as text).

    max_len (tokens generated, BOS included) defaults to twice the source length plus 2, at
    most the model's max_len. ``model`` lives on ``backend`` (numpy, torch or cupy).
    """
    ids = task.encode_text(text)  # (L,)
    src = np.concatenate([ids, [EOS]])[None, :].astype(np.int64)  # (1, L + 1)
    if src.shape[1] > model.max_len:
        raise ValueError(f"text must hold at most {model.max_len - 1} symbols (the model's max_len), got {len(ids)}")
    if max_len is None:
        max_len = min(model.max_len, 2 * src.shape[1] + 2)
    rt = load_backend(backend)
    generated = rt.to_numpy(rt.greedy_decode(model, rt.asarray(src), max_len, BOS, EOS, use_cache=True))  # (1, T)
    return generated[0], task.decode_ids(output_sequences(generated)[0])


def attention_maps(model, src, tgt_in) -> list:
    """Every head's attention probabilities after one teacher-forced forward, in eval mode.

    Returns (name, weights (H, L, S)) for each encoder layer's self-attention, then each
    decoder layer's self-attention and cross-attention (batch row 0).
    """
    model.eval()
    model(src, tgt_in)  # (1, T, V)  fills each attention's saved probabilities
    maps = []
    for i, layer in enumerate(model.encoder.layers):
        maps.append((f"encoder_layer{i}_self_attention", layer.self_attn.attention.attention_weights[0]))
    for i, layer in enumerate(model.decoder.layers):
        maps.append((f"decoder_layer{i}_self_attention", layer.self_attn.attention.attention_weights[0]))
        maps.append((f"decoder_layer{i}_cross_attention", layer.cross_attn.attention.attention_weights[0]))
    return [(name, np.asarray(weights)) for name, weights in maps]


def plot_attention(model, task: SyntheticTask, text: str, out_dir) -> list:
    """PNG heatmaps (one file per attention, one panel per head) for the greedy decoding of text.

    The decoder reads BOS and its own greedy output; queries are rows, keys columns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    generated, _ = decode_text(model, task, text)
    src = np.concatenate([task.encode_text(text), [EOS]])[None, :].astype(np.int64)  # (1, S)
    tgt_in = generated[None, :-1] if generated[-1] == EOS else generated[None, :]  # (1, T)  BOS, outputs
    src_labels = task.decode_ids(src[0]).split()
    tgt_labels = task.decode_ids(tgt_in[0]).split()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, weights in attention_maps(model, src, tgt_in):
        rows = tgt_labels if name.startswith("decoder") else src_labels  # queries
        cols = src_labels if ("cross" in name or name.startswith("encoder")) else tgt_labels  # keys
        heads = weights.shape[0]
        fig, axes = plt.subplots(1, heads, figsize=(2.6 * heads + 0.8, 3.0), dpi=100, squeeze=False)
        for h, ax in enumerate(axes[0]):
            image = ax.imshow(weights[h], vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(f"head {h}", fontsize=9)
            ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
            ax.set_yticks(range(len(rows)), rows if h == 0 else [""] * len(rows), fontsize=7)
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
        fig.suptitle(f"{name.replace('_', ' ')} (rows: queries, columns: keys)", fontsize=10)
        path = out_dir / f"{name}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


# ---- the command line: rosetta train | decode | plot-attention ---------------------------------

def add_commands(sub) -> None:
    """Add the train, decode and plot-attention subcommands to the ``rosetta`` parser."""
    train_cmd = sub.add_parser("train", help="train a Transformer on a synthetic task, then score greedy decoding")
    train_cmd.add_argument("--task", help="copy, reverse or sort (default: the config's, reverse)")
    train_cmd.add_argument("--backend", default="numpy", choices=sorted(BACKENDS),
                           help="numpy (the reference, default), torch or cupy")
    train_cmd.add_argument("--config", nargs="*", default=[], metavar="PRESET|KEY=VALUE",
                           help=f"a preset ({', '.join(PRESETS)}; default {DEFAULT_PRESET}) and/or key=value "
                                "overrides, e.g. --config d_model=32 lr=3e-3")
    train_cmd.add_argument("--steps", type=int, help="optimizer steps (default: the config's)")
    train_cmd.add_argument("--seed", type=int, help="seed of the model, the data and the held-out split")
    train_cmd.add_argument("--out", help="output folder (default: runs/<task>)")
    train_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    train_cmd.add_argument("--fsdp", action="store_true",
                           help="torch under torchrun: shard parameters, gradients and optimizer state over the "
                                "processes (FSDP2, ZeRO-3) instead of replicating them (DDP)")
    train_cmd.add_argument("--fsdp-mixed-precision", metavar="bf16|fp16",
                           help="with --fsdp: compute in this dtype, reduce gradients in float32")
    train_cmd.set_defaults(run=run_train)

    decode = sub.add_parser("decode", help="greedy-decode space-separated symbols with a trained checkpoint")
    decode.add_argument("--checkpoint", required=True, help="a model.safetensors written by rosetta train")
    decode.add_argument("--backend", default="numpy", choices=sorted(BACKENDS),
                        help="numpy (the reference, default), torch or cupy")
    decode.add_argument("--max-len", type=int, help="most tokens to generate, BOS included "
                                                    "(default: twice the input length + 2)")
    decode.add_argument("tokens", nargs="+", help='the source symbols, e.g. "a b c d"')
    decode.set_defaults(run=run_decode)

    plot = sub.add_parser("plot-attention", help="PNG heatmaps of every head of every attention layer")
    plot.add_argument("--checkpoint", required=True, help="a model.safetensors written by rosetta train")
    plot.add_argument("--out", required=True, help="folder for the PNG files")
    plot.add_argument("tokens", nargs="+", help='the source symbols, e.g. "a b c d"')
    plot.set_defaults(run=run_plot_attention)


def _error(command: str, error) -> int:
    print(f"rosetta {command}: error: {error}", file=sys.stderr)
    return 2


def run_train(args) -> int:
    try:
        config = parse_overrides(args.config)
        for key in ("task", "steps", "seed"):
            if getattr(args, key) is not None:
                config[key] = getattr(args, key)
        check_config(config)
        check_fsdp(args.backend, args.fsdp, args.fsdp_mixed_precision)
        load_backend(args.backend)
    except (BackendUnavailable, TypeError, ValueError) as error:
        return _error("train", error)
    out = args.out if args.out is not None else f"runs/{config['task']}"
    # under torchrun only rank 0 reports (torchrun sets RANK)
    say = print if os.environ.get("RANK", "0") == "0" else (lambda *args, **kwargs: None)
    say(f"task {config['task']} ({config['min_len']}..{config['max_len']} symbols of {config['num_symbols']}), "
          f"backend {args.backend}: d_model={config['d_model']}, heads={config['num_heads']}, d_ff={config['d_ff']}, "
          f"layers={config['num_encoder_layers']}+{config['num_decoder_layers']}, batch={config['batch_size']}, "
          f"steps={config['steps']}, lr={config['lr']:g} ({config['schedule']}, warm-up {config['warmup_steps']})",
          flush=True)
    try:
        result = train(config, backend=args.backend, out_dir=out, progress=not args.quiet, fsdp=args.fsdp,
                       mixed_precision=args.fsdp_mixed_precision)
    except (BackendUnavailable, TypeError, ValueError) as error:
        return _error("train", error)
    say(f"{result.num_parameters:,} parameters, final loss {result.losses[-1]:.4f}")
    say(f"held-out exact match (greedy decoding, {result.heldout_sequences} sequences of length "
          f"{config['min_len']}..{config['max_len']}): {result.exact_match:.2%}")
    say(f"time: train {result.train_seconds:.1f} s ({result.tokens_per_second:,.0f} target tokens/s), "
        f"evaluation {result.eval_seconds:.1f} s, total {result.total_seconds:.1f} s"
        + (f", {result.world_size} processes" if result.world_size > 1 else "")
        + (f" (FSDP{', ' + result.mixed_precision if result.mixed_precision else ''})" if result.fsdp else ""))
    say("wrote " + ", ".join(result.files.values()))
    return 0


def _load_for_inference(path, backend: str = "numpy"):
    from .checkpoint import load_checkpoint

    model, config = load_checkpoint(path, backend=load_backend(backend))
    model.eval()
    return model, task_from_checkpoint(config)


def run_decode(args) -> int:
    try:
        model, task = _load_for_inference(args.checkpoint, args.backend)
        _, text = decode_text(model, task, " ".join(args.tokens), args.max_len, args.backend)
    except (TypeError, ValueError, BackendUnavailable) as error:
        return _error("decode", error)
    print(text)
    return 0


def run_plot_attention(args) -> int:
    try:
        model, task = _load_for_inference(args.checkpoint)
        paths = plot_attention(model, task, " ".join(args.tokens), args.out)
    except (TypeError, ValueError) as error:
        return _error("plot-attention", error)
    for path in paths:
        print(path)
    return 0
