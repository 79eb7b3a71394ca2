"""Stitching read for nested SAEs: a Matryoshka SAE's prefix of ``m`` latents *is* the first ``m`` latents of a
larger prefix, so of the larger prefix only the latents it adds past ``m`` can be novel or re-split the smaller one.
These functions read a pair's per-latent arrays (``read_stitching_results(..., arrays=True)``) restricted to them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def by_widths(summaries: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """Stitching summaries keyed by ``(small d_sae, large d_sae)``: how a pair of one family finds the same pair of
    another."""
    return {(s["small"]["d_sae"], s["large"]["d_sae"]): s for s in summaries}


def held_out_ev(summaries: list[dict[str, Any]]) -> dict[int, float]:
    """``{d_sae: 1 - FVU}`` of every SAE the stitching summaries analysed (on their held-out tokens)."""
    ev: dict[int, float] = {}
    for s in summaries:
        ev.update({s["small"]["d_sae"]: 1 - s["fvu_small"], s["large"]["d_sae"]: 1 - s["fvu_large"]})
    return ev


def _share(mask: Tensor, among: Tensor) -> float | None:
    values = mask[among]
    return float(values.float().mean()) if values.numel() else None


def added_latent_classes(arrays: dict[str, Tensor], n_shared: int) -> dict[str, Any]:
    """The classification of the latents past the first ``n_shared`` of L (the ones a larger prefix adds):

    - ``n_added``, ``n_firing``: how many, and how many fire on the analysis tokens;
    - ``novel_fraction_definition``: share of the firing added latents that lower S's MSE when added alone;
    - ``novel_fraction_cosine``: share of the added latents with no S decoder row within cosine tau;
    - ``control_novel_fraction_definition``: the same definition against L's cross-seed control (``None`` without
      one): how many of the added latents another seed's SAE of L's width lacks.

    ``arrays``: a pair's per-latent arrays, each ``[d_large]`` (``large_fire_count``, ``large_novel_definition``,
    ``large_novel_cosine``, and ``control_delta_mse`` when the pair has a control)."""
    fires = arrays["large_fire_count"][n_shared:] > 0
    out: dict[str, Any] = {
        "n_added": int(fires.numel()), "n_firing": int(fires.sum()),
        "novel_fraction_definition": _share(arrays["large_novel_definition"][n_shared:].bool(), fires),
        "novel_fraction_cosine": (float(arrays["large_novel_cosine"][n_shared:].float().mean()) if fires.numel()
                                  else None),
        "control_novel_fraction_definition": None,
    }
    if "control_delta_mse" in arrays:
        out["control_novel_fraction_definition"] = _share(arrays["control_delta_mse"][n_shared:] < 0, fires)
    return out


__all__ = ["added_latent_classes", "by_widths", "held_out_ev"]
