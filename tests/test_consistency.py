"""Matched consistency of two dictionaries (Hungarian matching on decoder cosine): known answers."""

from __future__ import annotations

import math

import pytest
import torch

from canon_pl.stitching.consistency import consistency_summary, matched_consistency


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_the_same_dictionary_in_another_order_is_fully_consistent() -> None:
    truth = unit_rows(200, 64, 0)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(1))
    noisy = truth[order] + 0.05 * unit_rows(200, 64, 2)  # as another seed would find it: permuted, slightly off
    result = matched_consistency(truth, noisy)
    assert result["mean_matched_cosine"] > 0.99 and result["shared_at"] == {"0.7": 1.0, "0.9": 1.0}
    assert torch.equal(order[result["partner"]], torch.arange(200))  # every latent found its own copy


def test_unrelated_dictionaries_match_at_chance() -> None:
    """Random unit rows in 64 dimensions: the best one-to-one pairs stay far below 0.7 (chance, not zero)."""
    result = matched_consistency(unit_rows(200, 64, 0), unit_rows(200, 64, 1))
    assert 0.1 < result["mean_matched_cosine"] < 0.4 and result["shared_at"]["0.7"] == 0.0
    assert result["method"] == "dense"


def test_a_wider_dictionary_is_matched_over_the_smaller_ones_latents() -> None:
    small = unit_rows(100, 64, 0)
    large = torch.cat([small, unit_rows(300, 64, 3)])[torch.randperm(400, generator=torch.Generator().manual_seed(4))]
    result = consistency_summary(large, small)  # either order: the smaller dictionary's latents are counted
    assert result["n_smaller"] == 100 and result["smaller"] == "b"
    assert result["shared_at"]["0.9"] == 1.0 and math.isclose(result["mean_matched_cosine"], 1.0, rel_tol=1e-5)
    assert "partner" not in result  # what a results file records is JSON


def test_the_sparse_matching_agrees_with_the_dense_one_in_bounded_memory() -> None:
    truth = unit_rows(300, 32, 0)
    half = torch.cat([truth[:150] + 0.1 * unit_rows(150, 32, 5), unit_rows(450, 32, 6)])  # half found again
    dense = matched_consistency(truth, half)
    sparse = matched_consistency(truth, half, dense_limit=1000, candidates=16)
    assert sparse["method"] == "sparse" and dense["method"] == "dense"
    assert sparse["shared_at"] == dense["shared_at"] and sparse["shared_at"]["0.9"] == pytest.approx(0.5)
    assert sparse["mean_matched_cosine"] == pytest.approx(dense["mean_matched_cosine"], abs=0.02)


def test_every_stitching_result_records_consistency_across_widths_and_seeds() -> None:
    from canon_pl.stitching import analyze_pair
    from tests.test_stitching import random_trained_like

    small, large, other = random_trained_like(16, seed=1), random_trained_like(32, seed=2), random_trained_like(32, seed=3)
    with torch.no_grad():
        large.W_dec[:16] = small.W_dec  # L keeps every latent of S; its other seed keeps none of L's
    summary = analyze_pair(small, large, torch.randn(256, 32), control=other, control_name="32_seed1").summary
    across_widths, across_seeds = summary["consistency"], summary["control"]["consistency"]
    assert across_widths["shared_at"]["0.9"] == 1.0 and across_widths["n_smaller"] == 16
    assert across_seeds["n_smaller"] == 32 and across_seeds["shared_at"]["0.9"] < 0.2
