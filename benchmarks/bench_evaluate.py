"""What `canon-pl evaluate` and the statistics pass's co-firing counts cost, side by side with what they add to.

1. SAEBench's core metrics (``core_metrics`` + ``weight_metrics``) per member against the plain held-out EV pass the
   validation already makes (``explained_variance_of``), on the same activations and SAEs.
2. The co-firing counts of a member against its seed control (``CoFiring.update``) against that member's encoder
   pass alone (``pre_activations`` + ``select``), per batch of tokens.

The SAEs are the study's family when ``--family`` names one (its held-out cache with ``--cache``), else random
BatchTopK SAEs of the study's widths on Gaussian activations (d_in 576). Ends with ``ratio: <core metrics time / EV
pass time>``.
Usage: ``python benchmarks/bench_evaluate.py [--family checkpoints/family_smollm2 --cache checkpoints/cache_smollm2_l6]
[--tokens 65536]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from canon_pl.io import load_sae
from canon_pl.metrics.core import weight_metrics
from canon_pl.metrics.reconstruction import explained_variance_of
from canon_pl.sae import SAEConfig, build_sae
from canon_pl.stats.cofiring import CoFiring
from canon_pl.stats.collect import sparse_codes_at
from canon_pl.study.evaluate import core_metrics, saes_of
from canon_pl.training.analysis_data import cache_activations


def study_or_random(family: str | None, cache: str | None, tokens: int) -> tuple[dict, torch.Tensor]:
    if family:
        saes = {e.folder.name: load_sae(e.folder) for e in saes_of(Path(family))}
        first = next(iter(saes.values()))
        return saes, cache_activations(cache, tokens, first.d_in, first.cfg.model_id, first.cfg.hook_point)
    torch.manual_seed(0)
    x = torch.randn(tokens, 576)
    saes = {}
    for name, width in (("576", 576), ("1152", 1152), ("1152_seed1", 1152), ("2304", 2304), ("2304_seed1", 2304)):
        sae = build_sae(SAEConfig(d_in=576, d_sae=width, architecture="batchtopk", k=32))
        with torch.no_grad():  # the threshold at which ~32 latents fire per token, as in the study
            pre = sae.pre_activations(x[:1024])
            sae.threshold.fill_(float(pre.flatten().kthvalue(pre.numel() - 32 * 1024).values))
            sae.threshold_initialized.fill_(True)
        saes[name] = sae.eval()
    return saes, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family")
    parser.add_argument("--cache")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=4096, help="tokens per co-firing update (a stats batch)")
    args = parser.parse_args()
    saes, x = study_or_random(args.family, args.cache, args.tokens)
    print(f"{len(saes)} SAEs ({', '.join(saes)}) on {x.shape[0]:,} tokens, torch threads {torch.get_num_threads()}")
    with torch.no_grad():
        start = time.perf_counter()
        for sae in saes.values():
            explained_variance_of(sae, x)
        ev_pass = time.perf_counter() - start
        start = time.perf_counter()
        for sae in saes.values():
            core_metrics(sae, x)
            weight_metrics(sae.W_enc, sae.W_dec)
        core = time.perf_counter() - start
    print(f"held-out EV pass (validation's):   {ev_pass:7.2f} s")
    print(f"SAEBench core metrics + weights:  {core:7.2f} s")
    width = max(sae.d_sae for sae in saes.values())
    names = sorted(name for name, sae in saes.items() if sae.d_sae == width)  # the widest member, then its seeds
    member, other = names[0], names[-1]
    a, b = saes[member], saes[other]
    keep = torch.ones(args.batch, dtype=torch.bool)
    encode = cofire = 0.0
    counts = CoFiring(a.d_sae, b.d_sae)
    with torch.no_grad():
        for batch in x.split(args.batch):
            if batch.shape[0] != args.batch:
                break
            start = time.perf_counter()
            rows, cols, _ = sparse_codes_at(a, batch, keep)
            encode += time.perf_counter() - start
            codes_b = sparse_codes_at(b, batch, keep)[:2]
            start = time.perf_counter()
            counts.update(args.batch, (rows, cols), codes_b)
            cofire += time.perf_counter() - start
    print(f"{member} encoder pass:            {encode:7.2f} s")
    print(f"co-firing counts {member} x {other}: {cofire:7.2f} s ({cofire / max(encode, 1e-9):.2f}x its encoder pass)")
    print(f"ratio: {core / ev_pass:.3f}")


if __name__ == "__main__":
    main()
