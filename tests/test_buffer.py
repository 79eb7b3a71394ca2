"""The reproducible shuffle buffer: every token served once, mixed across blocks, resumable at any batch."""

from __future__ import annotations

import pytest
import torch

from canon_pl.lm import iterate_buffered_batches, select_training_tokens


def blocks(n_blocks: int = 5, per_block: int = 100):
    def load_block(k: int) -> torch.Tensor:
        if k >= n_blocks:
            return torch.empty(0, 2)
        ids = torch.arange(k * per_block, (k + 1) * per_block, dtype=torch.float32)
        return torch.stack([ids, torch.full_like(ids, k)], dim=1)  # column 1 = block of origin

    return load_block


def test_every_token_is_served_at_most_once_and_batches_mix_blocks() -> None:
    served = [b for _, b in iterate_buffered_batches(blocks(), batch_size=20, seed=0)]
    ids = torch.cat(served)[:, 0]
    assert ids.unique().numel() == ids.numel()
    assert ids.numel() >= 500 - 20 * 6  # only sub-batch remainders are dropped
    assert any(b[:, 1].unique().numel() > 1 for b in served)  # a batch holds tokens of two blocks


@pytest.mark.parametrize("resume_after", [1, 4, 7, 12])
def test_resuming_at_a_position_yields_exactly_the_rest_of_the_stream(resume_after: int) -> None:
    full = list(iterate_buffered_batches(blocks(), batch_size=20, seed=3))
    position = full[resume_after - 1][0]
    resumed = list(iterate_buffered_batches(blocks(), batch_size=20, seed=3, start=position))
    assert len(resumed) == len(full) - resume_after
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full[resume_after:], resumed))


def test_bos_and_outlier_tokens_are_excluded() -> None:
    acts = torch.randn(4, 10, 8)
    acts[2, 5] *= 1000.0  # an attention-sink-like token
    selection = select_training_tokens(acts, exclude_bos=True, outlier_factor=10.0)
    assert selection.n_bos == 4 and selection.n_outliers == 1
    assert not selection.mask[:, 0].any() and not selection.mask[2, 5]
    assert selection.kept.shape == (4 * 9 - 1, 8)
    assert selection.excluded_fraction == pytest.approx(5 / 40)
    everything = select_training_tokens(acts, exclude_bos=False, outlier_factor=None)
    assert everything.kept.shape == (40, 8)
