"""Groups of latents swapped together (docs/design.md 1.2, step 3): the connected components of the bipartite graph
S <-> L whose edges are the pairs with decoder cosine ``>= tau``.

A component with L-latents only is a *novel* insertion, one with both is a *swap* (a latent that split, or several
that merged), one with S-latents only is a *removal* (an S-direction that L no longer has).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from canon_pl.metrics.matching import LatentMatch

KINDS = ("novel", "swap", "removal")


def connected_components(n_nodes: int, u: Tensor, v: Tensor) -> Tensor:
    """Component label of each of ``n_nodes`` nodes for the undirected edges ``u[i] - v[i]`` (``[n_edges]``).

    Labels are the smallest node index of each component (min-label propagation with pointer jumping).
    """
    labels = torch.arange(n_nodes, device=u.device)
    if u.numel() == 0:
        return labels
    while True:
        low = torch.minimum(labels[u], labels[v])
        new = labels.clone()
        new.scatter_reduce_(0, u, low, reduce="amin")
        new.scatter_reduce_(0, v, low, reduce="amin")
        new = new[new]  # pointer jumping: follow labels to their own labels
        while True:
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, labels):
            return labels
        labels = new


@dataclass
class LatentGroups:
    """The components, numbered ``0..n-1``.

    small_group: ``[d_small]`` component of each S-latent; large_group: ``[d_large]`` of each L-latent;
    n_small / n_large: ``[n]`` how many S- and L-latents each component holds.
    """

    small_group: Tensor
    large_group: Tensor
    n_small: Tensor
    n_large: Tensor

    @property
    def n_groups(self) -> int:
        return self.n_small.numel()

    def kinds(self) -> list[str]:
        """``novel``, ``swap`` or ``removal`` for each component."""
        out = []
        for ns, nl in zip(self.n_small.tolist(), self.n_large.tolist()):
            out.append("swap" if ns and nl else "novel" if nl else "removal")
        return out

    def kind_counts(self) -> dict[str, int]:
        kinds = self.kinds()
        return {kind: kinds.count(kind) for kind in KINDS}

    def members(self, group: int) -> tuple[Tensor, Tensor]:
        """(S-latent indices, L-latent indices) of one component."""
        return (torch.nonzero(self.small_group == group, as_tuple=True)[0],
                torch.nonzero(self.large_group == group, as_tuple=True)[0])


def latent_groups(match: LatentMatch) -> LatentGroups:
    """The connected components of the ``cos >= tau`` graph of ``match``."""
    return groups_from_edges(match.d_small, match.d_large, match.edges_small, match.edges_large)


def groups_from_edges(d_small: int, d_large: int, edges_small: Tensor, edges_large: Tensor) -> LatentGroups:
    """The connected components of the bipartite graph with edges ``edges_small[i] - edges_large[i]`` (``[n_edges]``
    S- and L-latent indices), whatever made the edges (decoder cosine, reconstruction overlap)."""
    device = edges_small.device
    labels = connected_components(d_small + d_large, edges_small, edges_large + d_small)
    _, group = torch.unique(labels, return_inverse=True)
    small_group, large_group = group[:d_small], group[d_small:]
    n = int(group.max()) + 1 if group.numel() else 0
    n_small = torch.bincount(small_group, minlength=n) if d_small else torch.zeros(n, dtype=torch.long, device=device)
    n_large = torch.bincount(large_group, minlength=n) if d_large else torch.zeros(n, dtype=torch.long, device=device)
    return LatentGroups(small_group, large_group, n_small, n_large)
