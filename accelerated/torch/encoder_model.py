"""The encoder-only model (BERT-like): token + position (+ token type) embeddings, post-norm encoder, masked-LM head."""

from __future__ import annotations

import torch

from reference.blueprints import EncoderModelBlueprint
from reference.checks import check_token_type_ids

from .checks import TENSORS, check_padding_mask, check_token_input
from .module import Module
from .transformer import TiedStateDict


class EncoderModel(EncoderModelBlueprint, TiedStateDict, Module):
    r"""Bidirectional encoder with BERT's input embeddings and a masked-language-model head.

    e = E[ids] + P[:N] + T[types]      h = Layers(Dropout(LayerNorm(e)))      logits = h W_mᵀ + b_m
    (reference/encoder_model.py): post-norm layers, no causal mask, no final norm; token
    types default to zeros (segment A) when the model has them and get no gradient. The
    constructor, the submodules and their initialization (tables N(0, 0.02²)) are the
    reference's (reference/blueprints.py). head="transform" (BERT) puts LayerNorm(φ(h W_tᵀ + b_t))
    before the head; head=None returns h. Tied (tie_embeddings=True): W_m = E, one nn.Parameter
    listed once as "embedding.weight". Gradients: autograd.
    """

    def forward(self, ids, token_type_ids=None, key_padding_mask=None):
        check_token_input("ids", ids, self.vocab_size, self.max_len)
        types = check_token_type_ids(token_type_ids, ids, self.num_token_types, TENSORS)  # (B, N) or None
        check_padding_mask("key_padding_mask", key_padding_mask, ids.shape[0], ids.shape[1])
        e = self.positional(self.embedding(ids))  # (B, N, d)  E[ids] + P[:N]
        if self.token_type is not None:  # types default to zeros: every token in segment A
            e = e + self.token_type(torch.zeros_like(ids) if types is None else types)  # (B, N, d)  + T[types]
        x0 = self.embedding_norm(e)  # (B, N, d)
        h = self.encoder(x0, src_key_padding_mask=key_padding_mask)  # (B, N, d)  dropout, then the layers
        if self.pooler is not None:  # pooler=True (BERT's): (h, tanh(h[:, 0] W_pᵀ + b_p))
            return h, torch.tanh(self.pooler(h[:, 0]))
        if self.mlm_head is None:  # head=None: the hidden states are the output
            return h
        if self.mlm_transform is not None:  # head="transform" (BERT): LayerNorm(φ(h W_tᵀ + b_t))
            h = self.mlm_norm(self.mlm_activation(self.mlm_transform(h)))  # (B, N, d)
        return self.mlm_head(h)  # (B, N, V)  logits = h W_mᵀ + b_m
