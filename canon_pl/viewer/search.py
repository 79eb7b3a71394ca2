"""Find latents by a token: in their top activating contexts or their promoted tokens (no Streamlit imports)."""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from canon_pl.stats import LatentStatistics, StatsError

COLUMNS = ["sae", "latent", "top_hits", "promoted_rank", "frequency"]


def matching_token_ids(token_strings: dict[int, str], query: str, whole: bool = True) -> Tensor:
    """Ids ``[n]`` of the tokens whose text is ``query`` (ignoring case and surrounding spaces) or, with
    ``whole=False``, contains it."""
    wanted = query.strip().lower()
    if not wanted:
        return torch.zeros(0, dtype=torch.long)
    hits = [i for i, text in token_strings.items()
            if (text.strip().lower() == wanted if whole else wanted in text.lower())]
    return torch.tensor(sorted(hits), dtype=torch.long)


def top_centre_tokens(stats: LatentStatistics, member: str) -> Tensor:
    """``[d_sae, n_top]`` the token at each top example's peak (-1 where a latent has fewer examples)."""
    ids = stats.array(member, "top_ids").long()
    flat = stats.contexts().flatten().long()
    valid = (ids >= 0) & (ids < flat.numel()) & (stats.array(member, "top_values") > 0)
    return torch.where(valid, flat[ids.clamp(0, max(flat.numel() - 1, 0))], -1)


def search_latents(stats: LatentStatistics, query: str, whole: bool = True, limit: int = 100,
                   centre_tokens: dict[str, Tensor] | None = None) -> pd.DataFrame:
    """Latents of every SAE in ``stats`` whose top examples peak on a token matching ``query`` or whose promoted
    tokens include one. Rows ``sae, latent, top_hits`` (how many top examples peak on it), ``promoted_rank`` (its
    best rank among the promoted tokens, 0 = most promoted; -1 if absent) and ``frequency``, most hits first.
    ``centre_tokens`` (from ``top_centre_tokens``) can be passed to avoid re-reading them."""
    ids = matching_token_ids(stats.token_strings(), query, whole)
    if ids.numel() == 0:
        return pd.DataFrame(columns=COLUMNS)
    meta = stats.index.get("kind") == "meta_sae"
    frames = []
    for member in stats.members:
        promoted = stats.array(member, "promoted_tokens").long()
        in_promoted = torch.isin(promoted, ids)
        rank = torch.where(in_promoted.any(1), in_promoted.float().argmax(1), -1)
        if meta:
            hits = torch.zeros_like(rank)
        else:
            centre = centre_tokens[member] if centre_tokens else top_centre_tokens(stats, member)
            hits = torch.isin(centre, ids).sum(1)
        found = ((hits > 0) | (rank >= 0)).nonzero().flatten()
        if found.numel() == 0:
            continue
        frequency = stats.frequencies(member) if not meta else torch.zeros(promoted.shape[0])
        frames.append(pd.DataFrame({"sae": member, "latent": found.numpy(), "top_hits": hits[found].numpy(),
                                    "promoted_rank": rank[found].numpy(), "frequency": frequency[found].numpy()}))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    table["_rank"] = table["promoted_rank"].where(table["promoted_rank"] >= 0, 10**6)
    table = table.sort_values(["top_hits", "_rank"], ascending=[False, True]).drop(columns="_rank")
    return table.head(limit).reset_index(drop=True)


__all__ = ["StatsError", "matching_token_ids", "search_latents", "top_centre_tokens"]
