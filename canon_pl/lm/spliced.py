"""Spliced next-token loss: the LM's cross-entropy with a hook point's output replaced (docs/design.md 1.4)."""

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
    reconstructions: dict[str, Callable[[Tensor], Tensor]],
    splice_mask: Tensor | None = None,
) -> dict[str, dict[str, Tensor]]:
    """For each named reconstruction: sums over the batch of next-token CE clean, with it spliced in, and with the
    hook zero-ablated, plus KL(clean ‖ spliced) and KL(clean ‖ zero-ablated); ``n_tokens`` is the number of predicted positions. The clean and
    zero-ablated passes run once for all reconstructions (a family shares them).

    tokens: ``[batch, seq]``. Each reconstruction maps ``[n, d] -> [n, d]``. splice_mask: ``[batch, seq]`` positions
    replaced (default all); the others keep their clean activations (BOS and outliers, which SAEs do not model).
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
    ce_clean = _token_ce(clean, tokens).sum().cpu()
    zero = lm.logits(tokens, hook_point, splice(torch.zeros_like))
    ce_zero = _token_ce(zero, tokens).sum().cpu()
    log_p = F.log_softmax(clean[:, :-1].float(), dim=-1)

    def kl_from_clean(logits: Tensor) -> Tensor:
        log_q = F.log_softmax(logits[:, :-1].float(), dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).sum().cpu()

    kl_zero = kl_from_clean(zero)
    del zero
    n_tokens = torch.tensor(float(tokens.shape[0] * (tokens.shape[1] - 1)))
    results = {}
    for name, reconstruct in reconstructions.items():
        spliced = lm.logits(tokens, hook_point, splice(reconstruct))
        results[name] = {
            "ce_clean": ce_clean,
            "ce_spliced": _token_ce(spliced, tokens).sum().cpu(),
            "ce_zero": ce_zero,
            "kl": kl_from_clean(spliced),
            "kl_zero": kl_zero,
            "n_tokens": n_tokens,
        }
    return results
