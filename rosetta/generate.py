"""``rosetta generate`` and ``rosetta embed``: text in, text (or vectors) out, on a Hugging Face folder.

    rosetta generate --model DIR [--backend numpy|torch|cupy] [--max-new-tokens N] [--temperature T]
                     [--top-k K] [--top-p P] [--seed S] [--greedy] [--num-beams K [--length-penalty A]] "prompt"
    rosetta embed --model DIR [--backend ...] [--out vectors.npy] "sentence" ...

The folder is read by ``rosetta.hf.load_pretrained`` (generate: gpt2, llama, mistral, qwen2;
embed: bert) and its ``tokenizer.json`` by the ``tokenizers`` library, imported here only (a
dependency of the application, never of ``reference`` or ``accelerated``). Every problem the
user can fix is a ValueError, which the command prints as one line and exits with code 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .hf import backend_namespace, load_pretrained

#: the model types each command runs (the rest of rosetta.hf.ARCHITECTURES is refused by name)
DECODERS = ("gpt2", "llama", "mistral", "qwen2")
ENCODERS = ("bert",)
TOKENIZER = "tokenizer.json"
GENERATION_CONFIG = "generation_config.json"
#: model_type -> the files of its slow (Python) tokenizer, read when the folder has no tokenizer.json
SLOW_TOKENIZERS = {"gpt2": ("vocab.json", "merges.txt"), "bert": ("vocab.txt",)}


# ---- the folder: config, model, tokenizer --------------------------------------------------------


def model_type(folder, command: str, accepted) -> str:
    """The folder's config model_type, when ``command`` runs it; ValueError naming the folder otherwise."""
    path = Path(folder)
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise ValueError(f"{str(folder)!r} is not a checkpoint folder (a directory with config.json and "
                         "model.safetensors, as save_pretrained writes)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{config_file} is not a JSON config: {error}") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in accepted:
        what = "a decoder-only language model" if command == "generate" else "a BERT-family encoder"
        hint = {"generate": " (BERT folders: rosetta embed)", "embed": " (decoder-only folders: rosetta generate)"}
        raise ValueError(f"rosetta {command} needs {what} ({', '.join(accepted)}); {str(folder)!r} holds "
                         f"model_type={kind!r}{hint[command] if kind in DECODERS + ENCODERS else ''}")
    return kind


def load_tokenizer(folder, kind=None):
    """The folder's tokenizer.json as a ``tokenizers.Tokenizer`` or, without one, the ``kind`` (model_type)
    folder's slow-tokenizer files (SLOW_TOKENIZERS: GPT-2's vocab.json + merges.txt, BERT's vocab.txt) as the
    tokenizer transformers converts them to; ValueError when there is none or it is unreadable."""
    path = Path(folder) / TOKENIZER
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ValueError("reading tokenizer.json needs the tokenizers package: pip install tokenizers") from None
    try:
        tokenizer = Tokenizer.from_file(str(path)) if path.is_file() else _slow_tokenizer(Path(folder), kind)
    except Exception as error:  # noqa: BLE001 - tokenizers raises its own Exception subclass
        raise ValueError(f"{path if path.is_file() else folder} is not a tokenizers file: {error}") from None
    if tokenizer is None:
        raise ValueError(f"checkpoint folder {str(folder)!r} has no {TOKENIZER} (the fast tokenizer file "
                         "AutoTokenizer.from_pretrained(...).save_pretrained(folder) writes)")
    tokenizer.no_padding()  # one text at a time; embed pads (and masks) the batch itself
    tokenizer.no_truncation()  # as transformers' tokenizer call: a text too long for the model is refused, not cut
    return tokenizer


def _slow_tokenizer(folder: Path, kind):
    """The tokenizer of GPT-2's vocab.json + merges.txt (byte-level BPE) or BERT's vocab.txt (WordPiece, with
    tokenizer_config.json's do_lower_case, strip_accents, tokenize_chinese_chars), as transformers' conversion of
    its slow tokenizer builds it; None when the folder lacks the files."""
    files = [folder / name for name in SLOW_TOKENIZERS.get(kind, ())]
    if not files or not all(file.is_file() for file in files):
        return None
    settings_file = folder / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

    if kind == "bert":
        return BertWordPieceTokenizer(str(files[0]), lowercase=settings.get("do_lower_case", True),
                                      strip_accents=settings.get("strip_accents"),
                                      handle_chinese_chars=settings.get("tokenize_chinese_chars", True))
    tokenizer = ByteLevelBPETokenizer.from_file(*map(str, files), add_prefix_space=settings.get("add_prefix_space",
                                                                                                 False))
    if tokenizer.token_to_id("<|endoftext|>") is not None:  # GPT-2's BOS = EOS = UNK, one special token
        tokenizer.add_special_tokens(["<|endoftext|>"])
    return tokenizer


def encode(tokenizer, text: str, name: str, max_len: int, room: int = 0) -> list[int]:
    """The token ids of ``text``; ValueError (naming ``name``) when it is empty or longer than max_len − room."""
    if not text.strip():
        raise ValueError(f"{name} is empty")
    ids = tokenizer.encode(text).ids
    if not ids:
        raise ValueError(f"{name} {text!r} encodes to no tokens")
    if len(ids) > max_len - room:
        need = " plus at least one new token" if room else ""
        raise ValueError(f"{name} is {len(ids)} tokens long; the model's positions hold {max_len} "
                         f"(max_position_embeddings){need}")
    return ids


def eos_ids(config: dict, folder=None) -> list[int]:
    """The EOS ids: eos_token_id (an int, a list, or absent) of the folder's generation_config.json, which
    transformers' generate reads (instruct models list their end-of-turn ids there), then of config."""
    path = Path(folder) / GENERATION_CONFIG if folder is not None else None
    generation = {}
    if path is not None and path.is_file():
        try:
            generation = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} is not a JSON generation config: {error}") from None
    ids = []
    for eos in (generation.get("eos_token_id") if isinstance(generation, dict) else None, config.get("eos_token_id")):
        if eos is not None:
            ids += [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    return list(dict.fromkeys(ids))  # each once, in order


# ---- generate ------------------------------------------------------------------------------------


def generate_ids(folder, prompt: str, *, backend="numpy", dtype=None, max_new_tokens=50, temperature=1.0, top_k=None,
                 top_p=None, seed=None, num_beams=1, length_penalty=1.0):
    """(prompt ids, new ids, seconds, tokenizer): the continuation of ``prompt`` with the KV cache, up to EOS.

    temperature 0 is greedy; num_beams > 1 (with temperature 0) is transformers' beam search
    (``generate(num_beams=, length_penalty=)``, early_stopping=False). The new ids end at the first
    EOS (any of eos_ids: generation_config.json's and config's eos_token_id), which they include.
    max_new_tokens is clipped to the positions left after the prompt.
    """
    tokenizer = load_tokenizer(folder, model_type(folder, "generate", DECODERS))
    rt = backend_namespace(backend)
    model = load_pretrained(folder, backend=rt, dtype=dtype)
    ids = encode(tokenizer, prompt, "prompt", model.max_len, room=1)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max-new-tokens must be a positive integer, got {max_new_tokens!r}")
    max_new_tokens = min(max_new_tokens, model.max_len - len(ids))
    # an EOS id outside the vocabulary (a shrunk copy of a real config) can never be drawn: it ends nothing
    eos = [e for e in eos_ids(model.hf_config, folder) if 0 <= e < model.vocab_size]
    start = time.perf_counter()
    out = rt.generate(model, rt.asarray(np.asarray([ids], dtype=np.int64)), max_new_tokens,
                      temperature=temperature, top_k=top_k, eos_id=eos or None, seed=seed, top_p=top_p,
                      num_beams=num_beams, length_penalty=length_penalty)  # one row: it ends at its first EOS
    out = np.asarray(rt.to_numpy(out))[0]
    seconds = time.perf_counter() - start
    return ids, [int(t) for t in out[len(ids):]], seconds, tokenizer


def run_generate(args) -> int:
    try:
        if args.num_beams > 1 and args.temperature is not None:
            raise ValueError(f"--num-beams {args.num_beams} is beam search, which does not sample: drop --temperature")
        temperature = 0.0 if args.greedy or args.num_beams > 1 else args.temperature
        ids, new, seconds, tokenizer = generate_ids(
            args.model, args.prompt, backend=args.backend, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
            temperature=1.0 if temperature is None else temperature, top_k=args.top_k, top_p=args.top_p,
            seed=args.seed, num_beams=args.num_beams, length_penalty=args.length_penalty)
    except (ValueError, TypeError) as error:
        return _error("generate", error)
    print(tokenizer.decode(ids + new, skip_special_tokens=True))
    rate = len(new) / seconds if seconds > 0 else float("inf")
    print(f"{len(new)} new tokens in {seconds:.3f} s: {rate:.1f} tokens/s ({args.backend}, prompt {len(ids)} tokens)",
          file=sys.stderr)
    return 0


# ---- embed ---------------------------------------------------------------------------------------


def last_hidden_state(model, ids, key_padding_mask):
    """The encoder's last hidden states (B, N, d) of an EncoderModel, whatever its head (BertModel's pooler,
    BertForMaskedLM's prediction head: the head is skipped)."""
    if model.mlm_head is None:
        out = model(ids, key_padding_mask=key_padding_mask)
        return out[0] if model.pooler is not None else out
    e = model.positional(model.embedding(ids))  # EncoderModel.forward up to the head (token types: all zeros)
    if model.token_type is not None:
        e = e + model.token_type(ids * 0)
    return model.encoder(model.embedding_norm(e), src_key_padding_mask=key_padding_mask)


def embed(folder, sentences, *, backend="numpy", dtype=None) -> np.ndarray:
    """(len(sentences), d) float: mean of the last hidden states over each sentence's tokens (padding excluded),
    sentence-transformers' mean pooling."""
    tokenizer = load_tokenizer(folder, model_type(folder, "embed", ENCODERS))
    if not sentences:
        raise ValueError("embed needs at least one sentence")
    rt = backend_namespace(backend)
    model = load_pretrained(folder, backend=rt, dtype=dtype)
    rows = [encode(tokenizer, text, f"sentence {i + 1}", model.max_len) for i, text in enumerate(sentences)]
    pad = model.hf_config.get("pad_token_id") or 0
    n = max(len(r) for r in rows)
    ids = np.full((len(rows), n), pad, dtype=np.int64)  # (B, N)
    padded = np.ones((len(rows), n), dtype=bool)  # (B, N)  True at padding (key_padding_mask)
    for i, r in enumerate(rows):
        ids[i, :len(r)], padded[i, :len(r)] = r, False
    with _no_grad(rt):
        h = np.asarray(rt.to_numpy(last_hidden_state(model, rt.asarray(ids), rt.asarray(padded))))  # (B, N, d)
    keep = (~padded)[..., None].astype(h.dtype)  # (B, N, 1)
    return (h * keep).sum(axis=1) / keep.sum(axis=1)  # (B, d)


def _no_grad(rt):
    """torch.no_grad() on the torch backend (no autograd graph for inference), nothing elsewhere."""
    from contextlib import nullcontext

    torch = sys.modules.get("torch")
    on_torch = torch is not None and getattr(rt, "__name__", "") == "accelerated.torch"
    return torch.no_grad() if on_torch else nullcontext()


def run_embed(args) -> int:
    try:
        vectors = embed(args.model, args.sentences, backend=args.backend, dtype=args.dtype)
        if args.out:
            np.save(args.out, vectors)
    except (ValueError, TypeError, OSError) as error:
        return _error("embed", error)
    if args.out:
        print(f"wrote {args.out}: {vectors.shape[0]} vectors of {vectors.shape[1]} ({vectors.dtype})")
    else:
        for row in vectors:
            print(" ".join(f"{v:.9g}" for v in row))
    return 0


# ---- the command line ----------------------------------------------------------------------------


def _error(command: str, error) -> int:
    print(f"rosetta {command}: error: {error}", file=sys.stderr)
    return 2


def add_commands(sub) -> None:
    """Add the generate and embed subcommands to the ``rosetta`` parser."""
    backends = ("numpy", "torch", "cupy")
    gen = sub.add_parser("generate", help="continue a prompt with a Hugging Face decoder-only folder (KV cache)")
    gen.add_argument("--model", required=True, help="a folder with config.json, model.safetensors, tokenizer.json")
    gen.add_argument("--backend", default="numpy", choices=backends, help="numpy (the reference, default), torch, cupy")
    gen.add_argument("--dtype", choices=("float32", "float64"), help="parameter dtype (default: the backend's)")
    gen.add_argument("--max-new-tokens", type=int, default=50, help="most tokens to add (default 50)")
    gen.add_argument("--temperature", type=float, help="softmax temperature (default 1; 0: greedy)")
    gen.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    gen.add_argument("--top-p", type=float, help="sample in the nucleus of probability mass p (0 < p <= 1)")
    gen.add_argument("--seed", type=int, help="seed of the sampling (the same seed gives the same text)")
    gen.add_argument("--greedy", action="store_true", help="pick the most likely token (temperature 0)")
    gen.add_argument("--num-beams", type=int, default=1,
                     help="beam search with this many beams, as transformers' generate(num_beams=) (default 1: off)")
    gen.add_argument("--length-penalty", type=float, default=1.0,
                     help="beam search: score = log P / length**penalty (default 1.0, as transformers)")
    gen.add_argument("prompt", help="the text to continue")
    gen.set_defaults(run=run_generate)

    emb = sub.add_parser("embed", help="sentence vectors (mean pooling) from a Hugging Face BERT folder")
    emb.add_argument("--model", required=True, help="a folder with config.json, model.safetensors, tokenizer.json")
    emb.add_argument("--backend", default="numpy", choices=backends, help="numpy (the reference, default), torch, cupy")
    emb.add_argument("--dtype", choices=("float32", "float64"), help="parameter dtype (default: the backend's)")
    emb.add_argument("--out", help="write the vectors (sentences, d) to this .npy file instead of printing them")
    emb.add_argument("sentences", nargs="+", help="one or more sentences")
    emb.set_defaults(run=run_embed)
