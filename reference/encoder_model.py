"""The encoder-only model (BERT-like): token + position (+ token type) embeddings, post-norm encoder, masked-LM head."""

from __future__ import annotations

from .blueprints import EncoderModelBlueprint
from .checks import check_padding_mask, check_token_input, check_token_type_ids, describe
from .module import Module


class EncoderModel(EncoderModelBlueprint, Module):
    r"""Bidirectional encoder with BERT's input embeddings and a masked-language-model head.

    ids, types (B, N) token and token-type ids; E (V, d), P (max_len, d), T (num_token_types, d).

    Forward:   e = E[ids] + P[:N] + T[types]        (T only if num_token_types > 0)     (B, N, d)
               x₀ = LayerNorm(e)                    (embedding_norm)
               h = Layers(Dropout(x₀))              post-norm, GELU, no causal mask     (B, N, d)
               logits = h W_mᵀ + b_m                                                    (B, N, V)
    Backward:  dh = dlogits W_m  (dW_m, db_m)      dx₀ = Encoder.backward(dh)
               de = LayerNorm.backward(dx₀)        e is a sum: each table gets de,
               dE = scatter_ids(de),  dP[:N] = Σ_batch de,  dT = scatter_types(de);  ids: None

    The stack is an Encoder without vocabulary or positions (it receives x₀ and applies the
    embedding dropout itself); a post-norm stack ends normalized, so it has no final norm.
    token_type_ids default to zeros (segment A) when the model has token types; they are
    keyword inputs and get no gradient. Tables start as N(0, 0.02²), as BERT's.

    head="transform" (BERT): logits = LayerNorm(φ(h W_tᵀ + b_t)) W_mᵀ + b_m, backward in reverse;
    head=None: the output is h; with pooler=True it is (h, p), p = tanh(h[:, 0] W_pᵀ + b_p) (B, d),
    and backward takes (dh, dp): dh[:, 0] += pooler.backward(dp ⊙ (1 − p²)). Tied (tie_embeddings=True): W_m is E, and E.grad adds the
    head's term to the lookup's (each use calls accumulate_grad on the one Parameter).

    Submodules: embedding, positional, token_type (if num_token_types > 0), embedding_norm,
    encoder, mlm_transform, mlm_activation, mlm_norm (head="transform"), mlm_head (Linear d → V,
    unless head=None). The constructor is EncoderModelBlueprint in blueprints.py,
    shared by every backend.
    """

    def forward(self, ids, token_type_ids=None, key_padding_mask=None):
        check_token_input("ids", ids, self.vocab_size, self.max_len, self.xp)
        types = check_token_type_ids(token_type_ids, ids, self.num_token_types, self.xp)  # (B, N) or None
        check_padding_mask("key_padding_mask", key_padding_mask, ids.shape[0], ids.shape[1], self.xp)
        e = self.positional(self.embedding(ids))  # (B, N, d)  E[ids] + P[:N]
        if self.token_type is not None:  # types default to zeros: every token in segment A
            e = e + self.token_type(self.xp.zeros_like(ids) if types is None else types)  # (B, N, d)  + T[types]
        x0 = self.embedding_norm(e)  # (B, N, d)
        h = self.encoder(x0, src_key_padding_mask=key_padding_mask)  # (B, N, d)  dropout, then the layers
        if self.pooler is not None:  # pooler=True: (h, tanh(h[:, 0] W_pᵀ + b_p))
            pooled = self.xp.tanh(self.pooler(h[:, 0]))  # (B, d)
            self.save_for_backward(shape=h.shape, pooled=pooled)
            return h, pooled
        if self.mlm_head is None:  # head=None: the hidden states are the output
            self.save_for_backward(shape=h.shape)
            return h
        z = h
        if self.mlm_transform is not None:  # head="transform": z = LayerNorm(φ(h W_tᵀ + b_t))
            z = self.mlm_norm(self.mlm_activation(self.mlm_transform(h)))  # (B, N, d)
        logits = self.mlm_head(z)  # (B, N, V)  logits = z W_mᵀ + b_m
        self.save_for_backward(shape=logits.shape)
        return logits

    def backward(self, grad_output):
        if self.pooler is not None:  # grad_output = (dh, d pooled)
            return self._pooled_backward(grad_output)
        dout = self.check_grad_output(grad_output, self.saved()["shape"])  # (B, N, V), or (B, N, d) without a head
        return self._backward_from(dout)

    def _pooled_backward(self, grad_output):
        saved = self.saved()
        if not isinstance(grad_output, (tuple, list)) or len(grad_output) != 2:
            raise TypeError(f"grad_output must be a pair (d hidden, d pooled) for a model with a pooler, got "
                            f"{describe(grad_output)}")
        pooled = saved["pooled"]  # (B, d)
        dh = self.check_grad_output(grad_output[0], saved["shape"]) + 0  # (B, N, d)  a copy, written below
        dpooled = self.check_grad_output(grad_output[1], pooled.shape, "grad_output[1]")  # (B, d)
        dh[:, 0] += self.pooler.backward(dpooled * (1 - pooled * pooled))  # ← from tanh(h[:, 0] W_pᵀ + b_p)
        return self._backward_from(dh)

    def _backward_from(self, dout):
        dh = dout if self.mlm_head is None else self.mlm_head.backward(dout)  # (B, N, d)  ← from z W_mᵀ + b_m
        if self.mlm_transform is not None:  # ← from z = LayerNorm(φ(h W_tᵀ + b_t)), in reverse
            dh = self.mlm_transform.backward(self.mlm_activation.backward(self.mlm_norm.backward(dh)))  # (B, N, d)
        dx0 = self.encoder.backward(dh)  # (B, N, d)  ← from h = Layers(Dropout(x₀))
        de = self.embedding_norm.backward(dx0)  # (B, N, d)  ← from x₀ = LayerNorm(e)
        if self.token_type is not None:
            self.token_type.backward(de)  # ← from e = ... + T[types]: into T.grad
        de = self.positional.backward(de)  # (B, N, d)  ← from E[ids] + P[:N]: into P.grad
        self.embedding.backward(de)  # ← from E[ids]: into E.grad
        return None  # token ids are integers: no gradient
