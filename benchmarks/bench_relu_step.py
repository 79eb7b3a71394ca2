"""ReLU + L1 training-step throughput, measured side by side in one run (the paper's stitching SAEs are ReLU + L1).

Shape: d_in 576, d_sae 9216, batch 4096, fp32, L0 about 40 (every SAE starts from the same weights, the encoder bias
set so that ``--l0`` latents per token fire on the benchmark batch; the L1 term lowers it a little over the steps,
and each SAE's L0 after its steps is printed). Prints tokens/s and the measured L0 for
  - canon-pl's ReLU step with ``kernel="sparse"`` (only the positive pre-activations enter the graph) and with
    ``kernel="dense"`` (the plain formula), each ``training_forward`` + backward + Adam + decoder constraint,
  - SAELens's standard (ReLU) training SAE as its trainer steps it (``training_forward_pass`` + backward + gradient
    clipping + Adam + its firing bookkeeping), when ``sae-lens`` is installed,
  - dictionary_learning's ``StandardTrainer.update`` (its loss, backward, ``ConstrainedAdam``, LR schedule), when
    ``dictionary-learning`` is installed,
  - the one-matmul limit: the forward encoder matmul ``[batch, d_in] @ [d_in, d_sae]`` alone,
and ends with ``ratio: <canon-pl sparse ReLU / faster peer>`` (``/ canon-pl dense`` when no peer is installed).
The peers are benchmark-only extras: ``make bench``. Usage: ``python benchmarks/bench_relu_step.py [--quick]``.
"""

from __future__ import annotations

import argparse
import platform

import torch
from bench_sae_step import matmul_fn, tokens_per_second  # the sibling script (this folder is on sys.path)

from canon_pl.sae import SAEConfig, build_sae


def shared_weights(d_in: int, d_sae: int, l0: float, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]`` (unit rows), ``b_dec [d_in]``: a canon-pl
    initialisation whose encoder bias lets ``l0`` latents per token fire on ``x [batch, d_in]``."""
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="relu")).to(x.device)
    with torch.no_grad():
        pre = (x @ sae.W_enc).flatten()
        cut = pre.topk(int(l0 * x.shape[0])).values[-1]
        return {"W_enc": sae.W_enc.detach().clone(), "b_enc": torch.full((d_sae,), -float(cut), device=x.device),
                "W_dec": sae.W_dec.detach().clone(), "b_dec": torch.zeros(d_in, device=x.device)}


def canon_step_fn(weights: dict[str, torch.Tensor], kernel: str, l1_coefficient: float = 5.0):
    d_in, d_sae = weights["W_enc"].shape
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="relu", kernel=kernel, aux_coefficient=0.0,
                              l1_coefficient=l1_coefficient))
    sae = sae.to(weights["W_enc"].device)
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.99))

    def step(x: torch.Tensor) -> None:
        out = sae.training_forward(x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()

    return step, lambda x: sae.encode(x)


def saelens_step_fn(weights: dict[str, torch.Tensor], l1_coefficient: float = 5.0):
    """SAELens's standard training SAE, stepped as ``SAETrainer._train_step`` does."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    d_in, d_sae = weights["W_enc"].shape
    device = weights["W_enc"].device
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=l1_coefficient,
                                                        device=str(device)))
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.99))
    since_fired = torch.zeros(d_sae, device=device)

    def step(x: torch.Tensor) -> None:
        sae.train()
        out = sae.training_forward_pass(step_input=TrainStepInput(
            sae_in=x, coefficients={"l1": l1_coefficient}, dead_neuron_mask=None, n_training_steps=0,
            is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().float()
            since_fired.add_(1)
            since_fired[fired.sum(-2).bool()] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step, lambda x: sae.encode(x)


def dictionary_learning_step_fn(weights: dict[str, torch.Tensor], l1_penalty: float = 5.0):
    """dictionary_learning's ``StandardTrainer.update`` (Towards Monosemanticity: unit decoder columns)."""
    from dictionary_learning.trainers.standard import StandardTrainer

    d_in, d_sae = weights["W_enc"].shape
    device = weights["W_enc"].device
    trainer = StandardTrainer(steps=10_000, activation_dim=d_in, dict_size=d_sae, layer=0, lm_name="benchmark",
                              lr=3e-4, l1_penalty=l1_penalty, warmup_steps=1, sparsity_warmup_steps=None,
                              device=str(device))
    ae = trainer.ae
    with torch.no_grad():
        ae.encoder.weight.copy_(weights["W_enc"].T)
        ae.encoder.bias.copy_(weights["b_enc"])
        ae.decoder.weight.copy_(weights["W_dec"].T)
        ae.bias.copy_(weights["b_dec"])
    calls = iter(range(1, 1 << 30))

    def step(x: torch.Tensor) -> None:
        trainer.update(next(calls), x)

    return step, lambda x: ae.encode(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=9216)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--l0", type=float, default=40.0)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="small shape and few iterations (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.d_sae, args.batch, args.l0, args.iters = 64, 512, 256, 8.0, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=device)
    weights = shared_weights(args.d_in, args.d_sae, args.l0, x)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"cpu={platform.processor() or platform.machine()}")
    print(f"shape: d_in={args.d_in} d_sae={args.d_sae} batch={args.batch} L0 about {args.l0:g} fp32")
    steps = {
        "canon-pl ReLU + L1 step, sparse kernel": lambda: canon_step_fn(weights, "sparse"),
        "canon-pl ReLU + L1 step, dense kernel": lambda: canon_step_fn(weights, "dense"),
        "SAELens standard (ReLU) training SAE step": lambda: saelens_step_fn(weights),
        "dictionary_learning StandardTrainer.update": lambda: dictionary_learning_step_fn(weights),
    }
    results: dict[str, float] = {}
    for name, make in steps.items():
        try:
            step, encode = make()
        except ImportError as err:
            print(f"{name:45s} skipped ({err.name} not installed: make bench)")
            continue
        results[name] = tokens_per_second(step, x, warmup=2, iters=args.iters)
        with torch.no_grad():  # after the timed steps, on the benchmark batch
            l0 = float((encode(x) > 0).sum(dim=-1).float().mean())
        print(f"{name:45s} {results[name]:12,.0f} tokens/s   L0 after the steps {l0:6.1f}")
    limit = tokens_per_second(matmul_fn(args.d_in, args.d_sae, device), x, warmup=2, iters=args.iters)
    print(f"{'one-matmul limit (encoder forward only)':45s} {limit:12,.0f} tokens/s")
    ours = results["canon-pl ReLU + L1 step, sparse kernel"]
    print(f"canon-pl sparse ReLU / one-matmul limit: {ours / limit:.3f} (goal >= 0.5)")
    print(f"canon-pl sparse ReLU / canon-pl dense ReLU: {ours / results['canon-pl ReLU + L1 step, dense kernel']:.3f}")
    peers = {name: value for name, value in results.items() if not name.startswith("canon-pl")}
    if peers:
        faster = max(peers, key=peers.get)
        print(f"faster peer: {faster}")
        print(f"ratio: {ours / peers[faster]:.3f}")
    else:
        print(f"ratio: {ours / results['canon-pl ReLU + L1 step, dense kernel']:.3f}")


if __name__ == "__main__":
    main()
