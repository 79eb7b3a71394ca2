"""The SAE training step's achieved FLOP/s as a fraction of the device's peak.

One canon-pl BatchTopK step (``training_forward`` + backward + Adam + decoder constraint, sparse kernel, fp32 weights
with TF32 matmuls on GPUs) at d_in 768 (GPT-2 small) for d_sae 32768 and 98304, batch 4096, k 32; its FLOPs from
``canon_pl.metrics.sae_training_flops`` (checked against torch's FlopCounterMode in the tests). The peak is Lightning's
table (``get_available_flops``: TF32 dense for fp32 under ``high`` matmul precision). On a CPU the peak is unknown;
the encoder matmul alone stands in for it (the achievable limit), and the line says so.
Ends with ``ratio: <achieved / peak at d_sae 32768>`` (goal >= 0.5 on a GPU).
Usage: ``python benchmarks/bench_step_mfu.py [--quick]``.
"""

from __future__ import annotations

import argparse
import platform

import torch
from bench_sae_step import canon_step_fn, matmul_fn, tokens_per_second

from canon_pl.metrics import sae_training_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--widths", type=int, nargs="+", default=[32768, 98304])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="small shapes, few iterations (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.widths, args.batch, args.iters = 64, [1024, 2048], 256, 2
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from lightning.fabric.utilities.throughput import get_available_flops

    peak = get_available_flops(device, torch.float32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device={device} ({name}) threads={torch.get_num_threads()} torch={torch.__version__} "
          f"peak={'%.1f TFLOP/s (TF32)' % (peak / 1e12) if peak else 'unknown'}")
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=device)
    fractions = []
    for d_sae in args.widths:
        flops = sae_training_flops(args.batch, args.d_in, d_sae, args.k, "batchtopk", "sparse")
        step = canon_step_fn(args.d_in, d_sae, args.k, device)
        tps = tokens_per_second(step, x, warmup=2, iters=args.iters)
        achieved = flops * tps / args.batch
        matmul_tps = tokens_per_second(matmul_fn(args.d_in, d_sae, device), x, warmup=2, iters=args.iters)
        matmul_flops = 2 * args.d_in * d_sae * matmul_tps
        reference, what = (peak, "peak") if peak else (matmul_flops, "encoder-matmul limit (CPU: peak unknown)")
        fractions.append(achieved / reference)
        print(f"d_sae={d_sae:6d}: {tps:12,.0f} tokens/s, {achieved / 1e12:8.3f} TFLOP/s = {achieved / reference:.3f} "
              f"of {what}; encoder matmul alone {matmul_flops / 1e12:.3f} TFLOP/s")
        del step
    print(f"ratio: {fractions[0]:.3f}")


if __name__ == "__main__":
    main()
