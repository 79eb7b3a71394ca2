"""The SAE maths researchers rely on: sparsity counts, decoder constraint, exactness of the fast paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from canon_pl.data import SyntheticSparseActivations
from canon_pl.sae import BatchTopKSAE, SAEConfig, SAEConfigError, SparseActivations, batch_topk, build_sae
from tests.helpers import own_k


def make_sae(architecture: str = "batchtopk", d_in: int = 16, d_sae: int = 64, k: int = 4, **kw) -> torch.nn.Module:
    """An SAE of ``architecture``; ``k`` where the architecture has one (the TopK family)."""
    return build_sae(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, **own_k(architecture, k), **kw))


def positive_inputs(batch: int = 32, d_in: int = 16) -> torch.Tensor:
    return torch.randn(batch, d_in) + 0.5


def test_batchtopk_training_keeps_exactly_k_times_batch_activations() -> None:
    sae = make_sae(k=4)
    out = sae.training_forward(positive_inputs(32))
    assert int((out.feature_acts > 0).sum()) == 4 * 32
    per_token = (out.feature_acts > 0).sum(dim=1)
    assert per_token.float().std() > 0  # the budget is shared over the batch, not fixed per token


def test_topk_keeps_exactly_k_per_token() -> None:
    sae = make_sae("topk", k=5)
    acts = sae.encode(positive_inputs(32))
    assert torch.equal((acts > 0).sum(dim=1), torch.full((32,), 5))


@pytest.mark.parametrize("lower_bounds", [(), (0.5,), (0.95,), (0.999,), (0.999, 0.9)])
def test_batch_topk_selection_equals_torch_topk_over_the_flattened_batch(lower_bounds: tuple) -> None:
    """Exact whether a candidate pre-filter holds enough entries (0.5, 0.95), must fall back to the next bound
    (0.999 then 0.9) or to the full top-k (0.999 alone)."""
    pre = torch.rand(64, 300)
    acts = batch_topk(pre, 64 * 7, lower_bounds=lower_bounds)
    dense = acts.to_dense(300)
    expected = torch.zeros_like(pre).view(-1)
    values, idx = pre.view(-1).topk(64 * 7)
    expected[idx] = values
    assert torch.equal(dense, expected.view(64, 300))


def test_batch_topk_with_ties_and_zeros_keeps_exactly_the_positive_top_values() -> None:
    """Ties at the boundary may pick either entry but never change the kept values; zeros are never kept."""
    pre = torch.zeros(8, 50)
    pre[:, :5] = 1.0  # 40 tied entries, 16 to keep
    pre[0, 10] = 2.0
    acts = batch_topk(pre, 16, lower_bounds=(0.5,))
    reference = pre.flatten().topk(16).values
    assert torch.equal(acts.values.sort().values, reference.sort().values)
    sparse = torch.zeros(4, 10)
    sparse[0, 0] = 3.0
    only = batch_topk(sparse, 8)
    assert only.values.tolist() == [3.0] and only.rows.tolist() == [0] and only.cols.tolist() == [0]


def test_inference_threshold_makes_latents_independent_of_the_batch() -> None:
    sae = make_sae()
    sae.threshold.fill_(0.3)
    sae.threshold_initialized.fill_(True)
    x = positive_inputs(8)
    alone = torch.cat([sae.encode(x[i:i + 1], inference=True) for i in range(8)])
    together = sae.encode(x, inference=True)
    assert torch.allclose(alone, together)
    pre = sae.pre_activations(x)
    assert torch.equal(together > 0, pre > 0.3)


def naive_batchtopk_loss(sae: BatchTopKSAE, x: torch.Tensor) -> torch.Tensor:
    """docs/design.md 1.1 written out densely: the reference for the fast path."""
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    k_total = sae.cfg.k * x.shape[0]
    flat = pre.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(k_total).indices] = True
    f = (flat * mask).view_as(pre)
    x_hat = f @ sae.W_dec + sae.b_dec
    return F.mse_loss(x_hat, x)


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
@pytest.mark.parametrize("architecture", ["batchtopk", "topk"])
def test_training_step_matches_naive_formula_including_gradients(architecture: str, kernel: str) -> None:
    sae = make_sae(architecture, d_in=24, d_sae=96, k=6, aux_coefficient=0.0, kernel=kernel)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(40, 24) * 2
    fast = sae.training_forward(x).loss
    fast_grads = torch.autograd.grad(fast, list(sae.parameters()))
    if architecture == "batchtopk":
        naive = naive_batchtopk_loss(sae, x)
    else:
        pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        vals, idx = pre.topk(6, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, vals)
        naive = F.mse_loss(f @ sae.W_dec + sae.b_dec, x)
    naive_grads = torch.autograd.grad(naive, list(sae.parameters()))
    assert torch.allclose(fast, naive, rtol=1e-5, atol=1e-6)
    for (name, _), g_fast, g_naive in zip(sae.named_parameters(), fast_grads, naive_grads):
        assert torch.allclose(g_fast, g_naive, rtol=1e-4, atol=1e-6), name


def test_sparse_and_dense_kernels_agree_with_auxk_active() -> None:
    """Half the latents dead: the AuxK term's gradients through the sparse path equal the dense ones."""
    grads = {}
    for kernel in ("sparse", "dense"):
        torch.manual_seed(0)
        sae = make_sae(d_in=24, d_sae=96, k=6, kernel=kernel, aux_k=8, dead_tokens_threshold=1)
        with torch.no_grad():
            sae.tokens_since_fired[::2] = 10  # every other latent counts as dead
        x = torch.randn(40, 24) * 2
        out = sae.training_forward(x)
        assert out.losses["auxk"] > 0
        grads[kernel] = (out.loss.detach(), torch.autograd.grad(out.loss, list(sae.parameters())))
    assert torch.allclose(grads["sparse"][0], grads["dense"][0], rtol=1e-5)
    for g_sparse, g_dense in zip(grads["sparse"][1], grads["dense"][1]):
        assert torch.allclose(g_sparse, g_dense, rtol=1e-4, atol=1e-6)


def test_input_gradient_flows_through_the_sparse_path() -> None:
    """Researchers take gradients with respect to activations (attribution): the sparse path provides them."""
    grads = {}
    for kernel in ("sparse", "dense"):
        torch.manual_seed(0)
        sae = make_sae(d_in=24, d_sae=96, k=6, kernel=kernel, aux_coefficient=0.0)
        x = (torch.randn(16, 24) * 2).requires_grad_()
        grads[kernel] = torch.autograd.grad(sae.training_forward(x).loss, x)[0]
    assert torch.allclose(grads["sparse"], grads["dense"], rtol=1e-4, atol=1e-7)


def test_decoder_rows_stay_unit_norm_and_parallel_gradient_is_removed() -> None:
    sae = make_sae(d_sae=48)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(5):
        loss = sae.training_forward(positive_inputs(64)).loss
        opt.zero_grad()
        loss.backward()
        sae.remove_parallel_decoder_grad()
        parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=-1)
        assert parallel.abs().max() < 1e-6
        opt.step()
        sae.normalize_decoder()
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(48), atol=1e-5)


def test_folding_the_activation_scale_gives_an_sae_for_raw_activations() -> None:
    sae = make_sae()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    sae.threshold.fill_(0.2)
    scale = 3.7
    x = positive_inputs(20) * 10
    folded = sae.fold_activation_scale(scale)
    assert torch.allclose(folded(x), sae(x * scale) / scale, atol=1e-5)
    assert torch.allclose(folded.W_dec, sae.W_dec)
    assert torch.equal(folded.encode(x, inference=True) > 0, sae.encode(x * scale, inference=True) > 0)


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_relu_l1_step_matches_the_plain_formula_values_and_gradients(kernel: str) -> None:
    """The paper's stitching SAEs are ReLU + L1: the fast step (only positive pre-activations in the graph, the L1 on
    the gathered values) gives the loss and every gradient (weights, biases, the input) of the dense formula."""
    sae = make_sae("relu", d_in=24, d_sae=96, l1_coefficient=3.0, kernel=kernel)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.5)
    x = (torch.randn(40, 24) * 2).requires_grad_()
    out = sae.training_forward(x, sparsity_scale=0.5)
    assert isinstance(out.acts, SparseActivations) == (kernel == "sparse")  # no dense [batch, d_sae] graph
    fast_grads = torch.autograd.grad(out.loss, [*sae.parameters(), x])
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert 0 < (pre > 0).float().mean() < 0.9, "the test needs both active and silent latents"
    x_hat = pre @ sae.W_dec + sae.b_dec
    naive = F.mse_loss(x_hat, x) + 0.5 * 3.0 * pre.sum(dim=-1).mean() / 24
    naive_grads = torch.autograd.grad(naive, [*sae.parameters(), x])
    assert torch.allclose(out.loss, naive, rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.x_hat, x_hat.detach(), rtol=1e-5, atol=1e-5)
    assert out.l0 == (pre > 0).sum(dim=-1).float().mean()
    names = [name for name, _ in sae.named_parameters()] + ["x"]
    for name, g_fast, g_naive in zip(names, fast_grads, naive_grads):
        assert torch.allclose(g_fast, g_naive, rtol=1e-4, atol=1e-6), name


def test_relu_sparse_and_dense_kernels_agree_with_auxk_active() -> None:
    """Revival of dead latents (AuxK, if a ReLU run turns it on) gets the same gradients through the sparse step."""
    grads = {}
    for kernel in ("sparse", "dense"):
        torch.manual_seed(0)
        sae = make_sae("relu", d_in=24, d_sae=96, kernel=kernel, aux_k=8, aux_coefficient=0.1,
                       dead_tokens_threshold=1)
        with torch.no_grad():
            sae.tokens_since_fired[::2] = 10
            sae.b_enc[::4] = -100.0  # a quarter never fire: they stay dead through this batch
        out = sae.training_forward(torch.randn(40, 24) * 2)
        assert out.losses["auxk"] > 0 and set(out.losses) == {"mse", "l1", "auxk"}
        grads[kernel] = (out.loss.detach(), torch.autograd.grad(out.loss, list(sae.parameters())),
                         sae.tokens_since_fired.clone())
    assert torch.allclose(grads["sparse"][0], grads["dense"][0], rtol=1e-5)
    assert torch.equal(grads["sparse"][2], grads["dense"][2])  # the dead-latent counters too
    for g_sparse, g_dense in zip(grads["sparse"][1], grads["dense"][1]):
        assert torch.allclose(g_sparse, g_dense, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_matryoshka_loss_is_the_mean_of_every_nested_prefixs_mse_with_its_gradients(kernel: str) -> None:
    """Each prefix of the latents reconstructs on its own: the training loss is the mean over the prefixes (the
    full width included) of each prefix's MSE, with BatchTopK's selection over all latents."""
    sae = make_sae("matryoshka_batchtopk", d_in=24, d_sae=96, k=6, aux_coefficient=0.0, kernel=kernel,
                   prefix_fractions=[0.125, 0.5])
    assert sae.prefix_sizes == [12, 48, 96]
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(40, 24) * 2
    out = sae.training_forward(x)
    fast_grads = torch.autograd.grad(out.loss, list(sae.parameters()))
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    flat = pre.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(6 * 40).indices] = True
    f = (flat * mask).view_as(pre)
    naive = torch.stack([F.mse_loss(f[:, :m] @ sae.W_dec[:m] + sae.b_dec, x) for m in (12, 48, 96)]).mean()
    naive_grads = torch.autograd.grad(naive, list(sae.parameters()))
    assert torch.allclose(out.loss, naive, rtol=1e-5, atol=1e-6)
    for (name, _), g_fast, g_naive in zip(sae.named_parameters(), fast_grads, naive_grads):
        assert torch.allclose(g_fast, g_naive, rtol=1e-4, atol=1e-6), name
    assert not torch.allclose(out.loss, F.mse_loss(out.x_hat, x))  # the prefixes count, not only the whole


def test_a_matryoshka_prefix_is_the_sae_of_its_first_latents() -> None:
    sae = make_sae("matryoshka_batchtopk", d_in=16, d_sae=64, k=4)
    with torch.no_grad():
        sae.b_enc.normal_(std=0.2)
        sae.threshold.fill_(0.3)
        sae.threshold_initialized.fill_(True)
    sae.eval()
    x = positive_inputs(16)
    prefix = sae.prefix(16)
    assert prefix.cfg.architecture == "batchtopk" and prefix.d_sae == 16
    acts = sae.encode(x, inference=True)
    assert torch.equal(prefix.encode(x, inference=True), acts[:, :16])
    assert torch.allclose(prefix(x), sae.prefix_reconstruction(acts, 16), atol=1e-6)
    assert torch.allclose(sae.prefix(64)(x), sae(x), atol=1e-6)


def test_relu_sae_pays_an_l1_penalty() -> None:
    sae = make_sae("relu", l1_coefficient=2.0)
    out = sae.training_forward(positive_inputs())
    assert set(out.losses) >= {"mse", "l1"}
    assert out.losses["l1"] > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_in=16, d_sae=8, k=9), "k=9"),
        (dict(d_in=16, d_sae=8, architecture="transcoder"), "unknown SAE architecture"),
        (dict(d_in=0, d_sae=8), "positive"),
    ],
)
def test_invalid_configs_fail_with_a_message_naming_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(SAEConfigError, match=message):
        SAEConfig(**kwargs)


def train_core(sae, source: SyntheticSparseActivations, steps: int, batch: int = 512, lr: float = 3e-3) -> None:
    x0 = source.batch(0, batch)
    scale = (source.d_in / x0.pow(2).sum(-1).mean()).sqrt()
    with torch.no_grad():
        sae.b_dec.copy_((x0 * scale).mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.99))
    for i in range(steps):
        loss = sae.training_forward(source.batch(i, batch) * scale).loss
        opt.zero_grad()
        loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()


@pytest.mark.parametrize("aux_coefficient", [1 / 32, 0.0])
def test_auxk_revives_latents_killed_at_initialisation(aux_coefficient: float) -> None:
    """Half the encoder columns are shrunk so those latents never win the top-k: only AuxK brings them back."""
    source = SyntheticSparseActivations(d_in=32, n_features=64, active_per_token=3, seed=0)
    sae = make_sae(d_in=32, d_sae=64, k=3, aux_k=32, dead_tokens_threshold=5120, aux_coefficient=aux_coefficient)
    with torch.no_grad():
        sae.W_enc[:, :32] *= 0.05
    train_core(sae, source, steps=600)
    dead_among_killed = sae.dead_mask()[:32].float().mean().item()
    if aux_coefficient > 0:
        assert dead_among_killed < 0.25
    else:
        assert dead_among_killed > 0.9  # the control: without AuxK they stay dead
