"""The path at every granularity of grouping, where the answer is known: S holds the sums of planted 3-part families
(each part at cosine 0.577 to its parent), L holds the parts. Grouping by decoder cosine 0.7 misses every family and
the path rises far above its endpoints; grouping by reconstruction overlap finds exactly the planted families and
the path is monotone; an L of unrelated directions forms no swap group at all."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from canon_pl.stitching import sparse_codes
from canon_pl.stitching.granularity import (
    best_partner_edges,
    granularity_curve,
    reconstruction_overlap,
)
from canon_pl.stitching.groups import groups_from_edges
from tests.test_stitching import orthonormal, tied_sae

FAMILIES, PARTS = 5, 3


def planted_families(n_tokens: int = 4000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Parts ``[15, 32]`` orthonormal; parents ``[5, 32]`` the normalised sum of each family's 3 parts; unrelated
    ``[15, 32]`` orthonormal directions orthogonal to every part. Each family is active with p 0.2, each of its parts
    then with its own coefficient U(0.5, 1.5)."""
    basis = orthonormal(FAMILIES * PARTS * 2)
    parts, unrelated = basis[:FAMILIES * PARTS], basis[FAMILIES * PARTS:]
    parents = F.normalize(parts.view(FAMILIES, PARTS, -1).sum(1), dim=-1)
    g = torch.Generator().manual_seed(seed)
    active = (torch.rand(n_tokens, FAMILIES, generator=g) < 0.2).repeat_interleave(PARTS, dim=1)
    coef = (torch.rand(n_tokens, FAMILIES * PARTS, generator=g) + 0.5) * active
    return {"parts": parts, "parents": parents, "unrelated": unrelated, "x": coef @ parts}


def curve_for(small, large, x):
    return granularity_curve(small, large, x), sparse_codes(small, x), sparse_codes(large, x)


def test_overlap_grouping_finds_planted_families_that_cosine_grouping_misses() -> None:
    planted = planted_families()
    small, large, x = tied_sae(planted["parents"]), tied_sae(planted["parts"]), planted["x"]
    assert abs(float(planted["parts"][0] @ planted["parents"][0]) - 3 ** -0.5) < 1e-5  # each part at cos 0.577
    curve, small_codes, large_codes = curve_for(small, large, x)
    points = {(p["grouping"], p["threshold"]): p for p in curve["points"]}
    cosine = points[("decoder cosine", 0.7)]
    assert cosine["kinds"]["swap"] == 0 and cosine["path_excess"] > 1.0, cosine  # every part inserted alone
    overlap = points[("overlap, best partner", 0.5)]
    assert overlap["kinds"] == {"novel": 0, "swap": FAMILIES, "removal": 0}, overlap
    assert overlap["path_excess"] <= 1e-4 and overlap["latents_per_swap"] == PARTS, overlap
    # the finest monotone grouping has the planted family size (decoder cosine 0.5 also reaches the 0.577 parts here)
    assert curve["monotone_largest_group_share"] == PARTS / (FAMILIES * PARTS)

    # the groups are exactly the planted families: parent f with parts 3f, 3f + 1, 3f + 2
    score = reconstruction_overlap(small.W_dec, large.W_dec, small_codes, large_codes)
    groups = groups_from_edges(FAMILIES, FAMILIES * PARTS, *best_partner_edges(score, 0.5))
    for family in range(FAMILIES):
        s, l = groups.members(int(groups.small_group[family]))
        assert s.tolist() == [family] and l.tolist() == list(range(PARTS * family, PARTS * family + PARTS))
    assert 0.5 < float(score[0, 0]) < 0.6  # decoder cosine 0.577 times a co-activation just under 1


def test_an_unrelated_large_sae_forms_no_swap_group_at_any_overlap_threshold() -> None:
    planted = planted_families()
    x = planted["x"] + 0.3 * torch.randn(planted["x"].shape, generator=torch.Generator().manual_seed(2))
    small, unrelated = tied_sae(planted["parents"]), tied_sae(planted["unrelated"])
    curve, *_ = curve_for(small, unrelated, x)
    for point in curve["points"]:
        if point["grouping"] != "decoder cosine":
            assert point["kinds"]["swap"] == 0, point
