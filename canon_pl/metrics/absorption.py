"""Feature absorption: how often an SAE's latent for a general feature stays silent because a more specific latent
took its direction over (docs/design.md 1.4, "absorption").

Chanin et al. (2024, "A is for Absorption", arXiv 2409.14507): in a hierarchy ("a Python keyword" over ``def``,
``return``...) a sparse dictionary saves an activation by letting the child's latent carry the parent's direction,
so the parent's latent fails to fire exactly where a child fires. Measured here, per label and per SAE:

- the **main latent** is the label's carrier: the latent a 1-sparse probe uses (:mod:`canon_pl.metrics.probing`);
- the label's **direction** ``p`` is the difference of the mean raw activation on positive and on negative training
  tokens, unit length (the mean-difference probe);
- on each positive *test* token the main latent is a **false negative** when it does not fire, and the token is
  **absorbed** when, there, another firing latent whose decoder row has cosine at least :data:`ABSORBER_COSINE`
  with ``p`` carries at least :data:`ABSORBED_SHARE` of the token's signal along ``p`` by itself (its activation
  times its decoder row's projection on ``p``, against the token's projection on ``p`` above the negative tokens'
  mean): one latent took the parent's direction over.

``absorption_rate`` is the absorbed share of the positive test tokens (SAEBench's "full absorption"), and
``false_negative_rate`` the share where the main latent is silent for any reason (absorbed, or the direction
carried by many small latents, or not there at all). Where it differs from Chanin et al.: their main latents are
chosen by k-sparse probing with a rising k and their probe direction is a logistic regression's; here one main
latent and the mean-difference direction. ``x`` must be what the SAE encodes (its normalised input), so that
activations times decoder rows and the tokens' projections are in one space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.metrics.probing import train_mask

ABSORBER_COSINE = 0.1
"""Least cosine between a latent's decoder row and a label's direction for that latent to count as absorbing it."""
ABSORBED_SHARE = 0.5
"""Least share of a token's signal along the label's direction that one absorbing latent must carry."""


def label_direction(x: Tensor, label: Tensor) -> Tensor:
    """``[d_in]``, unit: the mean of ``x [n, d_in]`` on the positive training tokens of ``label int8 [n]`` minus its
    mean on the negative ones."""
    train = train_mask(x.shape[0]).to(x.device)
    label = label.to(x.device)
    positive, negative = x[(label == 1) & train].double(), x[(label == 0) & train].double()
    return F.normalize((positive.mean(0) - negative.mean(0)).float(), dim=0)


@torch.no_grad()
def absorption(encode: Callable[[Tensor], Tensor], W_dec: Tensor, x: Tensor, label: Tensor, main_latent: int,
               direction: Tensor, batch_size: int = 4096) -> dict[str, Any]:
    """The absorption of ``label int8 [n]`` (1 / 0 / -1 outside) in an SAE: ``encode`` takes ``[b, d_in]`` to codes
    ``[b, d_sae]``, ``W_dec [d_sae, d_in]``, ``x [n, d_in]`` (the SAE's input space), ``direction [d_in]``
    (:func:`label_direction`). Returns ``absorption_rate``, ``false_negative_rate``, ``n_positive`` (test tokens)
    and ``absorbers`` (how many latents pass the cosine test)."""
    decoder = W_dec.detach().float()
    direction = direction.to(decoder.device).float()
    along = decoder @ direction  # [d_sae]: each decoder row's projection on the direction
    aligned = F.normalize(decoder, dim=-1) @ direction >= ABSORBER_COSINE
    aligned[main_latent] = False
    train, test = train_mask(x.shape[0]), ~train_mask(x.shape[0])
    baseline = x[((label == 0) & train).to(x.device)].double().mean(0).float() @ direction.to(x.device)
    positive = (label == 1) & test
    silent = absorbed = 0
    for start in range(0, x.shape[0], batch_size):
        rows = positive[start:start + batch_size].to(x.device)
        if not bool(rows.any()):
            continue
        batch = x[start:start + batch_size][rows]
        codes = encode(batch)
        main_silent = codes[:, main_latent] <= 0
        signal = (batch.float() @ direction.to(x.device) - baseline).to(codes.device)  # [b]
        carried = (codes.float() * along * aligned).amax(dim=1)  # the largest single aligned contribution
        silent += int(main_silent.sum())
        absorbed += int((main_silent & (signal > 0) & (carried >= ABSORBED_SHARE * signal)).sum())
    n = int(positive.sum())
    return {"absorption_rate": absorbed / n if n else None, "false_negative_rate": silent / n if n else None,
            "n_positive": n, "absorbers": int(aligned.sum()), "absorber_cosine": ABSORBER_COSINE,
            "absorbed_share": ABSORBED_SHARE}


def absorption_per_task(sae: Any, x: Tensor, labels: dict[str, Tensor],
                        probes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per probed task, :func:`absorption` of its carrier (the 1-sparse probe's latent, from
    :func:`canon_pl.metrics.probing.sparse_probes`), measured in the SAE's input space on activations
    ``x [n, d_in]``."""
    inputs = sae.normalize_input(x).x
    return {task: absorption(lambda b: sae.encode(b, inference=True), sae.W_dec, inputs, labels[task],
                             result["top_latents"][0], label_direction(inputs, labels[task]))
            for task, result in probes.items() if "top_latents" in result}


__all__ = ["ABSORBED_SHARE", "ABSORBER_COSINE", "absorption", "absorption_per_task", "label_direction"]
