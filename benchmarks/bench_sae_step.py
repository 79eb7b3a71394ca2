"""SAE training-step throughput, measured side by side in one run (docs/design.md section 5).

Shape: d_in 576, d_sae 9216, batch 4096, k 32, fp32. Prints tokens/s for
  - canon-pl's BatchTopK and TopK steps (``training_forward`` + backward + Adam + decoder constraint),
  - a straightforward dense PyTorch BatchTopK step (the formula of docs/design.md 1.1 written out densely),
  - EleutherAI sparsify's own TopK step (``SparseCoder.forward`` + backward + Adam + its decoder constraint), when
    ``eai-sparsify`` is installed (``pip install -e '.[bench]'``),
  - the same steps with AuxK active and half the latents dead (k_aux = d_in / 2 for both),
  - the one-matmul limit: the forward encoder matmul ``[batch, d_in] @ [d_in, d_sae]`` alone,
and ends with ``ratio: <canon-pl BatchTopK / sparsify TopK>`` (``/ dense`` when sparsify is missing).
Usage: ``python benchmarks/bench_sae_step.py [--quick]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from canon_pl.sae import SAEConfig, build_sae


def dense_step_fn(d_in: int, d_sae: int, k: int, device: torch.device):
    """The naive reference: dense encoder, dense flat top-k mask, dense decoder, dense backward."""
    W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, device=device) / d_in**0.5)
    b_enc = torch.nn.Parameter(torch.zeros(d_sae, device=device))
    W_dec = torch.nn.Parameter(F.normalize(W_enc.detach().T.clone(), dim=-1))
    b_dec = torch.nn.Parameter(torch.zeros(d_in, device=device))
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=3e-4, betas=(0.9, 0.99))

    def step(x: torch.Tensor) -> None:
        pre = torch.relu((x - b_dec) @ W_enc + b_enc)
        flat = pre.flatten()
        mask = torch.zeros_like(flat)
        mask[flat.topk(k * x.shape[0]).indices] = 1.0
        f = (flat * mask).view_as(pre)
        loss = F.mse_loss(f @ W_dec + b_dec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            unit = F.normalize(W_dec, dim=-1)
            W_dec.grad -= (W_dec.grad * unit).sum(-1, keepdim=True) * unit
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=-1, keepdim=True))

    return step


def canon_step_fn(d_in: int, d_sae: int, k: int, device: torch.device, architecture: str = "batchtopk",
                  auxk: bool = False):
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k, architecture=architecture, aux_coefficient=1 / 32 if auxk else 0.0,
                    aux_k=d_in // 2, dead_tokens_threshold=2**40)
    sae = build_sae(cfg).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.99))

    def step(x: torch.Tensor) -> None:
        if auxk:
            sae.tokens_since_fired[::2] = 2**41  # half the latents dead, every step
        loss = sae.training_forward(x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()

    return step


def sparsify_step_fn(d_in: int, d_sae: int, k: int, device: torch.device, auxk: bool = False):
    """EleutherAI sparsify's training step as its trainer runs it: FVU (+ AuxK / 32), its decoder constraint."""
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.99))
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    dead[::2] = auxk

    def step(x: torch.Tensor) -> None:
        out = sae(x, dead_mask=dead if auxk else None)
        loss = out.fvu + out.auxk_loss / 32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()

    return step


def matmul_fn(d_in: int, d_sae: int, device: torch.device):
    W = torch.randn(d_in, d_sae, device=device)

    def step(x: torch.Tensor) -> None:
        x @ W

    return step


def tokens_per_second(step, x: torch.Tensor, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return x.shape[0] * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=9216)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="small shape and few iterations (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.d_sae, args.batch, args.iters = 64, 512, 256, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} cpu={platform.processor() or platform.machine()}")
    print(f"shape: d_in={args.d_in} d_sae={args.d_sae} batch={args.batch} k={args.k} fp32")
    shape = (args.d_in, args.d_sae, args.k, device)
    steps = {
        "dense PyTorch BatchTopK step": lambda: dense_step_fn(*shape),
        "canon-pl BatchTopK step": lambda: canon_step_fn(*shape),
        "canon-pl TopK step": lambda: canon_step_fn(*shape, architecture="topk"),
        "sparsify TopK step": lambda: sparsify_step_fn(*shape),
        "canon-pl BatchTopK step, AuxK (half dead)": lambda: canon_step_fn(*shape, auxk=True),
        "sparsify TopK step, AuxK (half dead)": lambda: sparsify_step_fn(*shape, auxk=True),
        "one-matmul limit (encoder forward only)": lambda: matmul_fn(args.d_in, args.d_sae, device),
    }
    results = {}
    for name, make in steps.items():
        try:
            step = make()
        except ImportError:
            print(f"{name:45s} skipped (pip install -e '.[bench]' for eai-sparsify)")
            continue
        results[name] = tokens_per_second(step, x, warmup=2, iters=args.iters)
        print(f"{name:45s} {results[name]:12,.0f} tokens/s")
    ours = results["canon-pl BatchTopK step"]
    limit = results["one-matmul limit (encoder forward only)"]
    print(f"canon-pl BatchTopK / one-matmul limit: {ours / limit:.3f} (goal >= 0.3)")
    print(f"canon-pl BatchTopK / dense step: {ours / results['dense PyTorch BatchTopK step']:.3f}")
    if "sparsify TopK step" in results:
        aux = results["canon-pl BatchTopK step, AuxK (half dead)"] / results["sparsify TopK step, AuxK (half dead)"]
        print(f"with AuxK, canon-pl / sparsify: {aux:.3f} (goal >= 1.2)")
        print(f"ratio: {ours / results['sparsify TopK step']:.3f}")
    else:
        print(f"ratio: {ours / results['dense PyTorch BatchTopK step']:.3f}")


if __name__ == "__main__":
    main()
