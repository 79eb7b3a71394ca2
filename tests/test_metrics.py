"""Metric definitions of docs/design.md 1.4, aggregated over batches exactly as over one big batch."""

from __future__ import annotations

import pytest
import torch

from canon_pl.metrics import (
    DeadLatentFraction,
    ExplainedVariance,
    FiringDensityHistogram,
    FractionOfVarianceUnexplained,
    MeanL0,
)


def test_fvu_over_several_batches_equals_the_formula_on_all_tokens() -> None:
    x = torch.randn(300, 8) * torch.linspace(0.5, 3, 8) + 4.0
    x_hat = x + 0.3 * torch.randn_like(x)
    metric = FractionOfVarianceUnexplained()
    for chunk_x, chunk_hat in zip(x.split(70), x_hat.split(70)):
        metric.update(chunk_hat, chunk_x)
    expected = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert torch.allclose(metric.compute(), expected, rtol=1e-5)
    ev = ExplainedVariance()
    ev.update(x_hat, x)
    assert torch.allclose(ev.compute(), 1 - expected, rtol=1e-5)


def test_perfect_reconstruction_has_zero_fvu_and_mean_prediction_has_one() -> None:
    x = torch.randn(100, 4)
    perfect, mean = FractionOfVarianceUnexplained(), FractionOfVarianceUnexplained()
    perfect.update(x.clone(), x)
    mean.update(x.mean(0).expand_as(x), x)
    assert perfect.compute().item() == 0.0
    assert abs(mean.compute().item() - 1.0) < 1e-5


def test_l0_counts_non_zero_latents_per_token() -> None:
    acts = torch.zeros(4, 10)
    acts[0, :3] = 1.0
    acts[1, :1] = 2.0
    metric = MeanL0()
    metric.update(acts[:2])
    metric.update(acts[2:])
    assert metric.compute().item() == (3 + 1) / 4


def test_dead_fraction_uses_the_token_window() -> None:
    metric = DeadLatentFraction(d_sae=4, window_tokens=10)
    early = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(6, 1)
    late = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(6, 1)
    metric.update(early)
    assert metric.compute().item() == 0.0  # fewer than 10 tokens seen: nothing can be dead yet
    metric.update(late)
    # latent 1 fired 6 tokens ago (alive), latents 2 and 3 never fired in 12 tokens (dead)
    assert metric.compute().item() == 0.5
    never = DeadLatentFraction(d_sae=4)
    never.update(early)
    assert never.compute().item() == 0.5


def test_firing_density_histogram_counts_every_alive_latent() -> None:
    acts = torch.zeros(1000, 6)
    acts[:500, 0] = 1  # density 0.5
    acts[:10, 1] = 1  # 0.01
    acts[:1, 2] = 1  # 0.001
    metric = FiringDensityHistogram(d_sae=6, n_bins=8)
    metric.update(acts)
    result = metric.compute()
    assert result.never_fired == 3
    assert int(result.counts.sum()) == 3
    assert torch.allclose(result.densities[:3], torch.tensor([0.5, 0.01, 0.001]))


@pytest.mark.parametrize("architecture,kernel", [("relu", "dense"), ("batchtopk", "dense"), ("batchtopk", "sparse"),
                                                 ("topk", "sparse")])
def test_the_flop_model_counts_what_torch_counts_for_a_training_step(architecture: str, kernel: str) -> None:
    """The FLOP/s and peak fraction that SAEThroughputMonitor logs rest on this count."""
    from torch.utils.flop_counter import FlopCounterMode

    from canon_pl.metrics import sae_training_flops
    from canon_pl.sae import SAEConfig, build_sae
    from tests.helpers import own_k

    batch, d_in, d_sae, k = 256, 32, 1024, 4
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, **own_k(architecture, k),
                              kernel=kernel, aux_coefficient=0.0))
    sae.train()
    with FlopCounterMode(display=False) as counter:
        sae.training_forward(torch.randn(batch, d_in)).loss.backward()
    model = sae_training_flops(batch, d_in, d_sae, k, architecture, kernel)
    assert model == pytest.approx(counter.get_total_flops(), rel=0.01)
