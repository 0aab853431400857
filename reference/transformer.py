"""The encoder-decoder Transformer of "Attention Is All You Need", optionally with one shared embedding table."""

from __future__ import annotations

from .arrays import resolve_dtype
from .checks import check_array, check_flag, check_positive_int, check_size, check_token_ids
from .decoder import Decoder
from .encoder import Encoder
from .kv_cache import check_cache
from .linear import Linear
from .module import Module, child_seed


def check_token_input(name: str, ids, vocab_size: int, max_len: int, xp):
    """Token ids of a model: an integer (batch, seq) array, ids in [0, vocab_size), seq <= max_len."""
    check_array(name, ids, ndim=2, kind="iu", xp=xp)
    check_token_ids(name, ids, vocab_size, xp=xp)
    if ids.shape[1] > max_len:
        raise ValueError(
            f"{name} has {ids.shape[1]} positions but the model's max_len is {max_len} "
            f"(positions 0..{max_len - 1}), got shape {tuple(ids.shape)}"
        )
    return ids


def check_cached_length(name: str, ids, offset: int, max_len: int):
    """With a cache, the new ids sit at positions offset … offset + N − 1, which must stay below max_len."""
    if offset + ids.shape[1] > max_len:
        raise ValueError(
            f"{name} has {ids.shape[1]} new positions after {offset} cached ones, reaching position "
            f"{offset + ids.shape[1] - 1}, but the model's max_len is {max_len} (positions 0..{max_len - 1})"
        )
    return ids


def check_padding_mask(name: str, mask, batch: int, length: int, xp):
    """A key padding mask (batch, length): boolean True = ignore that position, or float (added)."""
    if mask is None:
        return None
    check_array(name, mask, ndim=2, kind="bf", xp=xp)
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape {(batch, length)} (batch, sequence length), got {tuple(mask.shape)}")
    return mask


def check_transformer_sizes(src_vocab_size, tgt_vocab_size, d_model, max_len, tie_embeddings) -> tuple:
    """The Transformer's size arguments, checked (every backend's Transformer calls this)."""
    sizes = (check_positive_int("src_vocab_size", src_vocab_size), check_positive_int("tgt_vocab_size", tgt_vocab_size),
             check_positive_int("d_model", d_model), check_positive_int("max_len", max_len))
    tie = check_flag("tie_embeddings", tie_embeddings)
    if tie and src_vocab_size != tgt_vocab_size:
        raise ValueError(
            f"tie_embeddings=True shares one table between source, target and output, so it needs "
            f"src_vocab_size == tgt_vocab_size, got {src_vocab_size} and {tgt_vocab_size}"
        )
    return (*sizes, tie)


class Transformer(Module):
    r"""Encoder-decoder Transformer; the defaults are the paper's base model.

    src (B, S) and tgt (B, T) are token ids; E_s, E_t are the embedding tables, PE the sinusoids.

    Forward:   x₀ = Dropout(E_s[src]·√d + PE)           m = Norm_e(EncLayers(x₀))         (B, S, d)
               y₀ = Dropout(E_t[tgt]·√d + PE)           h = Norm_d(DecLayers(y₀, m))      (B, T, d)
                                                        (causal self-attention on the target)
               logits = h W_gᵀ + b_g                                                      (B, T, V)
    Backward:  dh = dlogits W_g,  dW_g = Σ dlogitsᵀ h,  db_g = Σ dlogits       (generator)
               dh → Decoder.backward → (E_t.grad, dm = Σ_layers dm_ℓ)
               dm → Encoder.backward → E_s.grad;      ids get no gradient: returns (None, None)
    Tied (tie_embeddings=True): E_s = E_t = W_g = E, one Parameter, and
               dE = √d·scatter(d x₀) + √d·scatter(d y₀) + dlogitsᵀ h     (three uses, three terms)
    Tying is plain assignment, as in torch (``self.generator.weight = self.encoder.embedding.weight``):
    each use runs its own backward and calls ``accumulate_grad`` on the one shared Parameter, so the
    three terms add up by themselves; ``named_parameters`` (hence ``state_dict``) lists it once.

    Post-norm layers and a final norm on both stacks, as torch.nn.Transformer. Token tables
    start as N(0, 1/d), so E[ids]·√d has unit variance like the sinusoids (and a tied output
    projection gives logits of unit scale); every other weight keeps its layer's initialization.

    Submodules: encoder (Encoder with vocabulary), decoder (Decoder with vocabulary), generator
    (Linear d → tgt vocabulary). Tied: decoder.embedding.weight and generator.weight are
    encoder.embedding.weight, listed once as "encoder.embedding.weight"; generator.bias stays.
    ``padding_idx`` (if given) is the padding id of both vocabularies.
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        d_model: int = 512,
        num_heads: int = 8,
        d_ff: int = 2048,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        max_len: int = 5000,
        tie_embeddings: bool = False,
        padding_idx=None,
        *,
        seed=None,
        dtype=None,
    ):
        super().__init__()
        (self.src_vocab_size, self.tgt_vocab_size, self.d_model, self.max_len,
         self.tie_embeddings) = check_transformer_sizes(src_vocab_size, tgt_vocab_size, d_model, max_len,
                                                        tie_embeddings)
        self.dtype = resolve_dtype(dtype)
        stack = dict(dropout=dropout, activation=activation, norm_first=norm_first, layer_norm_eps=layer_norm_eps,
                     bias=bias, final_norm=True, max_len=max_len, positional="sinusoidal", scale_embedding=True,
                     padding_idx=padding_idx, dtype=self.dtype)
        encoder_seed, decoder_seed = child_seed(seed, "encoder"), child_seed(seed, "decoder")
        self.encoder = Encoder(d_model, num_heads, d_ff, num_encoder_layers, vocab_size=src_vocab_size,
                               seed=encoder_seed, **stack)
        self.decoder = Decoder(d_model, num_heads, d_ff, num_decoder_layers, vocab_size=tgt_vocab_size,
                               seed=decoder_seed, **stack)
        self.generator = Linear(d_model, tgt_vocab_size, True, seed=child_seed(seed, "generator"), dtype=self.dtype)
        self.encoder.embedding.rescale_initial_weights(d_model**-0.5, child_seed(encoder_seed, "embedding"))  # N(0, 1/d)
        if self.tie_embeddings:
            shared = self.encoder.embedding.weight  # (V, d)  one Parameter, three uses
            self.decoder.embedding.weight = shared
            self.generator.weight = shared
        else:
            self.decoder.embedding.rescale_initial_weights(d_model**-0.5, child_seed(decoder_seed, "embedding"))

    def encode(self, src, src_key_padding_mask=None):
        """memory (B, S, d) for source ids (B, S); the decoder reads it (encode once, decode often)."""
        check_token_input("src", src, self.src_vocab_size, self.max_len, self.xp)
        check_padding_mask("src_key_padding_mask", src_key_padding_mask, src.shape[0], src.shape[1], self.xp)
        memory = self.encoder(src, src_key_padding_mask=src_key_padding_mask)  # (B, S, d)
        self.save_for_backward(call="encode")
        return memory

    def decode(self, tgt, memory, memory_key_padding_mask=None, tgt_key_padding_mask=None, cache=None):
        """logits (B, T, V) for target ids (B, T) given memory (B, S, d), causal over the target.

        cache=KVCache() (inference, see decoding.py): tgt holds only the new tokens, at positions
        cache.length, ...; the decoder keeps its keys/values and the projected memory, so each
        step costs one token. tgt_key_padding_mask then covers every target key (B, cache.length + T).
        """
        check_token_input("tgt", tgt, self.tgt_vocab_size, self.max_len, self.xp)
        offset = 0 if check_cache(cache) is None else cache.length  # target tokens already cached
        check_cached_length("tgt", tgt, offset, self.max_len)
        check_array("memory", memory, ndim=3, dtype=self.dtype, xp=self.xp)
        check_size("memory", memory, -1, self.d_model, "d_model")
        check_size("memory", memory, 0, tgt.shape[0], "tgt's batch size")
        B, T, S = tgt.shape[0], tgt.shape[1], memory.shape[1]
        check_padding_mask("tgt_key_padding_mask", tgt_key_padding_mask, B, offset + T, self.xp)
        check_padding_mask("memory_key_padding_mask", memory_key_padding_mask, B, S, self.xp)
        h = self.decoder(tgt, memory, tgt_key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=True,
                         cache=cache)  # (B, T, d)
        logits = self.generator(h)  # (B, T, V)  logits = h W_gᵀ + b_g
        self.save_for_backward(call="decode")
        return logits

    def forward(self, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        check_token_input("src", src, self.src_vocab_size, self.max_len, self.xp)
        check_token_input("tgt", tgt, self.tgt_vocab_size, self.max_len, self.xp)
        check_size("tgt", tgt, 0, src.shape[0], "src's batch size")
        memory = self.encode(src, src_key_padding_mask)  # (B, S, d)
        logits = self.decode(tgt, memory, memory_key_padding_mask, tgt_key_padding_mask)  # (B, T, V)
        self.save_for_backward(call="forward", shape=logits.shape)
        return logits

    def backward(self, grad_output):
        saved = self.saved()
        if saved["call"] != "forward":
            raise ValueError(
                f"Transformer.backward() differentiates forward(src, tgt): expected forward as the last call, "
                f"got {saved['call']}() (encode and decode are for inference)"
            )
        dlogits = self.check_grad_output(grad_output, saved["shape"])  # (B, T, V)
        dh = self.generator.backward(dlogits)  # (B, T, d)  ← from logits = h W_gᵀ + b_g
        _, d_memory = self.decoder.backward(dh)  # (B, S, d)  ← from h = Decoder(tgt, m)
        self.encoder.backward(d_memory)  # ← from m = Encoder(src): into the source table's grad
        return None, None  # token ids are integers: no gradient

    def extra_repr(self) -> str:
        return (
            f"src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size}, "
            f"d_model={self.d_model}, tie_embeddings={self.tie_embeddings}"
        )
