"""Decoder-cosine matching of two SAEs: chunked (``match_latents``) against the naive full matrix, in one run.

Two random decoders (unit rows, d_in 768) stand in for SAEs of 98304 and 49152 latents, the paper's GPT-2 sizes.
Each measurement runs in its own process so its peak memory (max RSS) is its own. The naive version builds the
whole ``[d_large, d_small]`` cosine matrix (19 GB in fp32 at full size, so it is measured at a size that fits);
the chunked one is measured at that size too, for the ratio, and at full size.
Ends with ``ratio: <naive time / chunked time at the size where both fit>`` (>= 1: chunking costs no speed).
Usage: ``python benchmarks/bench_stitch.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch
import torch.nn.functional as F

from canon_pl.stitching import decoder_cosine_matrix, match_latents


def decoders(d_small: int, d_large: int, d_in: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    small = F.normalize(torch.randn(d_small, d_in, generator=g), dim=-1).to(device)
    large = F.normalize(torch.randn(d_large, d_in, generator=g), dim=-1).to(device)
    return small, large


def naive(small: torch.Tensor, large: torch.Tensor, tau: float) -> int:
    full = decoder_cosine_matrix(large, small)
    full.max(dim=1)
    full.max(dim=0)
    return int((full >= tau).sum())


def chunked(small: torch.Tensor, large: torch.Tensor, tau: float) -> int:
    return match_latents(small, large, tau).edges_cos.numel()


def measure(kind: str, d_small: int, d_large: int, d_in: int, device: str, queue: mp.Queue) -> None:
    small, large = decoders(d_small, d_large, d_in, device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    edges = (naive if kind == "naive" else chunked)(small, large, 0.7)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024)
    queue.put((seconds, peak, edges))


def run(kind: str, d_small: int, d_large: int, d_in: int, device: str) -> tuple[float, float, int]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(kind, d_small, d_large, d_in, device, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    d_in = 768
    full = (4096, 8192) if args.quick else (49152, 98304)
    fits = (2048, 4096) if args.quick else (12288, 24576)
    print(f"device={device} threads={torch.get_num_threads()} d_in={d_in} tau=0.7 "
          f"(peak = extra {'GPU memory' if device == 'cuda' else 'max RSS'} beyond the two decoders)")
    t_naive, m_naive, e_naive = run("naive", *fits, d_in, device)
    t_chunk, m_chunk, e_chunk = run("chunked", *fits, d_in, device)
    assert e_naive == e_chunk, "chunked and naive matching disagree"
    print(f"naive full matrix  {fits[1]} x {fits[0]}: {t_naive:7.2f} s  peak {m_naive / 2**20:8.0f} MiB")
    print(f"chunked            {fits[1]} x {fits[0]}: {t_chunk:7.2f} s  peak {m_chunk / 2**20:8.0f} MiB")
    t_full, m_full, _ = run("chunked", *full, d_in, device)
    need = full[0] * full[1] * 4
    print(f"chunked            {full[1]} x {full[0]}: {t_full:7.2f} s  peak {m_full / 2**20:8.0f} MiB "
          f"(the naive matrix alone would need {need / 2**30:.1f} GiB)")
    print(f"memory: naive / chunked at {fits[1]} x {fits[0]}: {m_naive / max(m_chunk, 1):.1f}x")
    print(f"ratio: {t_naive / t_chunk:.3f}")


if __name__ == "__main__":
    main()
