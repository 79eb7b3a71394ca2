"""What a trained SAE holds of a known-answer world's truth, and each instrument's score against it (pure torch).

A latent *is* a true direction when its decoder row lies within cosine :data:`TRUTH_COSINE` of it: a true feature,
a family's parent, or a shared direction composite features are made of (the nearest of them all decides). From that
identity alone, never from the instruments:

- **truth class of an L-latent against S** (:func:`truth_classes`): *reconstruction* when S already holds what it
  is (the same direction, the parent of the child it is, every shared direction of the composite it is), *novel*
  when no latent of S lies within cosine :data:`TOUCH_COSINE` of it; anything between is *ambiguous*, a latent that is no true direction *unmatched* (both
  left out of the scores, and counted).
- **scores** (:func:`classification_scores`): precision and recall of an instrument's "novel" and
  "reconstruction" calls against the truth classes.
- **expected consistency** (:func:`expected_shared`): among one seed's latents that are true directions, the share
  whose direction the other seed also holds, what a matched-consistency measure should read for them.
- **the planted units as stitching groups** (:func:`truth_group_edges`): S- and L-latents joined when they are parts
  of one planted unit (a family's parent and children; one plain or composite feature; one shared direction), so
  the stitching path can be walked on the groups the truth says it should swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.data.known_world import KIND_NAMES, KnownWorld

TRUTH_COSINE = 0.9
"""Decoder cosine at which a latent is taken to be a true direction (SynthSAEBench's recovery threshold)."""
TOUCH_COSINE = 0.5
"""Below this cosine to every latent of S, S holds nothing of a direction: a latent that is it is novel against S."""
UNIT_COSINE = 0.7
"""Decoder cosine at which a latent is read as part of its nearest true direction's planted unit for the truth's
stitching groups (:func:`truth_group_edges`): the study's own grouping threshold. At :data:`TRUTH_COSINE` the latents
of a family still learning (cosine 0.7-0.9 to their direction) were left alone as removals and insertions, and the
path on those groups rose to 1.14x its worse endpoint (the calibration family at 800 of its 2,000 steps, 32 -> 64;
1.00x at 0.7)."""
NOVEL, RECONSTRUCTION, AMBIGUOUS, UNMATCHED = 0, 1, 2, 3
CLASS_NAMES = ("novel", "reconstruction", "ambiguous", "unmatched")


ATOMS = ("feature", "parent", "component")
"""What a latent can be: a true feature, a family's parent, or a shared direction composites are made of."""


@dataclass
class TruthIdentity:
    """What an SAE holds of a world. Per latent ``[d_sae]``: ``atom`` (index into :data:`ATOMS`, -1 when the latent
    is no true direction), ``index`` (which feature, parent or component; -1 for none), ``cosine`` (to the nearest
    true direction). Per true direction: ``coverage`` (``{atom: [n] cosine of the SAE's nearest latent}``)."""

    atom: Tensor
    index: Tensor
    cosine: Tensor
    coverage: dict[str, Tensor]

    def of(self, atom: str) -> Tensor:
        """``[d_sae]``: the index of the ``atom`` each latent is, -1 where it is something else or nothing."""
        return torch.where(self.atom == ATOMS.index(atom), self.index, -1)

    @property
    def matched(self) -> Tensor:
        """``[d_sae]`` bool: the latent is a true direction."""
        return self.atom >= 0

    def holds(self, atom: str) -> Tensor:
        """``[n]`` bool per true direction of ``atom``: some latent is it (cosine >= :data:`TRUTH_COSINE`)."""
        return self.coverage[atom] >= TRUTH_COSINE

    def touches(self, atom: str) -> Tensor:
        """``[n]`` bool per true direction of ``atom``: some latent lies within cosine :data:`TOUCH_COSINE` of it."""
        return self.coverage[atom] >= TOUCH_COSINE


def _atom_directions(world: KnownWorld) -> dict[str, Tensor]:
    return {"feature": world.directions, "parent": world.parents, "component": world.components}


@torch.no_grad()
def truth_identity(W_dec: Tensor, world: KnownWorld, threshold: float = TRUTH_COSINE) -> TruthIdentity:
    """Which true direction each decoder row ``W_dec [d_sae, d_in]`` is (the nearest feature, parent or shared
    component, when its cosine is at least ``threshold``), and how near the SAE comes to each true direction."""
    rows = F.normalize(W_dec.detach().float().cpu(), dim=-1)
    best = torch.full((rows.shape[0],), -2.0)
    atom = torch.full((rows.shape[0],), -1, dtype=torch.long)
    index = torch.full((rows.shape[0],), -1, dtype=torch.long)
    coverage = {}
    for code, (name, directions) in enumerate(_atom_directions(world).items()):
        if not directions.shape[0]:
            coverage[name] = torch.zeros(0)
            continue
        cos = rows @ directions.T  # [d_sae, n]
        coverage[name] = cos.max(dim=0).values
        nearest_cos, nearest = cos.max(dim=1)
        better = nearest_cos > best
        best = torch.where(better, nearest_cos, best)
        atom, index = torch.where(better, code, atom), torch.where(better, nearest, index)
    ok = best >= threshold
    return TruthIdentity(torch.where(ok, atom, -1), torch.where(ok, index, -1), best, coverage)


def held_directions(identity: TruthIdentity) -> dict[str, Tensor]:
    """``{"feature": [n_features] bool, "parent": [n_families] bool, "component": [n_components] bool}``: the true
    directions some latent is."""
    return {atom: identity.holds(atom) for atom in ATOMS}


def truth_classes(small: TruthIdentity, large: TruthIdentity, world: KnownWorld) -> Tensor:
    """``[d_large]`` class codes (:data:`CLASS_NAMES`) of the large SAE's latents against the small SAE's.

    A latent that is a true direction is *reconstruction* when S holds that direction, or the parent of the child it
    is, or every shared direction of the composite it is; *novel* when S has no latent within cosine
    :data:`TOUCH_COSINE` of it (S can rebuild none of it: not its parent, a sibling or a part, which all lie
    nearer); *ambiguous* otherwise."""
    held = held_directions(small)
    families = world.parents.shape[0]
    parent_held = torch.cat([held["parent"], torch.zeros(1, dtype=torch.bool)])  # slot -1: no family
    composition = world.composition > 0  # [n_features, n_components]
    all_parts = composition.any(1) & ((composition & ~held["component"]).sum(1) == 0)
    recon = {"feature": held["feature"] | parent_held[world.family % (families + 1)] | all_parts,
             "parent": held["parent"], "component": held["component"]}
    out = torch.full(large.atom.shape, UNMATCHED, dtype=torch.long)
    for atom in ATOMS:
        index = large.of(atom)
        mine = index >= 0
        if not bool(mine.any()):
            continue
        i = index.clamp_min(0)
        code = torch.where(recon[atom][i], RECONSTRUCTION, torch.where(~small.touches(atom)[i], NOVEL, AMBIGUOUS))
        out[mine] = code[mine]
    return out


def family_grouping(small: TruthIdentity, large: TruthIdentity, world: KnownWorld, small_group: Tensor,
                    large_group: Tensor) -> dict[str, Any]:
    """Do the stitching groups match the planted families? Over the families whose parent S holds and of whose
    children L holds two or more: how many have all those children in the S parent's group (``small_group
    [d_small]``, ``large_group [d_large]``: each latent's group, :class:`canon_pl.stitching.groups.LatentGroups`)."""
    parents, features = small.of("parent"), large.of("feature")
    family_of_latent = torch.where(features >= 0, world.family[features.clamp_min(0)], -1)  # [d_large]
    checked = grouped = 0
    for s_latent in torch.nonzero(parents >= 0).flatten().tolist():
        mine = torch.nonzero(family_of_latent == int(parents[s_latent])).flatten()
        if mine.numel() < 2:
            continue
        checked += 1
        grouped += int(bool((large_group[mine] == small_group[s_latent]).all()))
    return {"families": checked, "grouped": grouped, "share": grouped / checked if checked else None}


def _unit_keys(identity: TruthIdentity, world: KnownWorld) -> list[tuple[str, int] | None]:
    """``[d_sae]`` the planted unit each latent is part of: ``("family", f)`` for family f's parent or a child of it,
    ``("feature", i)`` for a plain or composite feature, ``("component", j)`` for a shared direction; ``None`` for a
    latent that is no true direction. A composite is a unit of its own, not joined to its shared directions: S's
    shared direction serves every composite built on it, so a group joining them swaps out what the composites L
    lacks still need (measured on the calibration family: joined, the 64 -> 128 path rose to 1.15x its worse
    endpoint; alone, 1.00x)."""
    keys: list[tuple[str, int] | None] = []
    for atom, index in zip(identity.atom.tolist(), identity.index.tolist()):
        if atom < 0:
            keys.append(None)
        elif ATOMS[atom] == "feature":
            family = int(world.family[index])
            keys.append(("family", family) if family >= 0 else ("feature", index))
        else:
            keys.append(("family" if ATOMS[atom] == "parent" else "component", index))
    return keys


def truth_group_edges(small: TruthIdentity, large: TruthIdentity, world: KnownWorld) -> tuple[Tensor, Tensor]:
    """(S indices ``[n_edges]``, L indices ``[n_edges]``): every pair of an S-latent and an L-latent that are parts of
    one planted unit (:func:`_unit_keys`; identities read at :data:`UNIT_COSINE`), for
    :func:`canon_pl.stitching.groups.groups_from_edges`. Their connected components are the groups the truth says a
    path should swap: a family's parent in S with its children in L, each other true direction with itself; a latent
    that is no true direction stays alone."""
    holders: dict[tuple[str, int], list[int]] = {}
    for s_latent, key in enumerate(_unit_keys(small, world)):
        if key is not None:
            holders.setdefault(key, []).append(s_latent)
    edges = [(s, l) for l, key in enumerate(_unit_keys(large, world)) if key is not None
             for s in holders.get(key, ())]
    if not edges:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    pairs = torch.tensor(edges, dtype=torch.long)
    return pairs[:, 0], pairs[:, 1]


def latent_kinds(identity: TruthIdentity, world: KnownWorld) -> list[str]:
    """``[d_sae]`` names of what each latent is: a feature's planted kind (:data:`KIND_NAMES`), ``parent``,
    ``component`` or ``none``."""
    names = []
    for atom, index in zip(identity.atom.tolist(), identity.index.tolist()):
        names.append("none" if atom < 0 else KIND_NAMES[int(world.kind[index])] if ATOMS[atom] == "feature"
                     else ATOMS[atom])
    return names


def scores_by_kind(called_novel: Tensor, truth: Tensor, kinds: list[str], among: Tensor) -> dict[str, Any]:
    """:func:`classification_scores` of the latents of each planted kind (``kinds [d_large]`` from
    :func:`latent_kinds`) among ``among``; kinds with no scored latent are left out."""
    out = {}
    for kind in sorted(set(kinds) - {"none"}):
        mine = torch.tensor([k == kind for k in kinds]) & among
        scored = classification_scores(called_novel, truth, mine)
        if scored["n_scored"]:
            out[kind] = scored
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
    held = held_directions(identity)
    features = held["feature"]
    by_kind = {name: float(features[world.kind == code].float().mean())
               for code, name in enumerate(KIND_NAMES) if bool((world.kind == code).any())}
    return {"features_held": float(features.float().mean()), "by_kind": by_kind,
            "frequency_weighted": float((features * world.frequency).sum() / world.frequency.sum()),
            "parents_held": float(held["parent"].float().mean()) if held["parent"].numel() else None,
            "components_held": float(held["component"].float().mean()) if held["component"].numel() else None,
            "latents_matched": float(identity.matched.float().mean())}


def expected_shared(a: TruthIdentity, b: TruthIdentity) -> float | None:
    """Among ``a``'s latents that are a true direction, the share whose direction ``b`` also holds: what matched
    consistency should find for them (``None`` when none of ``a``'s latents is a true direction)."""
    held = held_directions(b)
    shared = torch.zeros(a.atom.shape, dtype=torch.bool)
    for atom in ATOMS:
        index = a.of(atom)
        if held[atom].numel():  # the null world has no parents or shared directions
            shared |= (index >= 0) & held[atom][index.clamp_min(0)]
    on_truth = a.matched
    return float(shared[on_truth].float().mean()) if bool(on_truth.any()) else None


__all__ = ["AMBIGUOUS", "ATOMS", "CLASS_NAMES", "NOVEL", "RECONSTRUCTION", "TOUCH_COSINE", "TRUTH_COSINE", "TruthIdentity",
           "UNIT_COSINE", "UNMATCHED", "class_counts", "classification_scores", "expected_shared", "family_grouping", "held_directions",
           "latent_kinds", "scores_by_kind",
           "precision_recall", "recovery", "truth_classes", "truth_group_edges", "truth_identity"]
