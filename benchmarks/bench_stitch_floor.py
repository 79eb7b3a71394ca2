"""The stitch stage against its floor, the encoder passes it needs, measured in one run on the same SAEs and tokens.

1. The stage: every adjacent pair of the family through ``analyze_pair`` as ``canon-pl stitch <family> --granularity``
   runs it in ``make main`` (each pair with its cross-seed control, the control's path and replicate, the per-chunk
   spread, matched consistency, both granularity curves), with the time of each named step kept apart (exclusive
   time: a step's own, its inner named steps not counted twice).
2. The floor: each SAE of the family (members and seed controls) encodes the same held-out activations once and
   decodes its codes (``sparse_codes`` and ``reconstruction``, as the analysis reads them): every classification,
   path and control reads these codes, so no stitching of these SAEs can cost less.

The SAEs are the study's family when ``--family`` names one (held-out activations from ``--cache``), else random
BatchTopK SAEs of the study's widths (576 / 1152 / 2304 with seed controls, k 32) on Gaussian activations.
Ends with ``ratio: <floor time / stage time>``.
Usage: ``python benchmarks/bench_stitch_floor.py --family checkpoints/family_smollm2 --cache
checkpoints/cache_smollm2_l6 [--tokens 131072]`` (``--quick`` for a smoke run on random SAEs).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from canon_pl.sae import SAEConfig, build_sae
from canon_pl.sae.codes import reconstruction, sparse_codes
from canon_pl.stitching import analysis

STEPS = ("match_latents", "latent_groups", "sparse_codes", "reconstruction", "classify_latents", "stitching_path",
         "definition_chunk_spread", "consistency_summary", "granularity_curve", "in_encoder_space")
"""The named steps of ``analyze_pair`` (names in ``canon_pl.stitching.analysis``) whose time is kept apart."""


class StepTimer:
    """Exclusive wall time per wrapped function: a step's time without the named steps it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._inner: list[float] = []

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._inner.pop()
                self.seconds[name] += elapsed - inner
                self.calls[name] += 1
                if self._inner:
                    self._inner[-1] += elapsed
        return timed


def study_pairs(family: str, cache: str, tokens: int) -> tuple[list[dict[str, Any]], torch.Tensor, list[Any]]:
    """The family's pairs as ``canon-pl stitch`` builds them, its held-out activations ``[tokens, d_in]`` and every
    SAE of it (members and seed controls)."""
    from canon_pl.io import training_data
    from canon_pl.study.stitch import stitch_pairs
    from canon_pl.training.analysis_data import analysis_activations

    pairs, _ = stitch_pairs(family, None, None, None, "cpu")
    x, _, _ = analysis_activations(cache, tokens, pairs[0]["small"], device="cpu",
                                   provenance=training_data(pairs[0]["names"][0]))
    return pairs, x, every_sae(pairs)


def random_pairs(tokens: int, widths: tuple[int, ...], k: int) -> tuple[list[dict[str, Any]], torch.Tensor, list[Any]]:
    """Random BatchTopK SAEs of ``widths`` (each wider one with a seed control) whose thresholds fire ~``k`` latents
    a token, on Gaussian activations ``[tokens, 576]``."""
    torch.manual_seed(0)
    x = torch.randn(tokens, 576)

    def sae(width: int) -> Any:
        built = build_sae(SAEConfig(d_in=576, d_sae=width, architecture="batchtopk", k=k))
        with torch.no_grad():
            pre = built.pre_activations(x[:1024])
            built.threshold.fill_(float(pre.flatten().kthvalue(pre.numel() - k * pre.shape[0]).values))
            built.threshold_initialized.fill_(True)
        return built.eval()

    members = {width: sae(width) for width in widths}
    pairs = [{"small": members[a], "large": members[b], "control": sae(b), "names": (str(a), str(b)),
              "control_name": f"{b}_seed1"} for a, b in zip(widths, widths[1:])]
    return pairs, x, every_sae(pairs)


def every_sae(pairs: list[dict[str, Any]]) -> list[Any]:
    """Each SAE of the pairs once (members and controls)."""
    seen: dict[int, Any] = {}
    for pair in pairs:
        for key in ("small", "large", "control"):
            if pair.get(key) is not None:
                seen.setdefault(id(pair[key]), pair[key])
    return list(seen.values())


def floor_seconds(saes: list[Any], x: torch.Tensor) -> float:
    """Each SAE's codes and reconstruction of ``x [N, d_in]`` once."""
    start = time.perf_counter()
    with torch.no_grad():
        for sae in saes:
            codes = sparse_codes(sae, x)
            reconstruction(sae, x)
            del codes
    return time.perf_counter() - start


def stage_seconds(pairs: list[dict[str, Any]], x: torch.Tensor, granularity: bool,
                  timer: StepTimer) -> float:
    """Every pair through ``analyze_pair`` as the stitch stage runs it, the named steps timed by ``timer``."""
    originals = {name: getattr(analysis, name) for name in STEPS}
    for name, function in originals.items():
        setattr(analysis, name, timer.wrap(name, function))
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for pair in pairs:
                analysis.analyze_pair(activations=x, granularity=granularity, **pair)
    finally:
        for name, function in originals.items():
            setattr(analysis, name, function)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family")
    parser.add_argument("--cache")
    parser.add_argument("--tokens", type=int, default=131_072)
    parser.add_argument("--no-granularity", action="store_true", help="leave out the granularity curves")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 256 tokens of narrow random SAEs")
    args = parser.parse_args()
    if args.family:
        pairs, x, saes = study_pairs(args.family, args.cache, args.tokens)
    else:
        widths = (32, 64, 128) if args.quick else (576, 1152, 2304)
        pairs, x, saes = random_pairs(256 if args.quick else args.tokens, widths, 4 if args.quick else 32)
    print(f"{len(saes)} SAEs in {len(pairs)} pairs ({Path(args.family).name if args.family else 'random'}) on "
          f"{x.shape[0]:,} tokens, torch threads {torch.get_num_threads()}")
    floor = floor_seconds(saes, x)
    timer = StepTimer()
    stage = stage_seconds(pairs, x, not args.no_granularity, timer)
    print(f"\n{'step':<26}{'calls':>7}{'seconds':>10}{'share':>8}")
    rest = stage - sum(timer.seconds.values())
    for name, seconds in sorted(timer.seconds.items(), key=lambda item: -item[1]):
        print(f"{name:<26}{timer.calls[name]:>7}{seconds:>10.1f}{seconds / stage:>8.1%}")
    print(f"{'(the rest)':<26}{'':>7}{rest:>10.1f}{rest / stage:>8.1%}")
    print(f"\nthe stage (analyze_pair on every pair): {stage:.1f} s")
    print(f"the floor (each SAE's codes and reconstruction once): {floor:.1f} s")
    print(f"ratio: {floor / stage:.3f}")


if __name__ == "__main__":
    main()
