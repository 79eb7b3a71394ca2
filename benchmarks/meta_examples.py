"""Example decompositions of a meta-SAE analysis, each latent shown by the tokens its direction promotes most
through the language model's unembedding (a logit-lens reading; the statistics issue will add top contexts).

Usage: ``python benchmarks/meta_examples.py --meta checkpoints/meta_sae_smollm2 --base checkpoints/family_smollm2
--width 18432 [--examples 3]``. Prints, for the base latents with the most meta-latents among frequently used ones,
each latent's top promoted tokens and those of its meta-latents with their activations.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from canon_pl.io import load_sae
from canon_pl.lm import load_causal_lm
from canon_pl.meta import read_meta_analysis


def top_tokens(direction: torch.Tensor, unembed: torch.Tensor, tokenizer, n: int = 6) -> str:
    ids = (unembed @ F.normalize(direction, dim=0)).topk(n).indices.tolist()
    return " ".join(repr(tokenizer.decode([i]).strip() or tokenizer.decode([i])) for i in ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--width", type=int)
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    analysis = read_meta_analysis(args.meta, arrays=True)
    decomposition = analysis["decomposition"]
    base = load_sae(args.base, width=args.width)
    meta = load_sae(args.meta)
    lm = load_causal_lm(base.cfg.model_id or "smollm2-135m")
    unembed = lm.model.lm_head.weight.detach().float()
    per_latent = decomposition.meta_per_latent()
    candidates = torch.nonzero(per_latent >= min(3, int(per_latent.max())), as_tuple=True)[0]
    g = torch.Generator().manual_seed(args.seed)
    chosen = candidates[torch.randperm(candidates.numel(), generator=g)[: args.examples]].tolist()
    print(f"meta-SAE {args.meta}: {analysis['n_meta']} meta-latents over {analysis['n_base']} latents, "
          f"FVE {analysis['fve']:.3f}, {analysis['mean_meta_per_latent']:.2f} meta-latents per latent")
    for j in chosen:
        print(f"\nlatent {j}: {top_tokens(base.W_dec[j].detach(), unembed, lm.tokenizer)}")
        for m, value in decomposition.of_latent(j):
            users = int((decomposition.meta == m).sum())
            print(f"  meta {m:5d} ({value:.2f}; used by {users} latents): "
                  f"{top_tokens(meta.W_dec[m].detach(), unembed, lm.tokenizer)}")


if __name__ == "__main__":
    main()
