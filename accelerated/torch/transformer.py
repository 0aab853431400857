"""The encoder-decoder Transformer of "Attention Is All You Need", optionally with one shared embedding table."""

from __future__ import annotations

from reference.transformer import check_cached_length, check_transformer_sizes

from .arrays import resolve_dtype
from .checks import check_size, check_tensor, check_token_ids
from .decoder import Decoder
from .encoder import Encoder
from .kv_cache import check_cache
from .linear import Linear
from .module import Module, child_seed


def check_token_input(name: str, ids, vocab_size: int, max_len: int):
    """Token ids of a model: an integer (batch, seq) tensor, ids in [0, vocab_size), seq <= max_len."""
    check_tensor(name, ids, ndim=2, kind="iu")
    check_token_ids(name, ids, vocab_size)
    if ids.shape[1] > max_len:
        raise ValueError(
            f"{name} has {ids.shape[1]} positions but the model's max_len is {max_len} "
            f"(positions 0..{max_len - 1}), got shape {tuple(ids.shape)}"
        )
    return ids


def check_padding_mask(name: str, mask, batch: int, length: int):
    """A key padding mask (batch, length): boolean True = ignore that position, or float (added)."""
    if mask is None:
        return None
    check_tensor(name, mask, ndim=2, kind="bf")
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape {(batch, length)} (batch, sequence length), got {tuple(mask.shape)}")
    return mask


class TiedStateDict:
    """Mixin: ``state_dict`` lists a tied Parameter once, under its first name, as the reference does.

    torch.nn.Module.state_dict writes a shared Parameter under every name it is reachable by;
    ``named_parameters`` (and the reference) list it once. Dropping the aliases keeps state-dict
    keys identical on every backend; loading restores the one Parameter, hence every use.
    """

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        first = {name for name, _ in self.named_parameters()}
        for name, _ in self.named_parameters(remove_duplicate=False):
            if name not in first:
                state.pop(prefix + name, None)  # an alias of a Parameter listed under an earlier name
        return state


class Transformer(TiedStateDict, Module):
    r"""Encoder-decoder Transformer; the defaults are the paper's base model (reference/transformer.py).

    memory = Norm_e(EncLayers(Dropout(E_s[src]·√d + PE)))                           (B, S, d)
    logits = Norm_d(DecLayers(Dropout(E_t[tgt]·√d + PE), memory)) W_gᵀ + b_g  causal (B, T, V)
    Tied (tie_embeddings=True): E_s = E_t = W_g, one nn.Parameter listed once as
    "encoder.embedding.weight"; autograd adds the gradients of its three uses. Token tables
    start as N(0, 1/d) (the reference's float64 values, cast once). Gradients: autograd;
    ``backward`` differentiates forward(src, tgt) only (encode/decode are for inference).
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
        self._dtype = resolve_dtype(dtype)
        stack = dict(dropout=dropout, activation=activation, norm_first=norm_first, layer_norm_eps=layer_norm_eps,
                     bias=bias, final_norm=True, max_len=max_len, positional="sinusoidal", scale_embedding=True,
                     padding_idx=padding_idx, dtype=self._dtype)
        encoder_seed, decoder_seed = child_seed(seed, "encoder"), child_seed(seed, "decoder")
        self.encoder = Encoder(d_model, num_heads, d_ff, num_encoder_layers, vocab_size=src_vocab_size,
                               seed=encoder_seed, **stack)
        self.decoder = Decoder(d_model, num_heads, d_ff, num_decoder_layers, vocab_size=tgt_vocab_size,
                               seed=decoder_seed, **stack)
        self.generator = Linear(d_model, tgt_vocab_size, True, seed=child_seed(seed, "generator"), dtype=self._dtype)
        # N(0, 1) → N(0, 1/d); a stack seeds its table with child_seed(stack seed, "embedding")
        self.encoder.embedding.rescale_initial_weights(d_model**-0.5, child_seed(encoder_seed, "embedding"))
        if self.tie_embeddings:
            shared = self.encoder.embedding.weight  # (V, d)  one nn.Parameter, three uses
            self.decoder.embedding.weight = shared
            self.generator.weight = shared
        else:
            self.decoder.embedding.rescale_initial_weights(d_model**-0.5, child_seed(decoder_seed, "embedding"))

    def encode(self, src, src_key_padding_mask=None):
        """memory (B, S, d) for source ids (B, S); the decoder reads it (encode once, decode often)."""
        check_token_input("src", src, self.src_vocab_size, self.max_len)
        return self._encode(src, src_key_padding_mask)

    def _encode(self, src, src_key_padding_mask):
        """encode() once src is checked (forward checks src and tgt before any layer runs)."""
        check_padding_mask("src_key_padding_mask", src_key_padding_mask, src.shape[0], src.shape[1])
        memory = self.encoder(src, src_key_padding_mask=src_key_padding_mask)  # (B, S, d)
        self.__dict__["_last_call"] = "encode"
        return memory

    def decode(self, tgt, memory, memory_key_padding_mask=None, tgt_key_padding_mask=None, cache=None):
        """logits (B, T, V) for target ids (B, T) given memory (B, S, d), causal over the target.

        cache=KVCache() (inference): tgt holds only the new tokens, at positions cache.length, ...;
        tgt_key_padding_mask then covers every target key (B, cache.length + T).
        """
        check_token_input("tgt", tgt, self.tgt_vocab_size, self.max_len)
        return self._decode(tgt, memory, memory_key_padding_mask, tgt_key_padding_mask, cache)

    def _decode(self, tgt, memory, memory_key_padding_mask, tgt_key_padding_mask, cache):
        """decode() once tgt is checked."""
        offset = 0 if check_cache(cache) is None else cache.length  # target tokens already cached
        check_cached_length("tgt", tgt, offset, self.max_len)
        check_tensor("memory", memory, ndim=3, dtype=self.dtype)
        check_size("memory", memory, -1, self.d_model, "d_model")
        check_size("memory", memory, 0, tgt.shape[0], "tgt's batch size")
        B, T, S = tgt.shape[0], tgt.shape[1], memory.shape[1]
        check_padding_mask("tgt_key_padding_mask", tgt_key_padding_mask, B, offset + T)
        check_padding_mask("memory_key_padding_mask", memory_key_padding_mask, B, S)
        h = self.decoder(tgt, memory, tgt_key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=True,
                         cache=cache)  # (B, T, d)
        self.__dict__["_last_call"] = "decode"
        return self.generator(h)  # (B, T, V)  logits = h W_gᵀ + b_g

    def forward(self, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        check_token_input("src", src, self.src_vocab_size, self.max_len)
        check_token_input("tgt", tgt, self.tgt_vocab_size, self.max_len)
        check_size("tgt", tgt, 0, src.shape[0], "src's batch size")
        # the ids are checked once, above: under torch.compile each check is a graph break
        memory = self._encode(src, src_key_padding_mask)  # (B, S, d)
        logits = self._decode(tgt, memory, memory_key_padding_mask, tgt_key_padding_mask, None)  # (B, T, V)
        self.__dict__["_last_call"] = "forward"
        return logits

    def backward(self, grad_output):
        """(None, None): token ids have no gradient; every parameter's gradient goes into its .grad."""
        last_call = self.__dict__.get("_last_call")
        if last_call not in (None, "forward"):
            raise ValueError(
                f"Transformer.backward() differentiates forward(src, tgt): expected forward as the last call, "
                f"got {last_call}() (encode and decode are for inference)"
            )
        return super().backward(grad_output)

    def extra_repr(self) -> str:
        return (
            f"src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size}, "
            f"d_model={self.d_model}, tie_embeddings={self.tie_embeddings}"
        )
