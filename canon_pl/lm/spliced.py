"""Spliced next-token loss: the LM's cross-entropy with a hook point's output replaced (DESIGN.md 1.4)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.lm.hooked import HookedLanguageModel


def _token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-position next-token cross-entropy ``[batch, seq - 1]``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none").view(
        tokens.shape[0], -1)


@torch.inference_mode()
def spliced_loss_sums(
    lm: HookedLanguageModel,
    tokens: Tensor,
    hook_point: str,
    reconstruct: Callable[[Tensor], Tensor],
    splice_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Sums over the batch of next-token CE clean, with the SAE spliced in, and with the hook zero-ablated, plus
    KL(clean ‖ spliced); ``n_tokens`` is the number of predicted positions.

    tokens: ``[batch, seq]``. reconstruct: ``[n, d] -> [n, d]``. splice_mask: ``[batch, seq]`` positions replaced
    (default all); the others keep their clean activations (BOS and outliers, which the SAE does not model).
    """
    tokens = tokens.to(lm.device)
    mask = torch.ones_like(tokens, dtype=torch.bool) if splice_mask is None else splice_mask.to(lm.device)

    def splice(fill: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def replace(out: Tensor) -> Tensor:
            new = out.clone()
            new[mask] = fill(out[mask]).to(out.dtype)
            return new
        return replace

    clean = lm.logits(tokens)
    spliced = lm.logits(tokens, hook_point, splice(reconstruct))
    zero = lm.logits(tokens, hook_point, splice(torch.zeros_like))
    log_p = F.log_softmax(clean[:, :-1].float(), dim=-1)
    log_q = F.log_softmax(spliced[:, :-1].float(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return {
        "ce_clean": _token_ce(clean, tokens).sum().cpu(),
        "ce_spliced": _token_ce(spliced, tokens).sum().cpu(),
        "ce_zero": _token_ce(zero, tokens).sum().cpu(),
        "kl": kl.sum().cpu(),
        "n_tokens": torch.tensor(float(tokens.shape[0] * (tokens.shape[1] - 1))),
    }
