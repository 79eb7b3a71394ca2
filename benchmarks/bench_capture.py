"""Activation capture throughput on the bundled SmolLM2, measured side by side in one run (docs/design.md section 5).

Times, on the same contexts:
  - canon-pl's nnsight capture that stops after the hook layer (``HookedLanguageModel.capture``),
  - a plain PyTorch forward hook that stops the forward by raising after the hook layer,
  - a full forward pass (every layer, logits included).
Goals: nnsight-with-stop >= 0.95x the plain hook with stop, and >= 0.8 x (layers / (hook layer + 1)) x the full
forward. Ends with ``ratio: <nnsight-with-stop / plain-hook-with-stop>``.
Usage: ``python benchmarks/bench_capture.py [--layer 6] [--contexts 32] [--iters 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from canon_pl.lm import HookedLanguageModel, load_causal_lm


class _Stop(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--contexts", type=int, default=32)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hooked = HookedLanguageModel(load_causal_lm("smollm2-135m", device=device))
    n_layers = hooked.loaded.n_layers
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(100, hooked.tokenizer.vocab_size, (args.contexts, args.context_length), generator=g)
    tokens[:, 0] = hooked.tokenizer.bos_token_id
    tokens = tokens.to(device)
    layer = hooked.model.model.layers[args.layer]

    def nnsight_stop() -> None:
        hooked.capture(tokens, f"model.layers.{args.layer}")

    def plain_hook_stop() -> None:
        store = {}

        def hook(module, inputs, output):
            store["acts"] = output
            raise _Stop

        handle = layer.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                hooked.model(tokens)
        except _Stop:
            pass
        finally:
            handle.remove()

    def full_forward() -> None:
        with torch.inference_mode():
            hooked.model(tokens)

    n_tokens = tokens.numel()
    rates = {}
    print(f"device={device} threads={torch.get_num_threads()} layer={args.layer}/{n_layers} "
          f"tokens/iter={n_tokens}")
    for name, fn in (("nnsight capture, stop after hook", nnsight_stop), ("plain hook, stop after hook", plain_hook_stop),
                     ("full forward", full_forward)):
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.iters):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        rates[name] = n_tokens * args.iters / (time.perf_counter() - start)
        print(f"{name:35s} {rates[name]:10,.0f} tokens/s")
    nn, plain, full = rates["nnsight capture, stop after hook"], rates["plain hook, stop after hook"], rates["full forward"]
    ideal = n_layers / (args.layer + 1)
    print(f"nnsight-stop / full forward: {nn / full:.2f} (goal >= 0.8 x {ideal:.2f} = {0.8 * ideal:.2f})")
    print(f"ratio: {nn / plain:.3f}")


if __name__ == "__main__":
    main()
