"""Floating-point operations of one SAE training step, for achieved FLOP/s and its fraction of a device's peak.

Counted as useful work (what MFU counts): one multiply-add = 2 FLOPs, matrix products only. With ``kernel="sparse"``
the dense encoder product is computed once without autograd and only the active latents (the TopK family's ``k``
per token, ReLU's positive ones) are touched afterwards; with ``kernel="dense"`` the encoder's backward is a second
dense product, and a dense ReLU step also decodes densely. AuxK's extra work (only while latents are dead) and
element-wise ops are not counted.
"""

from __future__ import annotations


def sparse_kernel_flops(batch: int, d_in: int, d_sae: int, active_per_token: float) -> int:
    """The sparse kernel (every architecture that selects from one dense encoder product): ``2·B·d·n`` (encoder) +
    ``8·B·k·d`` (the active pre-activations' weight gradient, sparse decode forward, its two gradients)."""
    return int(2 * batch * d_in * d_sae + 8 * batch * active_per_token * d_in)


def dense_encoder_flops(batch: int, d_in: int, d_sae: int, active_per_token: float) -> int:
    """A dense encoder with a sparse decode (the TopK family's dense kernel): ``4·B·d·n`` (encoder forward and weight
    gradient) + ``6·B·k·d`` (sparse decode)."""
    return int(4 * batch * d_in * d_sae + 6 * batch * active_per_token * d_in)


def dense_step_flops(batch: int, d_in: int, d_sae: int, encoder_products: int = 2) -> int:
    """Everything dense (ReLU's plain formula): ``2·encoder_products·B·d·n`` for the encoder's products (forward and
    weight gradient: 2) and ``6·B·d·n`` for the dense decode forward and its two gradients."""
    return (2 * encoder_products + 6) * batch * d_in * d_sae
