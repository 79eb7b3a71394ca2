"""The one-to-one matching of two SAEs' decoder rows (``matched_consistency``): its memory and time, dense against
sparse, and the sparse matching of two 16k-latent SAEs (issue 43: "the matching of two 16k-latent SAEs runs in
bounded memory").

Each measurement runs in a fresh Python process so its peak resident memory (``ru_maxrss``) is its own; the peak
above the process's baseline after the decoders are built is what the matching added. The decoders are a trained-like
pair: B is A's rows with noise (cosine ~0.8 to their twin) for 60 % of them and fresh random rows for the rest, so the
matching has real work and a known share of pairs above 0.7.

1. dense (``linear_sum_assignment`` on the full cosine matrix) and sparse (each row's 64 nearest, a sparse bipartite
   matching) on 4,096 x 4,096 rows, with the agreement of their mean matched cosine;
2. sparse on 16,384 x 16,384 rows (dense would hold a 1 GiB float32 cosine matrix and scipy's float64 copy, and
   solve an O(n^3) assignment).

Ends with ``ratio: <sparse peak / dense peak at 4,096>``.
Usage: ``python benchmarks/bench_matching.py [--d_in 576]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MEASURE = r"""
import json, resource, sys, time
import torch
from canon_pl.stitching.consistency import matched_consistency

n, d_in, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
g = torch.Generator().manual_seed(0)
a = torch.nn.functional.normalize(torch.randn(n, d_in, generator=g), dim=-1)
twin = torch.nn.functional.normalize(a + 0.75 / d_in ** 0.5 * torch.randn(n, d_in, generator=g), dim=-1)
fresh = torch.nn.functional.normalize(torch.randn(n, d_in, generator=g), dim=-1)
keep = (torch.rand(n, generator=g) < 0.6)[:, None]
b = torch.where(keep, twin, fresh)[torch.randperm(n, generator=g)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
limit = 0 if method == "sparse" else n * n
result = matched_consistency(a, b, dense_limit=limit)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "method": result["method"], "seconds": seconds, "added_mib": (peak - before) / 1024,
                  "mean_matched_cosine": result["mean_matched_cosine"], "shared_at_0.7": result["shared_at"]["0.7"],
                  "twins": float(keep.float().mean())}))
"""


def measure(n: int, d_in: int, method: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(n), str(d_in), method], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d_in", type=int, default=576)
    args = parser.parse_args()
    rows = [measure(4096, args.d_in, "dense"), measure(4096, args.d_in, "sparse"),
            measure(16384, args.d_in, "sparse")]
    print(f"{'rows':>7} {'method':>7} {'seconds':>8} {'added MiB':>10} {'mean cos':>9} {'>=0.7':>7} {'twins':>6}")
    for r in rows:
        print(f"{r['n']:>7} {r['method']:>7} {r['seconds']:>8.1f} {r['added_mib']:>10.0f} "
              f"{r['mean_matched_cosine']:>9.4f} {r['shared_at_0.7']:>7.3f} {r['twins']:>6.3f}")
    dense, sparse = rows[0], rows[1]
    print(f"4,096 rows: sparse agrees with dense on the mean matched cosine to "
          f"{abs(dense['mean_matched_cosine'] - sparse['mean_matched_cosine']):.2e} and on the share >= 0.7 to "
          f"{abs(dense['shared_at_0.7'] - sparse['shared_at_0.7']):.2e}")
    print(f"ratio: {sparse['added_mib'] / max(dense['added_mib'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
