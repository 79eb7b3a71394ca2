"""What a trained SAE holds of a known-answer world's truth, and each instrument's score against it (pure torch).

A latent *is* a true direction when its decoder row lies within cosine :data:`TRUTH_COSINE` of it: a true feature,
a family's parent, or a shared direction composite features are made of (the nearest of them all decides). From that
identity alone, never from the instruments:

- **truth class of an L-latent against S** (:func:`truth_classes`): *reconstruction* when S already holds what it
  is (the same direction, the parent of the child it is, every shared direction of the composite it is), *novel*
  when S holds nothing of it; anything between is *ambiguous*, a latent that is no true direction *unmatched* (both
  left out of the scores, and counted).
- **scores** (:func:`classification_scores`): precision and recall of an instrument's "novel" and
  "reconstruction" calls against the truth classes.
- **expected consistency** (:func:`expected_shared`): the share of one seed's latents whose true feature the other
  seed also holds, what a matched-consistency measure should read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.data.known_world import KIND_NAMES, KnownWorld

TRUTH_COSINE = 0.9
"""Decoder cosine at which a latent is taken to be a true feature (SynthSAEBench's recovery threshold)."""
NOVEL, RECONSTRUCTION, AMBIGUOUS, UNMATCHED = 0, 1, 2, 3
CLASS_NAMES = ("novel", "reconstruction", "ambiguous", "unmatched")


ATOMS = ("feature", "parent", "component")
"""What a latent can be: a true feature, a family's parent, or a shared direction composites are made of."""


@dataclass
class TruthIdentity:
    """Per latent ``[d_sae]``: ``atom`` (index into :data:`ATOMS`, -1 when the latent is no true direction),
    ``index`` (which feature, parent or component; -1 for none) and ``cosine`` (to the nearest of them all)."""

    atom: Tensor
    index: Tensor
    cosine: Tensor

    def of(self, atom: str) -> Tensor:
        """``[d_sae]``: the index of the ``atom`` each latent is, -1 where it is something else or nothing."""
        return torch.where(self.atom == ATOMS.index(atom), self.index, -1)

    @property
    def matched(self) -> Tensor:
        """``[d_sae]`` bool: the latent is a true direction."""
        return self.atom >= 0


def _atom_directions(world: KnownWorld) -> list[Tensor]:
    return [world.directions, world.parents, world.components]


@torch.no_grad()
def truth_identity(W_dec: Tensor, world: KnownWorld, threshold: float = TRUTH_COSINE) -> TruthIdentity:
    """Which true direction each decoder row ``W_dec [d_sae, d_in]`` is (the nearest feature, parent or shared
    component, when its cosine is at least ``threshold``)."""
    rows = F.normalize(W_dec.detach().float().cpu(), dim=-1)
    best = torch.full((rows.shape[0],), -2.0)
    atom = torch.full((rows.shape[0],), -1, dtype=torch.long)
    index = torch.full((rows.shape[0],), -1, dtype=torch.long)
    for code, directions in enumerate(_atom_directions(world)):
        if not directions.shape[0]:
            continue
        cos, nearest = (rows @ directions.T).max(dim=1)
        better = cos > best
        best, atom, index = torch.where(better, cos, best), torch.where(better, code, atom), torch.where(better, nearest, index)
    ok = best >= threshold
    return TruthIdentity(torch.where(ok, atom, -1), torch.where(ok, index, -1), best)


def _held(identity: TruthIdentity, atom: str, n: int) -> Tensor:
    held = torch.zeros(n, dtype=torch.bool)
    index = identity.of(atom)
    held[index[index >= 0]] = True
    return held


def held_directions(identity: TruthIdentity, world: KnownWorld) -> dict[str, Tensor]:
    """``{"feature": [n_features] bool, "parent": [n_families] bool, "component": [n_components] bool}``: the true
    directions some latent is."""
    sizes = (world.n_features, world.parents.shape[0], world.components.shape[0])
    return {atom: _held(identity, atom, n) for atom, n in zip(ATOMS, sizes)}


def truth_classes(small: TruthIdentity, large: TruthIdentity, world: KnownWorld) -> Tensor:
    """``[d_large]`` class codes (:data:`CLASS_NAMES`) of the large SAE's latents against the small SAE's.

    A latent that is feature ``f`` is *reconstruction* when S holds ``f``, ``f``'s parent (a child), or every shared
    direction ``f`` is made of (a composite); *novel* when S holds none of ``f``, its parent, its siblings, its
    shared directions. A parent is *reconstruction* when S holds it, *novel* when S holds none of its children; a
    shared direction is *reconstruction* when S holds it, *novel* when S holds no composite made with it. Anything
    between is *ambiguous*."""
    held = held_directions(small, world)
    composition = world.composition > 0  # [n_features, n_components]
    families = world.parents.shape[0]
    child_held = torch.zeros(families + 1, dtype=torch.bool)  # does S hold any of a family's children? (slot -1: none)
    child_held[world.family[held["feature"] & (world.family >= 0)]] = True
    parent_held = torch.cat([held["parent"], torch.zeros(1, dtype=torch.bool)])
    family = world.family % (families + 1)  # -1 -> the empty slot
    all_parts = (composition & ~held["component"]).sum(1) == 0
    any_part = (composition & held["component"]).any(1)
    is_composite = composition.any(1)
    feature_recon = held["feature"] | parent_held[family] | (is_composite & all_parts)
    feature_novel = ~held["feature"] & ~parent_held[family] & ~child_held[family] & ~any_part
    parent_recon, parent_novel = held["parent"], ~child_held[:families]
    component_recon = held["component"]
    component_novel = ~(composition & held["feature"][:, None]).any(0)
    out = torch.full(large.atom.shape, UNMATCHED, dtype=torch.long)
    for atom, recon, novel in (("feature", feature_recon, feature_novel), ("parent", parent_recon, parent_novel),
                               ("component", component_recon, component_novel)):
        index = large.of(atom)
        mine = index >= 0
        i = index.clamp_min(0)
        if not bool(mine.any()):
            continue
        code = torch.where(recon[i], RECONSTRUCTION, torch.where(novel[i], NOVEL, AMBIGUOUS))
        out[mine] = code[mine]
    return out


def precision_recall(predicted: Tensor, actual: Tensor) -> dict[str, float | None]:
    """Precision and recall of boolean calls ``predicted`` against ``actual`` (same shape; ``None`` where undefined)."""
    hits = int((predicted & actual).sum())
    n_pred, n_true = int(predicted.sum()), int(actual.sum())
    return {"precision": hits / n_pred if n_pred else None, "recall": hits / n_true if n_true else None,
            "n_called": n_pred, "n_true": n_true}


def classification_scores(called_novel: Tensor, truth: Tensor, among: Tensor | None = None) -> dict[str, Any]:
    """Scores of an instrument's calls ``called_novel [d_large]`` (True = novel, False = reconstruction) against
    ``truth [d_large]`` class codes, over the latents in ``among`` (default all) that are novel or reconstruction by
    the truth."""
    scored = (truth == NOVEL) | (truth == RECONSTRUCTION)
    if among is not None:
        scored = scored & among
    novel, call = truth[scored] == NOVEL, called_novel[scored]
    return {"n_scored": int(scored.sum()), "accuracy": float((call == novel).float().mean()) if scored.any() else None,
            "novel": precision_recall(call, novel), "reconstruction": precision_recall(~call, ~novel)}


def class_counts(truth: Tensor) -> dict[str, int]:
    return {name: int((truth == code).sum()) for code, name in enumerate(CLASS_NAMES)}


def recovery(identity: TruthIdentity, world: KnownWorld) -> dict[str, Any]:
    """How much of the truth an SAE holds: the share of true features it has a latent for (all and by kind), the
    share weighted by firing frequency, the shares of parents and shared directions it has a latent for, and the
    share of its latents that are a true direction."""
    held = held_directions(identity, world)
    features = held["feature"]
    by_kind = {name: float(features[world.kind == code].float().mean())
               for code, name in enumerate(KIND_NAMES) if bool((world.kind == code).any())}
    return {"features_held": float(features.float().mean()), "by_kind": by_kind,
            "frequency_weighted": float((features * world.frequency).sum() / world.frequency.sum()),
            "parents_held": float(held["parent"].float().mean()) if held["parent"].numel() else None,
            "components_held": float(held["component"].float().mean()) if held["component"].numel() else None,
            "latents_matched": float(identity.matched.float().mean())}


def expected_shared(a: TruthIdentity, b: TruthIdentity, world: KnownWorld) -> float:
    """The share of the smaller dictionary's latents that are a true direction the other also holds: what
    one-to-one matched consistency should find at a cosine two copies of one true direction pass."""
    small, large = (a, b) if a.atom.numel() <= b.atom.numel() else (b, a)
    held = held_directions(large, world)
    shared = torch.zeros(small.atom.shape, dtype=torch.bool)
    for atom in ATOMS:
        index = small.of(atom)
        shared |= (index >= 0) & held[atom][index.clamp_min(0)]
    return float(shared.float().mean())


__all__ = ["AMBIGUOUS", "ATOMS", "CLASS_NAMES", "NOVEL", "RECONSTRUCTION", "TRUTH_COSINE", "TruthIdentity",
           "UNMATCHED", "class_counts", "classification_scores", "expected_shared", "held_directions",
           "precision_recall", "recovery", "truth_classes", "truth_identity"]
