"""Probing and absorption scored against the planted hierarchies of a known-answer world (pure torch).

A planted family is a parent direction that only ever fires through one of its children (each child carries the
parent at cosine ``parent_cosine``). Per token its label is known: 1 where a child of the family fires, 0 elsewhere.
What an SAE holds of a family decides what the two instruments must report (:func:`family_states`):

- the SAE **holds the parent** (a latent within cosine 0.9 of it) and none of its children: one latent fires on every
  token of the family, so a 1-sparse probe on that latent separates the family's tokens and nothing is absorbed;
- the SAE **split** the family (it holds two or more children and not the parent): the parent's direction is carried
  by the child latents, so the 1-sparse probe's latent (one child) is silent where another child fires and that
  child's latent carries the direction: absorption by construction (Chanin et al. 2024).

:func:`score_hierarchy` runs :func:`canon_pl.metrics.probing.sparse_probes` and
:func:`canon_pl.metrics.absorption.absorption_per_task` (what ``canon-pl evaluate`` runs on text labels) on the
family labels of held-out tokens and averages each over the families in each state; :data:`HIERARCHY_RULES` says
what passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from canon_pl.calibration.truth import truth_identity
from canon_pl.data.known_world import KnownWorld

PARENT, SPLIT, OTHER = "parent held", "split", "other"

HIERARCHY_RULES = {
    "probe_parent_min": 0.9,
    "absorption_parent_max": 0.1,
    "absorption_split_min": 0.3,
}
"""Decided before the first run: on families whose parent the SAE holds, the 1-sparse probe's balanced accuracy at
least ``probe_parent_min`` and the absorption rate at most ``absorption_parent_max``; on families it split, the
absorption rate at least ``absorption_split_min`` (on average over the families in each state; a state with no
family is not scored)."""


def held_out_with_families(world: KnownWorld, n_tokens: int, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Held-out activations ``x [N, d_in]`` (batches -1, -2, ...: never trained on) and the family labels
    ``int8 [n_families, N]`` (1 where a child of the family fires in the token, else 0)."""
    xs, labels = [], []
    for i in range(max(n_tokens // batch_size, 1)):
        x, active = world.batch_with_truth(-1 - i, batch_size)
        label = torch.zeros(world.parents.shape[0], batch_size, dtype=torch.int8)
        family = world.family[active.feature]
        child = family >= 0
        label[family[child], active.token[child]] = 1
        xs.append(x)
        labels.append(label)
    return torch.cat(xs), torch.cat(labels, dim=1)


def family_states(W_dec: Tensor, world: KnownWorld) -> list[str]:
    """Per planted family, what the SAE with decoder ``W_dec [d_sae, d_in]`` holds of it: :data:`PARENT` (the parent,
    no child), :data:`SPLIT` (two or more children, not the parent) or :data:`OTHER`."""
    identity = truth_identity(W_dec, world)
    parents, features = identity.holds("parent"), identity.holds("feature")
    states = []
    for f in range(world.parents.shape[0]):
        children = int(features[world.family == f].sum())
        states.append(PARENT if bool(parents[f]) and children == 0 else
                      SPLIT if children >= 2 and not bool(parents[f]) else OTHER)
    return states


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_hierarchy(sae: Any, world: KnownWorld, x: Tensor, labels: Tensor) -> dict[str, Any]:
    """Probing and absorption of one SAE on the family labels (:func:`held_out_with_families`), per family and
    averaged per state, with the pass of :data:`HIERARCHY_RULES` (``None`` when no family is in a scored state)."""
    from canon_pl.metrics.absorption import absorption_per_task
    from canon_pl.metrics.probing import sae_encoder, sparse_probes

    states = family_states(sae.W_dec, world)
    tasks = {f"family {f}": labels[f] for f in range(labels.shape[0])}
    ks = (1, world.spec.children_per_family)
    with torch.no_grad():
        probes = sparse_probes(sae_encoder(sae), x, tasks, ks=ks)
        absorbed = absorption_per_task(sae, x, tasks, probes)
    per_family = []
    for f, state in enumerate(states):
        probe, absorb = probes[f"family {f}"], absorbed.get(f"family {f}") or {}
        per_family.append({"family": f, "state": state, "positive_share": probe.get("positive_share"),
                           "probe_accuracy": probe.get("top_k_accuracy"), "skipped": probe.get("skipped"),
                           "absorption_rate": absorb.get("absorption_rate")})
    by_state = {}
    for state in (PARENT, SPLIT, OTHER):
        rows = [r for r in per_family if r["state"] == state and r["probe_accuracy"] is not None]
        by_state[state] = {
            "families": len(rows),
            "probe_1": _mean([r["probe_accuracy"]["1"] for r in rows]),
            f"probe_{ks[1]}": _mean([r["probe_accuracy"][str(ks[1])] for r in rows]),
            "absorption_rate": _mean([r["absorption_rate"] for r in rows if r["absorption_rate"] is not None]),
        }
    rule, parent, split = HIERARCHY_RULES, by_state[PARENT], by_state[SPLIT]
    return {
        "width": sae.d_sae, "by_state": by_state, "families": per_family, "k": list(ks),
        "pass": {
            "probing": None if parent["probe_1"] is None else parent["probe_1"] >= rule["probe_parent_min"],
            "absorption": (None if parent["absorption_rate"] is None and split["absorption_rate"] is None else
                           (parent["absorption_rate"] is None or parent["absorption_rate"] <= rule["absorption_parent_max"])
                           and (split["absorption_rate"] is None
                                or split["absorption_rate"] >= rule["absorption_split_min"])),
        },
    }


__all__ = ["HIERARCHY_RULES", "OTHER", "PARENT", "SPLIT", "family_states", "held_out_with_families", "score_hierarchy"]
