"""JumpReLU and gated training-step throughput beside SAELens's own training SAEs, measured side by side in one run.

Shape: d_in 576, d_sae 9216, batch 4096, fp32 (``--quick``: a small smoke shape). Every SAE of one architecture starts
from the same weights; each library's own step is timed:
  - canon-pl ``JumpReLUSAE.training_forward`` (straight-through thresholds, target-L0 loss) + backward + Adam (θ at
    its own rate) + decoder constraint, with the plain formula (``kernel: dense``) and the sparse kernel (only the
    pre-activations above θ - ε/2 in the graph), against SAELens's ``JumpReLUTrainingSAE`` (quadratic target-L0
    mode, the same bandwidth) stepped as ``SAETrainer._train_step`` does (``training_forward_pass``, backward,
    gradient clipping, Adam). Every JumpReLU SAE starts from thresholds set where a trained one's are: each latent's
    θ at the quantile of its pre-activations on the batch that leaves L0 = 32 (at the initial θ = 0.001 half the
    latents fire and no kernel can skip anything);
  - canon-pl ``GatedSAE.training_forward`` (gate L1 + auxiliary loss through the frozen decoder) + backward + Adam +
    decoder constraint, against SAELens's ``GatedTrainingSAE`` stepped the same way;
  - the one-matmul limit: the forward encoder matmul ``[batch, d_in] @ [d_in, d_sae]`` alone.
SAELens is a benchmark-only extra (``make bench``); without it the peers are skipped. Ends with
``ratio: <canon-pl gated / SAELens gated>`` (``/ the one-matmul limit`` when SAELens is not installed).
Usage: ``python benchmarks/bench_jumprelu_gated_step.py [--quick]``.
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import replace

import torch
from bench_sae_step import matmul_fn, tokens_per_second  # the sibling script (this folder is on sys.path)

import canon_pl.sae.jumprelu as sparse_kernel
from canon_pl.sae import GatedSettings, JumpReLUSettings, SparseAutoencoder, build_sae

TARGET_L0 = 32.0
BANDWIDTH = JumpReLUSettings.bandwidth
L1 = 1.0


def canon_sae(settings, d_in: int, d_sae: int, device: torch.device) -> SparseAutoencoder:
    torch.manual_seed(0)
    return build_sae(settings.sae_config(d_in, d_sae)).to(device)


@torch.no_grad()
def set_trained_thresholds(sae: SparseAutoencoder, x: torch.Tensor, l0: float) -> None:
    """θ of every latent at the quantile of its pre-activations on ``x [batch, d_in]`` above which ``l0 / d_sae`` of
    the tokens lie: L0 = ``l0`` on ``x``, as after training to that target."""
    pre = sae.pre_activations(x)  # [batch, d_sae]
    rank = max(1, round(x.shape[0] * (1 - l0 / sae.d_sae)))
    sae.threshold.copy_(pre.kthvalue(rank, dim=0).values)


def initial_threshold_rows(settings: JumpReLUSettings, x: torch.Tensor, d_sae: int, iters: int,
                           device: torch.device) -> dict[str, float]:
    """Both JumpReLU kernels from the initial θ, the sparse one made to gather whatever the share above θ - ε/2
    (``SPARSE_STEP_MAX_FRACTION`` = 1): the cost its fallback to the plain formula avoids early in training."""
    rows = {}
    kept, sparse_kernel.SPARSE_STEP_MAX_FRACTION = sparse_kernel.SPARSE_STEP_MAX_FRACTION, 1.0
    try:
        for kernel in ("dense", "sparse"):
            sae = canon_sae(replace(settings, kernel=kernel), x.shape[1], d_sae, device)
            with torch.no_grad():
                pre = torch.addmm(sae.encoder_bias(), x, sae.W_enc)  # before the ReLU, as the kernel compares
                share = float((pre > sae.threshold - settings.bandwidth / 2).float().mean())
            rows[f"{kernel}, initial θ ({share:.0%})"] = tokens_per_second(canon_step_fn(sae), x, warmup=1,
                                                                          iters=max(2, iters // 3))
    finally:
        sparse_kernel.SPARSE_STEP_MAX_FRACTION = kept
    return rows


def canon_step_fn(sae: SparseAutoencoder):
    optimizer = torch.optim.Adam(sae.param_groups(3e-4), betas=(0.9, 0.99))
    sae.train()

    def step(x: torch.Tensor) -> None:
        out = sae.training_forward(x)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        optimizer.step()
        sae.after_optimizer_step()

    return step


def saelens_step_fn(kind: str, weights: dict[str, torch.Tensor], device: torch.device):
    """SAELens's JumpReLU or gated training SAE with ``weights`` copied in, stepped as ``SAETrainer._train_step``."""
    from sae_lens.saes.sae import TrainStepInput

    d_in, d_sae = weights["W_enc"].shape
    if kind == "jumprelu":
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, jumprelu_bandwidth=BANDWIDTH, jumprelu_sparsity_loss_mode="quadratic",
            target_l0=TARGET_L0, l0_coefficient=1.0, device=str(device)))
        coefficients = {"l0": 1.0}
    else:
        from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig

        sae = GatedTrainingSAE(GatedTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=L1, device=str(device)))
        coefficients = {"l1": L1}
    state = sae.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            if name == "threshold" and "log_threshold" in state:
                state["log_threshold"].copy_(value.clamp_min(1e-6).log())
            elif name in state:
                state[name].copy_(value)
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.99))

    def step(x: torch.Tensor) -> None:
        sae.train()
        out = sae.training_forward_pass(step_input=TrainStepInput(
            sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=9216)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="small shape and few iterations (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.d_sae, args.batch, args.iters = 64, 512, 256, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"cpu={platform.processor() or platform.machine()}")
    print(f"shape: d_in={args.d_in} d_sae={args.d_sae} batch={args.batch} fp32")
    results: dict[str, float] = {}
    for kind, settings in (("jumprelu", JumpReLUSettings(target_l0=TARGET_L0, kernel="dense")),
                           ("gated", GatedSettings(l1_coefficient=L1))):
        sae = canon_sae(settings, args.d_in, args.d_sae, device)
        if kind == "jumprelu":
            results.update(initial_threshold_rows(settings, x, args.d_sae, args.iters, device))
            set_trained_thresholds(sae, x, TARGET_L0)
        weights = {name: value.detach().clone() for name, value in sae.export_tensors().items()}
        if kind == "jumprelu":
            sparse = build_sae(replace(sae.cfg, settings=replace(settings, kernel="sparse"))).to(device)
            sparse.load_state_dict(sae.state_dict())
            results["canon-pl jumprelu sparse"] = tokens_per_second(canon_step_fn(sparse), x, warmup=2,
                                                                     iters=args.iters)
        results[f"canon-pl {kind}"] = tokens_per_second(canon_step_fn(sae), x, warmup=2, iters=args.iters)
        try:
            peer = saelens_step_fn(kind, weights, device)
        except ImportError as err:
            print(f"SAELens {kind:9s} skipped ({err.name} not installed: make bench)")
        else:
            results[f"SAELens {kind}"] = tokens_per_second(peer, x, warmup=2, iters=args.iters)
    limit = tokens_per_second(matmul_fn(args.d_in, args.d_sae, device), x, warmup=2, iters=args.iters)
    for name, value in results.items():
        print(f"{name:26s} {value:12,.0f} tokens/s   {value / limit:.3f} of the one-matmul limit")
    print(f"{'one-matmul limit':26s} {limit:12,.0f} tokens/s")
    print(f"canon-pl jumprelu sparse / dense: "
          f"{results['canon-pl jumprelu sparse'] / results['canon-pl jumprelu']:.3f}")
    if "SAELens jumprelu" in results:
        print(f"canon-pl jumprelu sparse / SAELens jumprelu: "
              f"{results['canon-pl jumprelu sparse'] / results['SAELens jumprelu']:.3f}")
    for kind in ("jumprelu", "gated"):
        if f"SAELens {kind}" in results:
            print(f"canon-pl {kind} / SAELens {kind}: {results[f'canon-pl {kind}'] / results[f'SAELens {kind}']:.3f}")
    if "SAELens gated" in results:
        print(f"ratio: {results['canon-pl gated'] / results['SAELens gated']:.3f}")
    else:
        print(f"ratio: {results['canon-pl gated'] / limit:.3f}")


if __name__ == "__main__":
    main()
