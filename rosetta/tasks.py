"""Synthetic sequence-to-sequence tasks (copy, reverse, sort) as seeded batch generators with a held-out split."""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from reference.checks import check_choice, check_positive_int, describe

PAD, BOS, EOS = 0, 1, 2  # special ids, shared by source and target vocabularies
FIRST_SYMBOL = 3  # symbol k (k = 0, 1, ...) has id FIRST_SYMBOL + k
TASKS = ("copy", "reverse", "sort")


def symbol_names(num_symbols: int) -> list:
    """How symbols are written: a, b, c, ... (up to 26 symbols), else 0, 1, 2, ..."""
    if num_symbols <= 26:
        return list(string.ascii_lowercase[:num_symbols])
    return [str(k) for k in range(num_symbols)]


@dataclass(frozen=True)
class Batch:
    """One padded batch: the model reads src and tgt_in and is trained to predict tgt_out.

    src (B, S) = symbols, EOS, PAD...;  tgt_in (B, T) = BOS, target...;  tgt_out (B, T) = target, EOS.
    The padding masks are True at PAD (torch.nn.Transformer's meaning: True = ignore this key).
    """

    src: np.ndarray  # (B, S) int64
    tgt_in: np.ndarray  # (B, T) int64
    tgt_out: np.ndarray  # (B, T) int64
    src_key_padding_mask: np.ndarray  # (B, S) bool
    tgt_key_padding_mask: np.ndarray  # (B, T) bool

    @property
    def num_target_tokens(self) -> int:
        """Positions the loss counts (every non-PAD entry of tgt_out, EOS included)."""
        return int((self.tgt_out != PAD).sum())


class SyntheticTask:
    """Random symbol sequences and their targets under one rule (copy, reverse or sort).

    Sequence lengths are uniform in [min_len, max_len], symbols uniform over ``num_symbols``.
    Two independent random streams are derived from ``seed``: one draws ``heldout_size``
    distinct held-out sequences, the other the training sequences, and a training draw that
    equals a held-out sequence is thrown away and drawn again, so the two never overlap.
    """

    def __init__(self, task: str, num_symbols: int = 10, min_len: int = 10, max_len: int = 14, *, seed=0,
                 heldout_size: int = 512):
        self.task = check_choice("task", task, TASKS)
        self.num_symbols = check_positive_int("num_symbols", num_symbols)
        self.min_len = check_positive_int("min_len", min_len)
        self.max_len = check_positive_int("max_len", max_len)
        if self.max_len < self.min_len:
            raise ValueError(f"max_len must be >= min_len ({self.min_len}), got {self.max_len}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError(f"seed must be a non-negative int, got {describe(seed)}")
        self.seed = int(seed)
        self.heldout_size = check_positive_int("heldout_size", heldout_size, minimum=0)
        space = sum(self.num_symbols**n for n in range(self.min_len, self.max_len + 1))
        if 2 * self.heldout_size > space:
            raise ValueError(
                f"heldout_size must be at most half of the {space} possible sequences (num_symbols="
                f"{self.num_symbols}, lengths {self.min_len}..{self.max_len}) so that training has sequences "
                f"left, got {self.heldout_size}"
            )
        self.names = symbol_names(self.num_symbols)
        heldout_stream, train_stream = np.random.SeedSequence([self.seed, 0x5EED]).spawn(2)
        self.heldout = self._draw_heldout(np.random.default_rng(heldout_stream))  # list of 1-D int64 arrays
        self._heldout_keys = {seq.tobytes() for seq in self.heldout}
        self.rng = np.random.default_rng(train_stream)

    @property
    def vocab_size(self) -> int:
        """Ids 0..vocab_size-1: PAD, BOS, EOS and the symbols (source and target share them)."""
        return FIRST_SYMBOL + self.num_symbols

    def spec(self) -> dict:
        """The constructor's arguments, as plain JSON values (to rebuild the task from a checkpoint)."""
        return {"task": self.task, "num_symbols": self.num_symbols, "min_len": self.min_len,
                "max_len": self.max_len, "seed": self.seed, "heldout_size": self.heldout_size}

    # ---- the rule -------------------------------------------------------------------------

    def target(self, sequence) -> np.ndarray:
        """The target of one sequence of symbol ids (no EOS): itself, reversed or sorted."""
        sequence = np.asarray(sequence, dtype=np.int64)
        if self.task == "copy":
            return sequence.copy()
        if self.task == "reverse":
            return sequence[::-1].copy()
        return np.sort(sequence)

    def _targets(self, symbols, lengths):
        """Targets of a padded block: symbols (B, L) with row b valid up to lengths[b]."""
        L = symbols.shape[1]
        positions = np.arange(L)  # (L,)
        valid = positions[None, :] < lengths[:, None]  # (B, L)
        if self.task == "copy":
            out = symbols.copy()  # (B, L)
        elif self.task == "reverse":
            source = np.clip(lengths[:, None] - 1 - positions[None, :], 0, L - 1)  # (B, L)  i → len−1−i
            out = np.take_along_axis(symbols, source, axis=1)  # (B, L)
        else:
            big = np.iinfo(np.int64).max
            out = np.sort(np.where(valid, symbols, big), axis=1)  # (B, L)  padding sorts to the end
        return np.where(valid, out, PAD)  # (B, L)

    # ---- drawing sequences --------------------------------------------------------------

    def _draw(self, rng, count: int) -> list:
        lengths = rng.integers(self.min_len, self.max_len + 1, size=count)  # (n,)
        symbols = rng.integers(FIRST_SYMBOL, self.vocab_size, size=(count, self.max_len))  # (n, L)
        return [symbols[i, :n] for i, n in enumerate(lengths)]

    def _draw_heldout(self, rng) -> list:
        kept, keys = [], set()
        while len(kept) < self.heldout_size:
            for seq in self._draw(rng, self.heldout_size - len(kept)):
                if seq.tobytes() not in keys:
                    keys.add(seq.tobytes())
                    kept.append(seq)
        return kept

    def is_heldout(self, sequence) -> bool:
        return np.asarray(sequence, dtype=np.int64).tobytes() in self._heldout_keys

    def train_sequences(self, count: int) -> list:
        """``count`` training sequences (symbol ids, no EOS), none of them held out."""
        count = check_positive_int("count", count)
        kept = []
        while len(kept) < count:  # at most half of all sequences are held out: this ends
            kept.extend(seq for seq in self._draw(self.rng, count - len(kept))
                        if seq.tobytes() not in self._heldout_keys)
        return kept

    # ---- batches ---------------------------------------------------------------------------

    def make_batch(self, sequences) -> Batch:
        """Pad source sequences (symbol ids, no EOS) into a Batch with their targets."""
        if len(sequences) == 0:
            raise ValueError("sequences must hold at least one sequence, got none")
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)  # (B,)
        B, L = len(sequences), int(lengths.max())
        symbols = np.full((B, L), PAD, dtype=np.int64)  # (B, L)
        for i, seq in enumerate(sequences):
            symbols[i, : len(seq)] = seq
        if symbols.min(initial=FIRST_SYMBOL) < 0 or symbols.max(initial=0) >= self.vocab_size:
            raise ValueError(f"sequences must hold ids in [{FIRST_SYMBOL}, {self.vocab_size}), got {symbols.max()}")
        targets = self._targets(symbols, lengths)  # (B, L)
        rows = np.arange(B)
        src = np.concatenate([symbols, np.full((B, 1), PAD, np.int64)], axis=1)  # (B, L+1)
        src[rows, lengths] = EOS  # (B, S)  symbols, EOS, PAD...
        tgt_out = np.concatenate([targets, np.full((B, 1), PAD, np.int64)], axis=1)  # (B, L+1)
        tgt_out[rows, lengths] = EOS  # (B, T)  target, EOS, PAD...
        tgt_in = np.concatenate([np.full((B, 1), BOS, np.int64), targets], axis=1)  # (B, T)  BOS, target, PAD...
        return Batch(src, tgt_in, tgt_out, src == PAD, tgt_in == PAD)

    def train_batch(self, batch_size: int) -> Batch:
        """A fresh training batch from the task's training stream."""
        return self.make_batch(self.train_sequences(batch_size))

    def heldout_batches(self, batch_size: int) -> list:
        """The held-out sequences as a list of Batches of at most ``batch_size`` rows."""
        batch_size = check_positive_int("batch_size", batch_size)
        return [self.make_batch(self.heldout[i: i + batch_size]) for i in range(0, len(self.heldout), batch_size)]

    # ---- text ------------------------------------------------------------------------------

    def encode_text(self, text: str) -> np.ndarray:
        """Space-separated symbols ("a b c") → their ids (1-D int64)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str of space-separated symbols, got {describe(text)}")
        lookup = {name: FIRST_SYMBOL + k for k, name in enumerate(self.names)}
        unknown = [token for token in text.split() if token not in lookup]
        if unknown:
            raise ValueError(f"text must use the symbols {' '.join(self.names)}, got unknown symbol(s) {unknown}")
        if not text.split():
            raise ValueError("text must hold at least one symbol, got an empty string")
        return np.array([lookup[token] for token in text.split()], dtype=np.int64)

    def decode_ids(self, ids) -> str:
        """Ids → text: symbols by name, specials as <pad> <bos> <eos>."""
        specials = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>"}
        return " ".join(specials.get(int(i), self.names[int(i) - FIRST_SYMBOL] if int(i) < self.vocab_size
                                     else f"<{int(i)}>") for i in ids)


def make_task(task: str, **options) -> SyntheticTask:
    """``SyntheticTask(task, **options)``: task is one of copy, reverse, sort."""
    return SyntheticTask(task, **options)
