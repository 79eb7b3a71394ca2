"""The statistics pass against capture alone, on the bundled model, measured in one run.

Both arms read the same held-out contexts of the Python docs (or pydoc-topics) at layer 6 of SmolLM2 with early stop;
the statistics arm also runs the five family widths (576 x {2, 4, 8, 16, 32} latents, random BatchTopK SAEs whose
threshold gives L0 = 32, the same cost as trained ones) through ``collect_statistics`` (top-10 windows, 20 samples, histograms).
Also measured in the same run: capture plus the five encoders' forward alone (``pre_activations``: the matmuls any
statistics pass must pay, so its tokens/s bound the pass from above), and with ``--profile`` the pass's own time by
operator (torch.profiler, self CPU time), to say where the rest goes.
Ends with ``ratio: <statistics tokens/s / capture tokens/s>`` (goal >= 0.5: the LM forward should dominate).
Usage: ``python benchmarks/bench_stats.py [--contexts 128] [--profile]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from itertools import islice
from pathlib import Path

import torch

from canon_pl.lm.source import ActivationSource, CaptureSettings
from canon_pl.sae import SAEConfig, build_sae
from canon_pl.stats import collect_statistics

WIDTHS = [576 * m for m in (2, 4, 8, 16, 32)]
HOOK = "model.layers.6"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=128)
    parser.add_argument("--per-forward", type=int, default=32)
    parser.add_argument("--widths", type=int, nargs="*", default=WIDTHS)
    parser.add_argument("--profile", action="store_true", help="the statistics pass's time by operator")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    text = "python-docs" if Path("/usr/share/doc/python3.11/html/_sources").is_dir() else "pydoc-topics"
    source = ActivationSource(CaptureSettings(hook_point=HOOK, text=text))  # what canon-pl stats captures with
    hooked = source.load()
    contexts = list(islice(source.contexts("val"), args.contexts))
    chunks = [torch.stack(contexts[i:i + args.per_forward]) for i in range(0, len(contexts), args.per_forward)]
    n_tokens = sum(c.numel() for c in chunks)
    with torch.inference_mode():
        sample = hooked.capture(chunks[0], HOOK).float().reshape(-1, 576)
    saes = {}
    for w in args.widths:  # random SAEs whose threshold gives L0 = 32 like the trained ones (firings drive the cost)
        sae = build_sae(SAEConfig(d_in=576, d_sae=w, architecture="batchtopk", k=32)).eval()
        with torch.no_grad():
            pre = sae.pre_activations(sample).flatten()
            sae.threshold.fill_(float(pre.topk(32 * sample.shape[0]).values[-1]))
            sae.threshold_initialized.fill_(True)
        saes[str(w)] = sae
    print(f"threads={torch.get_num_threads()} text={text} tokens={n_tokens} widths={args.widths}")

    def batches():
        for tokens in chunks:
            batch = source.capture(tokens)
            yield batch.tokens, batch.activations, batch.mask

    hooked.capture(chunks[0], HOOK)  # warm-up
    start = time.perf_counter()
    for _ in batches():
        pass
    capture = n_tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    with torch.inference_mode():
        for _, activations, _ in batches():
            for sae in saes.values():
                sae.pre_activations(activations.reshape(-1, activations.shape[-1]))
    encoders = n_tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    collect_statistics(saes, batches())
    stats = n_tokens / (time.perf_counter() - start)
    print(f"capture only (nnsight, stop after layer 6): {capture:8,.0f} tokens/s")
    print(f"capture + the {len(saes)} encoders alone:          {encoders:8,.0f} tokens/s  (ceiling of any pass: "
          f"{encoders / capture:.3f} of capture)")
    print(f"statistics pass, {len(saes)} SAEs:               {stats:8,.0f} tokens/s")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            collect_statistics(saes, batches())
        events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        print("the pass by operator (self CPU time, share of the profiled pass):")
        for event in events[:14]:
            print(f"  {event.key:40s} {event.self_cpu_time_total / 1e6:7.2f} s  {event.self_cpu_time_total / total:6.1%}")
    print(f"ratio: {stats / capture:.3f}")


if __name__ == "__main__":
    main()
