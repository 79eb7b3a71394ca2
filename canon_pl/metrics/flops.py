"""Floating-point operations of one SAE training step, for achieved FLOP/s and its fraction of a device's peak.

Counted as useful work (what MFU counts): one multiply-add = 2 FLOPs, matrix products only. With ``kernel="sparse"``
the dense encoder product is computed once without autograd and only the active latents (the TopK family's ``k``
per token, ReLU's positive ones) are touched afterwards; with ``kernel="dense"`` the encoder's backward is a second
dense product, and a dense ReLU step also decodes densely. AuxK's extra work (only while latents are dead) and
element-wise ops are not counted.
"""

from __future__ import annotations


def sae_training_flops(batch: int, d_in: int, d_sae: int, k: float, architecture: str = "batchtopk",
                       kernel: str = "sparse") -> int:
    """FLOPs of forward + backward for ``batch`` tokens (``k``: mean active latents per token, the L0).

    - sparse kernel (every architecture): ``2·B·d·n`` (encoder) + ``8·B·k·d`` (the active pre-activations' weight
      gradient, sparse decode forward, its two gradients).
    - TopK family, dense kernel: ``4·B·d·n`` (encoder forward and weight gradient) + ``6·B·k·d`` (sparse decode).
    - ReLU, dense kernel: ``10·B·d·n`` (encoder forward and weight gradient, dense decode forward and two gradients).
    """
    dense = batch * d_in * d_sae
    sparse = batch * k * d_in
    if kernel == "sparse":
        return int(2 * dense + 8 * sparse)
    if architecture == "relu":
        return 10 * dense
    return int(4 * dense + 6 * sparse)
