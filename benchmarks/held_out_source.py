"""Is the study's text too narrow? The trained family measured on its own held-out Python docs and on English text
from another source that ships as a Debian package (Perl's POD documentation, perl-modules), side by side in one run.

For each source: held-out explained variance and L0 of every member, and for every adjacent pair the novel fraction
by definition with its cross-seed control (the same measurements the study reports). If the family only learned
the Python docs, EV falls on the other source; if the novel-vs-control gap is about width, it survives the change
of text.

Usage (after ``make main``):
    python benchmarks/held_out_source.py checkpoints/family_smollm2 --cache checkpoints/cache_smollm2_l6
Ends with ``ratio: <EV of the widest member on the other source / on the held-out Python docs>``.
"""

from __future__ import annotations

import argparse
import math

import torch

from canon_pl.io import load_family
from canon_pl.stitching import analyze_pair
from canon_pl.stitching.path import reconstruction
from canon_pl.training import ActivationDataModule
from canon_pl.training.analysis_data import cache_activations

OTHER_TEXT = "/usr/share/perl/5.36.0/**/*.pod"


def other_source_activations(text: str, n_tokens: int, model: str, hook_point: str) -> torch.Tensor:
    """``[n, d_in]`` activations of half of ``text``'s documents (every 2nd: the family never saw any of them),
    selected as in training (no BOS, no outliers)."""
    data = ActivationDataModule(model=model, hook_point=hook_point, text=text, val_every=2,
                                val_contexts=math.ceil(n_tokens / 127))
    data.load_model("cpu")
    x = torch.cat([batch["activations"] for batch in data.val_dataloader()])
    if x.shape[0] < n_tokens:
        print(f"note: {text} gave {x.shape[0]} tokens, fewer than the {n_tokens} asked for")
    return x[:n_tokens]


@torch.no_grad()
def explained_variance(sae, x: torch.Tensor) -> tuple[float, float]:
    """(EV, L0) of ``sae`` on raw ``x [N, d_in]``."""
    x_hat = reconstruction(sae, x)
    l0 = float(torch.cat([(sae.encode(c, inference=True) > 0).sum(-1) for c in x.split(8192)]).float().mean())
    return 1.0 - float((x - x_hat).square().sum() / (x - x.mean(0)).square().sum()), l0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the family run folder")
    parser.add_argument("--cache", required=True, help="the activation cache the family trained on (its held-out part)")
    parser.add_argument("--text", default=OTHER_TEXT, help=f"the other source (default {OTHER_TEXT})")
    parser.add_argument("--tokens", type=int, default=32768)
    ns = parser.parse_args()
    torch.manual_seed(0)
    family = load_family(ns.run)
    first = family.saes[family.widths[0]].cfg
    sources = {"Python docs (held out)": cache_activations(ns.cache, ns.tokens, first.d_in),
               "Perl POD (never seen)" if ns.text == OTHER_TEXT else ns.text:
                   other_source_activations(ns.text, ns.tokens, first.model_id, first.hook_point)}
    print(f"family {ns.run}; {ns.tokens} tokens per source\n")
    print("| source | member | EV | L0 |\n|---|---|---|---|")
    ev = {}
    for source, x in sources.items():
        for width, sae in sorted(family.saes.items()):
            ev[source, width] = explained_variance(sae, x)
            print(f"| {source} | {width} | {ev[source, width][0]:.3f} | {ev[source, width][1]:.1f} |", flush=True)
    print("\n| source | pair | novel (definition) | control (definition) | novel (cosine) | control (cosine) |\n"
          "|---|---|---|---|---|---|")
    for source, x in sources.items():
        for small, large in zip(family.widths, family.widths[1:]):
            found = family.control_of(large)
            result = analyze_pair(family.saes[small], family.saes[large], x, control=found[1] if found else None,
                                  control_name=found[0] if found else None)
            c, control = result.summary["classes"], result.summary.get("control") or {}
            print(f"| {source} | {small} → {large} | {c['novel_fraction_definition']:.3f} | "
                  f"{control.get('novel_fraction_definition', float('nan')):.3f} | {c['novel_fraction_cosine']:.3f} | "
                  f"{control.get('novel_fraction_cosine', float('nan')):.3f} |", flush=True)
    names, widest = list(sources), family.widths[-1]
    print(f"\nratio: {ev[names[1], widest][0] / ev[names[0], widest][0]:.3f}")


if __name__ == "__main__":
    main()
