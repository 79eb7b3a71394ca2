"""Which latents a reader should look at first: the rule the report uses to choose its example decompositions and
the viewer to rank latents.

A latent is *readable* when it fires on a moderate share of tokens (between ``MIN_DENSITY`` and ``MAX_DENSITY``:
rarer ones have too few examples, denser ones are usually positional or sub-word noise) and its top examples are
concentrated: the score is the share of its top examples that peak on the same token. Latents outside the density
band, or with fewer than ``MIN_EXAMPLES`` top examples, score -1. Promoted tokens are worth reading only deep enough
in the model (:func:`logit_lens_meaningful`).
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_DENSITY = 5e-4
MAX_DENSITY = 2e-2
MIN_EXAMPLES = 4


def readability_scores(frequency: Tensor, centre_tokens: Tensor) -> Tensor:
    """``[d_sae]`` scores in [0, 1] (or -1) from firing frequencies ``[d_sae]`` and the token at each top example's
    peak ``[d_sae, n_top]`` (-1 where a latent has fewer examples)."""
    valid = centre_tokens >= 0
    n_valid = valid.sum(1)
    shifted = torch.where(valid, centre_tokens, centre_tokens.new_full((), -1))
    top_share = torch.zeros(frequency.shape[0])
    for j in torch.nonzero(n_valid >= MIN_EXAMPLES).flatten().tolist():
        _, counts = torch.unique(shifted[j][valid[j]], return_counts=True)
        top_share[j] = counts.max().float() / n_valid[j].float()
    band = (frequency >= MIN_DENSITY) & (frequency <= MAX_DENSITY) & (n_valid >= MIN_EXAMPLES)
    return torch.where(band, top_share, torch.full_like(top_share, -1.0))


LOGIT_LENS_MIN_DEPTH = 2 / 3
"""Promoted tokens (a direction read through the unembedding: the logit lens) are shown only for hook points at least
this far through the model: at a mid layer they are sub-word noise (layer 6 of SmolLM2's 30 promotes 'toplas',
'melon', 'uschwitz'), so there a meta-latent is described by the base latents that use it instead."""


def logit_lens_meaningful(hook_point: str | None, n_layers: int | None) -> bool:
    """Whether the hook point's layer is at least :data:`LOGIT_LENS_MIN_DEPTH` through ``n_layers`` blocks
    (``model.layers.6``, ``blocks.6.hook_resid_pre``, ``transformer.h.6``); unknown depth: no."""
    import re

    match = re.search(r"(?:layers|blocks|h)\.(\d+)", hook_point or "")
    if match is None or not n_layers:
        return False
    return (int(match.group(1)) + 1) / int(n_layers) >= LOGIT_LENS_MIN_DEPTH


__all__ = ["LOGIT_LENS_MIN_DEPTH", "MAX_DENSITY", "MIN_DENSITY", "MIN_EXAMPLES", "logit_lens_meaningful",
           "readability_scores"]
