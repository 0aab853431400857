"""The residual sub-layer ("Add & Norm") shared by encoder and decoder layers, post- or pre-norm."""

from __future__ import annotations


def residual_forward(x, norm_first: bool, norm, sublayer, dropout):
    r"""One sub-layer with its residual connection.

    post-norm (the paper):  y = Norm(x + Dropout(Sublayer(x)))
    pre-norm:               y = x + Dropout(Sublayer(Norm(x)))
    ``sublayer`` is a function of one array (other inputs bound in a closure). Every backend
    runs this function: it only composes the modules it is given.
    """
    if norm_first:
        return x + dropout(sublayer(norm(x)))  # (B, N, d)
    return norm(x + dropout(sublayer(x)))  # (B, N, d)


def residual_backward(dy, norm_first: bool, norm, sublayer_backward, dropout):
    r"""The gradient through :func:`residual_forward`; the identity path adds dy unchanged.

    post-norm:  ds = Norm'ᵀ dy,   dx = ds + Sublayer'ᵀ Dropout'ᵀ ds
    pre-norm:   dx = dy + Norm'ᵀ Sublayer'ᵀ Dropout'ᵀ dy
    ``sublayer_backward`` maps the sub-layer's output gradient to its input gradient.
    """
    if norm_first:
        return dy + norm.backward(sublayer_backward(dropout.backward(dy)))  # ← y = x + D(S(N(x)))
    ds = norm.backward(dy)  # ← y = N(s)
    return ds + sublayer_backward(dropout.backward(ds))  # ← s = x + D(S(x))
