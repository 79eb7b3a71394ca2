"""Every instrument of the study run on a family trained on a known-answer world, and scored against its truth.

:func:`score_family` reads an exported family whose exports record their world (``KnownWorldDataModule``), and
for each adjacent pair of widths runs the stitching analysis with its cross-seed control, then scores:

- the **stitching classification** (by the definition and by the cosine proxy) against the truth classes
  (:func:`canon_pl.calibration.truth.truth_classes`): precision and recall of "novel" and "reconstruction";
- the **stitching groups** against the planted families (a parent S holds, its children L holds: one group?);
- the **path** walked on the planted units as groups (:func:`truth_path`: the truth's answer to "a monotone path
  exists"), and the instrument's **granularity curve** against those units (how coarse its groups must get);
- **matched consistency** across seeds (Hungarian, cosine >= 0.7, as the study reads it) among L's latents that are
  true directions, against the share of those directions the other seed also holds;
- the study's **verdicts** against the truth's (:func:`truth_verdicts`: the study's rule on the truth classes);
- the **meta-SAE** on the widest member's decoder against its floors (reported).

:func:`score_ideal_meta` measures the meta-SAE's power where the truth is not blurred by training: on the true
dictionary of a planted world and of its null twin. The pass rules (:data:`PASS_RULES`, fixed before the first
scored run and quoted in docs/design.md) turn each score into pass or fail.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from canon_pl.calibration.hierarchy import HIERARCHY_RULES, PARENT, SPLIT, held_out_with_families, score_hierarchy
from canon_pl.calibration.truth import (
    NOVEL,
    RECONSTRUCTION,
    UNIT_COSINE,
    class_counts,
    classification_scores,
    expected_shared,
    family_grouping,
    latent_kinds,
    recovery,
    scores_by_kind,
    truth_classes,
    truth_group_edges,
    truth_identity,
)
from canon_pl.calibration.world_files import world_of
from canon_pl.data.known_world import KnownWorld, WorldSpec
from canon_pl.errors import CanonError
from canon_pl.io.document import DocumentKind
from canon_pl.study.verdicts import CONSISTENCY_THRESHOLD

PASS_RULES = {
    "definition_precision": 0.9,
    "definition_recall": 0.8,
    "consistency_error": 0.05,
    "meta_excess_planted": 0.10,
    "meta_excess_null": 0.05,
    "granularity_coarser": 2.0,
}
"""Decided before the first run: the definition's precision of both calls at least ``definition_precision`` and
its recall of both at least ``definition_recall`` on the scored latents; matched consistency within
``consistency_error`` of the truth's share; the meta-SAE's FVE above its highest floor by at least
``meta_excess_planted`` on a world with composite features and by less than ``meta_excess_null`` on the null world.
Added with the path's truth (issue 52's fourth round, before its first scored run): the granularity curve's first
monotone grouping no coarser than ``granularity_coarser`` times the planted units' largest group (its largest group's
share of L-latents)."""
CONSISTENCY_COSINE = float(CONSISTENCY_THRESHOLD)
"""The study's matched-consistency threshold."""
META_K = 4
META_ROWS_PER_LATENT = 21
"""The paper's meta-SAE geometry, the one the ladder's base-width verdict reads: k = 4, 21 base rows per
meta-latent."""


class CalibrationError(CanonError, ValueError):
    """A family that was not trained on a known-answer world, or lacks what a score needs."""


CALIBRATION = DocumentKind("canon_pl.calibration", 1, "calibration results", CalibrationError,
                           rebuild="write it again with `canon-pl calibrate --config <family config> --out <folder>`")
"""``calibration.json``: each world's scores and the instrument table (``canon-pl calibrate``)."""


def _min_or_none(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if len(known) == len(values) else None


def _novel_share(truth: torch.Tensor) -> float | None:
    """The share of novel latents among those the truth calls novel or reconstruction."""
    scored = int(((truth == NOVEL) | (truth == RECONSTRUCTION)).sum())
    return int((truth == NOVEL).sum()) / scored if scored else None


def truth_path(small, large, world, x: torch.Tensor) -> dict[str, Any]:
    """The stitching path from ``small`` to ``large`` walked on the planted units as groups
    (:func:`canon_pl.calibration.truth.truth_group_edges`, each latent read as its nearest true direction at cosine
    :data:`canon_pl.calibration.truth.UNIT_COSINE`), on ``x [N, d_in]``: its peak over the worse endpoint,
    whether it is monotone (within :data:`canon_pl.stitching.granularity.MONOTONE_TOLERANCE`) and L beats S, and its
    groups' largest share of L-latents."""
    from canon_pl.stitching.analysis import in_encoder_space
    from canon_pl.stitching.granularity import MONOTONE_TOLERANCE
    from canon_pl.stitching.groups import groups_from_edges
    from canon_pl.stitching.path import stitching_path

    s_id, l_id = (truth_identity(sae.W_dec, world, UNIT_COSINE) for sae in (small, large))
    (small, large), x = in_encoder_space([small, large], x.float())
    groups = groups_from_edges(small.d_sae, large.d_sae, *truth_group_edges(s_id, l_id, world))
    path = stitching_path(small, large, x, groups)
    excess = path.excess_over_endpoints()
    largest = float(groups.n_large.max()) / large.d_sae if groups.n_groups else 0.0
    return {"path_excess": excess, "monotone_fraction": path.monotone_fraction(), "n_groups": groups.n_groups,
            "kinds": groups.kind_counts(), "largest_group_share": largest,
            "monotone": bool(excess <= MONOTONE_TOLERANCE and float(path.mse[-1]) < float(path.mse[0]))}


def score_pair(small, large, control, world, x: torch.Tensor, large_initial_decoder=None) -> dict[str, Any]:
    """One adjacent pair's stitching and consistency scores (SAEs in their exported form, ``x [N, d_in]`` held-out
    activations of the world)."""
    from canon_pl.stitching.analysis import analyze_pair
    from canon_pl.stitching.consistency import matched_consistency
    from canon_pl.stitching.granularity import needed_share

    result = analyze_pair(small, large, x, control=control, large_initial_decoder=large_initial_decoder,
                          control_extras=False, granularity=True)
    s_id, l_id, c_id = (truth_identity(sae.W_dec, world) for sae in (small, large, control))
    path = truth_path(small, large, world, x)
    curve = result.summary.get("granularity")
    needed = needed_share(curve)
    granularity = {"points": [{k: p[k] for k in ("grouping", "threshold", "largest_group_share", "path_excess")}
                              for p in (curve or {}).get("points", [])],
                   "needed_share": needed, "truth_share": path["largest_group_share"]}
    truth, truth_control = truth_classes(s_id, l_id, world), truth_classes(c_id, l_id, world)
    fires = result.classes.fires
    definition = classification_scores(result.classes.novel_by_definition, truth, fires)
    cosine = classification_scores(result.classes.match.is_novel, truth, fires)
    kinds = latent_kinds(l_id, world)
    definition["by_kind"] = scores_by_kind(result.classes.novel_by_definition, truth, kinds, fires)
    cosine["by_kind"] = scores_by_kind(result.classes.match.is_novel, truth, kinds, fires)
    matched = matched_consistency(large.W_dec, control.W_dec, thresholds=(CONSISTENCY_COSINE,))
    partner = matched["partner"]  # [d_large]: L and its control have one width, so L is the "smaller" side
    partner_cos = torch.where(partner >= 0, F.cosine_similarity(
        large.W_dec.detach().float(), control.W_dec.detach().float()[partner.clamp_min(0)], dim=-1), 0.0)
    on_truth = l_id.matched
    measured = float((partner_cos[on_truth] >= CONSISTENCY_COSINE).float().mean()) if on_truth.any() else None
    expected = expected_shared(l_id, c_id)
    error = abs(measured - expected) if measured is not None and expected is not None else None
    rule = PASS_RULES
    precision = _min_or_none(definition["novel"]["precision"], definition["reconstruction"]["precision"])
    recall = _min_or_none(definition["novel"]["recall"], definition["reconstruction"]["recall"])
    return {
        "small": small.d_sae, "large": large.d_sae,
        "family_groups": family_grouping(s_id, l_id, world, result.groups.small_group.cpu(),
                                         result.groups.large_group.cpu()),
        "truth_path": path, "granularity": granularity,
        "truth_classes": class_counts(truth), "truth_novel_fraction": _novel_share(truth[fires]),
        "truth_control_novel_fraction": _novel_share(truth_control[fires]),
        "definition": definition, "cosine": cosine,
        "study": {"novel_fraction_definition": result.summary["classes"]["novel_fraction_definition"],
                  "novel_fraction_cosine": result.summary["classes"]["novel_fraction_cosine"],
                  "control_novel_fraction_definition": result.summary["control"]["novel_fraction_definition"]},
        "summary": result.summary,
        "consistency": {"shared_at": matched["shared_at"][f"{CONSISTENCY_COSINE:g}"], "n_on_truth": int(on_truth.sum()),
                        "shared_on_truth": measured, "truth_shared": expected, "error": error},
        "pass": {"definition": precision is not None and recall is not None
                 and precision >= rule["definition_precision"] and recall >= rule["definition_recall"],
                 "consistency": error is not None and error <= rule["consistency_error"],
                 "granularity": needed is not None
                 and needed <= rule["granularity_coarser"] * max(path["largest_group_share"], 1 / large.d_sae)},
    }


def score_meta(rows: torch.Tensor, world, steps: int, batch_size: int = 1024, seed: int = 0) -> dict[str, Any]:
    """The paper's meta-SAE (k 4, 21 rows per meta-latent) on decoder rows ``rows [n, d_in]``, read against its
    floors, with the study's verdict, and the share of the world's shared directions (if any) some meta-latent lies
    within cosine 0.9 of."""
    from canon_pl.meta.analysis import higher_floor, meta_floors
    from canon_pl.meta.decomposition import decompose, fit_meta_sae, fraction_of_variance_explained
    from canon_pl.study.verdicts import meta_verdict

    rows = F.normalize(rows.detach().float(), dim=-1)
    width = max(rows.shape[0] // META_ROWS_PER_LATENT, META_K + 1)
    meta = fit_meta_sae(rows, width, META_K, steps, batch_size, seed=seed)
    fve = fraction_of_variance_explained(rows, decompose(meta, rows)[1])
    floors = {k: v for k, v in meta_floors(meta, rows, None, steps, batch_size, 1e-3, seed).items()
              if isinstance(v, float)}
    recovered = None
    if world.components.shape[0]:
        cos = F.normalize(meta.W_dec.detach().float(), dim=-1) @ world.components.T
        recovered = float((cos.max(dim=0).values >= 0.9).float().mean())
    verdict = meta_verdict({"fve": fve, "n_meta": width, "k": META_K, "floors": floors}, True, "").verdict
    return {"n_base": rows.shape[0], "n_meta": width, "k": META_K, "steps": steps, "fve": fve, "floors": floors,
            "excess": fve - higher_floor(floors), "components_recovered": recovered, "verdict": verdict}


def score_ideal_meta(spec: WorldSpec, steps: int) -> dict[str, Any]:
    """The meta-SAE instrument's power: :func:`score_meta` on the true dictionary of ``spec``'s world (the decoder a
    converged SAE as wide as the world would hold) and of its null twin, each with its pass rule and the truth's
    verdict (composition planted or not)."""
    out = {}
    for name, world_spec in (("planted", spec), ("null", spec.null())):
        world = KnownWorld(world_spec)
        scored = score_meta(world.directions, world, steps)
        composite = bool((world.composition > 0).any())
        scored["truth"] = "reproduced" if composite else "not reproduced"
        scored["pass"] = (scored["excess"] >= PASS_RULES["meta_excess_planted"]) if composite else \
            (scored["excess"] < PASS_RULES["meta_excess_null"])
        out[name] = {"world": world.describe(), **scored}
    return out


def score_family(family_dir: str | os.PathLike, held_out_tokens: int = 16_384, meta_steps: int = 600) -> dict[str, Any]:
    """Every instrument on the exported family in ``family_dir``, scored against the world its exports record."""
    from canon_pl.io import initial_decoder, load_family

    family_dir = Path(family_dir)
    family = load_family(family_dir)
    widths = sorted(family.saes)
    world = world_of(family_dir / str(widths[0]))
    if world is None:
        raise CalibrationError(f"{family_dir} was not trained on a known-answer world (its exports record none): "
                               f"train it with data.class_path: canon_pl.training.KnownWorldDataModule")
    x = torch.cat([world.batch(-1 - i, 4096) for i in range(max(held_out_tokens // 4096, 1))])
    members = {w: recovery(truth_identity(family.saes[w].W_dec, world), world) for w in widths}
    pairs = []
    for small, large in zip(widths, widths[1:]):
        control = family.control_of(large)
        if control is None:
            raise CalibrationError(f"width {large} of {family_dir} has no seed control: train the family with "
                                   f"control_seeds so the study's control can be scored")
        pairs.append(score_pair(family.saes[small], family.saes[large], control[1], world, x,
                                initial_decoder(family_dir / str(large))))
    meta = score_meta(family.saes[widths[-1]].W_dec, world, meta_steps)
    hierarchy = []
    if world.parents.shape[0]:  # probing and absorption need planted families (the null world has none)
        x_labelled, labels = held_out_with_families(world, held_out_tokens)
        hierarchy = [score_hierarchy(family.saes[w], world, x_labelled, labels) for w in widths]
    return {"world": world.describe(), "members": {str(w): m for w, m in members.items()},
            "pairs": [{k: v for k, v in p.items() if k != "summary"} for p in pairs], "meta": meta,
            "hierarchy": hierarchy,
            "verdicts": _study_verdicts(pairs, meta), "truth_verdicts": truth_verdicts(pairs),
            "pass_rules": PASS_RULES}


def truth_verdicts(pairs: list[dict[str, Any]]) -> dict[str, str]:
    """What the truth says of the novel-latents claim, by the study's own rule applied to the truth classes instead
    of an instrument's calls: every pair's truth novel share exceeds its truth share against the other seed by
    ``MARGIN``, with ``MIN_SHARE`` reconstruction latents; and of the monotone-path claim: every pair's path walked
    on the planted units (:func:`truth_path`) stays within its tolerance and ends below where it starts."""
    from canon_pl.study.verdicts import MARGIN, MIN_SHARE

    shares = [(p["truth_novel_fraction"], p["truth_control_novel_fraction"]) for p in pairs]
    novel = all(a is not None and b is not None and a - b >= MARGIN and 1 - a >= MIN_SHARE for a, b in shares)
    monotone = all(p["truth_path"]["monotone"] for p in pairs)
    return {"novel_latents": "reproduced" if novel else "not reproduced",
            "monotone_path": "reproduced" if monotone else "not reproduced"}


def _meta_score(meta: dict[str, Any]) -> str:
    recovered = meta["components_recovered"]
    return (f"FVE {meta['fve']:.3f}, excess over the highest floor {meta['excess']:+.3f}"
            + ("" if recovered is None else f"; shared directions recovered {recovered:.0%}"))


def ideal_meta_rows(ideal: dict[str, Any]) -> list[dict[str, Any]]:
    """The instrument table's rows for the meta-SAE on ideal decoders (:func:`score_ideal_meta`)."""
    rule = PASS_RULES
    rows = []
    for world, meta in ideal.items():
        composite = meta["truth"] == "reproduced"
        rows.append({"instrument": f"meta-SAE on the true dictionary ({meta['n_base']} rows, {meta['n_meta']} "
                                   f"meta-latents, k {meta['k']})", "world": f"{world} (d_in {meta['world']['spec']['d_in']})",
                     "score": _meta_score(meta) + f"; says {meta['verdict']} (truth: {meta['truth']})",
                     "rule": (f"excess ≥ {rule['meta_excess_planted']:.2f}" if composite else
                              f"excess < {rule['meta_excess_null']:.2f}"), "pass": meta["pass"]})
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _pr(scores: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    return (f"novel P {f(scores['novel']['precision'])} R {f(scores['novel']['recall'])}; reconstruction P "
            f"{f(scores['reconstruction']['precision'])} R {f(scores['reconstruction']['recall'])}")


def instrument_rows(world: str, scored: dict[str, Any]) -> list[dict[str, Any]]:
    """The instrument table's rows for one world (``instrument``, ``world``, ``score``, ``rule``, ``pass``; ``pass``
    is ``None`` where the truth gives no answer to compare)."""
    rule = PASS_RULES
    rows = []
    definition_rule = (f"precision ≥ {rule['definition_precision']:.2f}, recall ≥ {rule['definition_recall']:.2f} "
                       f"of both calls")
    for p in scored["pairs"]:
        pair = f"{p['small']} → {p['large']}"
        rows.append({"instrument": f"stitching by the definition, {pair}", "world": world,
                     "score": _pr(p["definition"]), "rule": definition_rule, "pass": p["pass"]["definition"]})
        cos = p["cosine"]
        rows.append({"instrument": f"stitching by the cosine proxy, {pair}", "world": world, "score": _pr(cos),
                     "rule": definition_rule + " (reported: the paper's proxy)", "pass": None})
        groups = p["family_groups"]
        if groups["families"]:
            rows.append({"instrument": f"stitching groups against the planted families, {pair}", "world": world,
                         "score": f"{groups['grouped']} of {groups['families']} families whose parent S holds and "
                                  f"whose children L holds are one group", "rule": "reported", "pass": None})
        t, g = p["truth_path"], p["granularity"]
        rows.append({"instrument": f"the path on the planted units, {pair}", "world": world,
                     "score": (f"peak {1 + t['path_excess']:.2f}x the worse endpoint over {t['n_groups']} groups "
                               f"(largest {t['largest_group_share']:.1%} of L)"),
                     "rule": "reported: the truth's answer to the monotone-path claim", "pass": None})
        needed = "never" if g["needed_share"] is None else f"{g['needed_share']:.1%} of L"
        rows.append({"instrument": f"the granularity curve, {pair}", "world": world,
                     "score": f"monotone at a largest group of {needed} (the planted units: {g['truth_share']:.1%})",
                     "rule": f"at most {rule['granularity_coarser']:g}x the planted units' largest group",
                     "pass": p["pass"]["granularity"]})
        c = p["consistency"]
        rows.append({"instrument": f"matched consistency across seeds, {p['large']}", "world": world,
                     "score": (f"of the {c['n_on_truth']} latents that are true directions, "
                               f"{_pct(c['shared_on_truth'])} matched at cosine ≥ {CONSISTENCY_COSINE:g}; the truth "
                               f"{_pct(c['truth_shared'])} (all latents: {_pct(c['shared_at'])})"),
                     "rule": f"within {rule['consistency_error']:.0%} of the truth", "pass": p["pass"]["consistency"]})
    for h in scored.get("hierarchy", []):
        rows += hierarchy_rows(world, h)
    meta = scored["meta"]
    rows.append({"instrument": f"meta-SAE on the trained widest decoder ({meta['n_meta']} meta-latents, k {meta['k']})",
                 "world": world, "score": _meta_score(meta) + f"; says {meta['verdict']}",
                 "rule": "reported: the truth's answer depends on what training recovered", "pass": None})
    study, truth = scored["verdicts"], scored["truth_verdicts"]
    for claim in ("novel_latents", "monotone_path"):
        expected = truth.get(claim)
        rows.append({"instrument": f"the study's verdict: {claim.replace('_', ' ')}", "world": world,
                     "score": f"says {study[claim]}" + (f"; the truth: {expected}" if expected else
                                                         "; the truth gives no answer here"),
                     "rule": "the study's verdict is the truth's", "pass": None if expected is None
                     else study[claim] == expected})
    return rows


def hierarchy_rows(world: str, h: dict[str, Any]) -> list[dict[str, Any]]:
    """The instrument table's rows for probing and absorption of one member on the planted families."""
    rule, parent, split = HIERARCHY_RULES, h["by_state"][PARENT], h["by_state"][SPLIT]
    k = h["k"][1]

    def state(name: str, part: dict[str, Any]) -> str:
        if not part["families"]:
            return f"no family {name}"
        return (f"{part['families']} famil{'y' if part['families'] == 1 else 'ies'} {name}: 1-sparse probe "
                f"{part['probe_1']:.2f} ({k}-sparse {part[f'probe_{k}']:.2f}), absorption "
                f"{_pct(part['absorption_rate'])}")

    return [{"instrument": f"probing the planted families, {h['width']}", "world": world,
             "score": state("whose parent it holds", parent) + "; " + state("it split", split),
             "rule": f"1-sparse ≥ {rule['probe_parent_min']:.2f} where it holds the parent", "pass": h["pass"]["probing"]},
            {"instrument": f"absorption on the planted families, {h['width']}", "world": world,
             "score": (f"{_pct(parent['absorption_rate'])} where it holds the parent ({parent['families']}), "
                       f"{_pct(split['absorption_rate'])} where it split the family ({split['families']})"),
             "rule": (f"≤ {rule['absorption_parent_max']:.0%} where it holds the parent, ≥ "
                      f"{rule['absorption_split_min']:.0%} where it split"), "pass": h["pass"]["absorption"]}]


def _study_verdicts(pairs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, str]:
    """What the study's own rules (:mod:`canon_pl.study.verdicts`) conclude on this world."""
    from canon_pl.study.verdicts import novel_latents_verdict, path_verdict

    summaries = [p["summary"] for p in pairs]
    return {"novel_latents": novel_latents_verdict(summaries, True, "").verdict,
            "monotone_path": path_verdict(summaries, True, "").verdict, "meta_latents": meta["verdict"]}


__all__ = ["CALIBRATION", "CalibrationError", "PASS_RULES", "hierarchy_rows", "ideal_meta_rows", "instrument_rows", "score_family",
           "score_ideal_meta", "score_meta", "score_pair", "truth_path", "truth_verdicts"]
