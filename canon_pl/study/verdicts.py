"""Per-claim verdicts for the study's report: reproduced / not reproduced / inconclusive, each with the measurement
and the control it rests on. Pure functions of the numbers the stages wrote; the rules are stated here once and
quoted in the report.

The rules:
- **Preconditions** (else every claim is *inconclusive*): held-out explained variance rises with width across the
  family, and no member keeps half or more of its decoder rows within cosine 0.7 of their random initialisation.
  Comparisons across widths of untrained SAEs say nothing about width.
- **Novel latents**: *reproduced* when, for every adjacent pair, the novel fraction by the definition (L-latents
  that lower S's MSE when added alone) exceeds the cross-seed control's (the same measurement of L against an SAE of
  its own width from another seed) by at least ``MARGIN`` and reconstruction latents make up at least
  ``MIN_SHARE`` of L's firing latents; *not reproduced* otherwise. Without a control: *inconclusive*.
- **Monotone path**: *reproduced* when every pair's path stays within its endpoints (MSE never more than ``MARGIN``
  above the worse endpoint, ``path_excess``) and L reconstructs better than S; *not reproduced* otherwise. The
  control beside it: the same construction between two seeds of L's width (its peak is what seeds alone give).
- **Width needs finer groups than seed noise** (with granularity curves, ``canon-pl stitch --granularity``): the
  path walked at ever coarser groupings (:mod:`canon_pl.stitching.granularity`). *Supported* when every cross-width
  pair becomes monotone at a largest group at most ``1 / GRANULARITY_RATIO`` of the one its cross-seed control needs
  (or the control never comes within twice the tolerance: :func:`~canon_pl.stitching.granularity.needed_share`);
  *refuted* when some pair needs groups as coarse as its control (within that ratio) or never becomes monotone;
  *inconclusive* without curves for both.
- **Meta-SAE**: *reproduced* when the meta-SAE's FVE exceeds every floor (the same meta-SAE trained on random unit
  rows, on the base's initial decoder, on Gaussian rows with the decoder's mean and covariance and on the decoder's
  rows with each principal coordinate shuffled) by at least ``META_MARGIN``: latents share structure beyond what the
  geometry and the anisotropy alone give. *Not reproduced* otherwise; *inconclusive* without floors, or when a floor reaches
  ``MAX_FLOOR`` (the meta-SAE is wide enough to explain random rows as well: capacity, not structure, and no FVE
  could show the difference).
- **Nested prefixes more canonical** (a study with a Matryoshka SAE beside its family): a larger width is more
  canonical when it keeps the smaller width's latents and adds new ones instead of re-splitting them. *More
  canonical* when, for every adjacent pair, the latents a larger Matryoshka prefix adds are novel by the definition
  beyond their cross-seed control (another seed's Matryoshka of that width) by at least ``MARGIN`` more than the
  independent family's larger SAE is novel beyond its own control, and every prefix path stays within ``MARGIN`` of
  its worse endpoint; *not more canonical* otherwise; *inconclusive* without both controls, when the family fails
  the preconditions, or when a larger prefix does not reconstruct better than the smaller one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from canon_pl.meta.analysis import floor_text, higher_floor
from canon_pl.stitching.nested import by_widths

MARGIN = 0.05
MIN_SHARE = 0.10
META_MARGIN = 0.10
MAX_STUCK = 0.5
MAX_FLOOR = 0.5
GRANULARITY_RATIO = 2.0
PAPER = {"novel_fraction": 0.35, "fve": 0.555, "meta_l0": 4.0, "meta_per_d_in": 3.0, "base_rows_per_meta": 21.0}


@dataclass
class Verdict:
    claim: str
    paper: str
    measured: str
    control: str
    verdict: str
    why: str

    def row(self) -> dict[str, str]:
        return asdict(self)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def preconditions(family: list[dict[str, Any]]) -> tuple[bool, str]:
    """``family``: one dict per width (smallest first) with ``d_sae``, ``explained_variance`` and
    ``stuck_at_init_fraction`` (``None`` when unknown)."""
    rows = [r for r in family if r.get("explained_variance") is not None]
    if len(rows) < 2:
        return False, "fewer than two trained widths with a held-out explained variance"
    ev = [float(r["explained_variance"]) for r in rows]
    falls = [f"{a['d_sae']} → {b['d_sae']}" for a, b in zip(rows, rows[1:])
             if float(b["explained_variance"]) <= float(a["explained_variance"])]
    if falls:
        return False, f"held-out EV does not rise with width ({', '.join(falls)}: EV {', '.join(f'{v:.3f}' for v in ev)})"
    stuck = [f"{r['d_sae']} ({r['stuck_at_init_fraction']:.0%})" for r in family
             if r.get("stuck_at_init_fraction") is not None and r["stuck_at_init_fraction"] >= MAX_STUCK]
    if stuck:
        return False, f"decoder rows still at their initialisation: {', '.join(stuck)}"
    return True, f"EV rises with width ({' < '.join(f'{v:.3f}' for v in ev)}) and every member's decoder moved"


def novel_latents_verdict(pairs: list[dict[str, Any]], trained: bool, why_not: str) -> Verdict:
    """``pairs``: stitching summaries (``canon_pl.stitching`` results), smallest pair first."""
    measured = "; ".join(f"{p['small']['d_sae']}→{p['large']['d_sae']}: {_pct(p['classes']['novel_fraction_definition'])}"
                         f" (cosine {_pct(p['classes']['novel_fraction_cosine'])})" for p in pairs) or "—"
    controls = [p.get("control") for p in pairs]
    control = "; ".join(f"{p['large']['d_sae']} vs another seed: {_pct(c['novel_fraction_definition'])} (cosine "
                        f"{_pct(c['novel_fraction_cosine'])})" for p, c in zip(pairs, controls) if c) or "none"
    spreads = [(p.get("spread") or {}, (c or {}).get("spread") or {}) for p, c in zip(pairs, controls)]
    if all(a.get("std") is not None for a, _ in spreads):
        measured += "; per-chunk " + ", ".join(f"{a['mean']:.1%} ± {a['std']:.1%}" for a, _ in spreads)
    if all(b.get("std") is not None for _, b in spreads):
        control += "; per-chunk " + ", ".join(f"{b['mean']:.1%} ± {b['std']:.1%}" for _, b in spreads)
    replicates = [(c or {}).get("replicate") for c in controls]
    if replicates and all(replicates):
        measured += "; the other seed's family replicates it: " + ", ".join(
            f"{_pct(r['novel_fraction_definition'])} (its control {_pct(r['control_novel_fraction_definition'])})"
            for r in replicates)
    base = dict(claim="A wider SAE has latents that lower the narrower SAE's error when added alone, beyond what "
                      "another seed of its own width gives",
                paper="≈35% novel, ≈65% reconstruction", measured=measured, control=control)
    if not pairs:
        return Verdict(**base, verdict="inconclusive", why="no stitching results")
    if not trained:
        return Verdict(**base, verdict="inconclusive", why=why_not)
    if any(c is None for c in controls):
        return Verdict(**base, verdict="inconclusive", why="no cross-seed control for some pair: a novel fraction "
                                                            "alone cannot be told from seed noise")
    effects = [p["classes"]["novel_fraction_definition"] - c["novel_fraction_definition"]
               for p, c in zip(pairs, controls)]
    reconstruction = [1.0 - p["classes"]["novel_fraction_definition"] for p in pairs]
    ok = all(e >= MARGIN for e in effects) and all(r >= MIN_SHARE for r in reconstruction)
    why = (f"novel fraction above the cross-seed control by {', '.join(f'{e:+.1%}' for e in effects)} (needed "
           f"≥ {MARGIN:.0%}); reconstruction latents {', '.join(_pct(r) for r in reconstruction)} (needed ≥ "
           f"{MIN_SHARE:.0%})")
    return Verdict(**base, verdict="reproduced" if ok else "not reproduced", why=why)


def _peak(excess: float | None) -> str:
    return "—" if excess is None else f"{1 + excess:.2f}x"


def path_verdict(pairs: list[dict[str, Any]], trained: bool, why_not: str) -> Verdict:
    measured = "; ".join(f"{p['small']['d_sae']}→{p['large']['d_sae']}: peak {_peak(p.get('path_excess'))} the worse "
                         f"endpoint, monotone steps {p['path_monotone_fraction']:.0%}, FVU {p['fvu_small']:.3f}→"
                         f"{p['fvu_large']:.3f}" for p in pairs) or "—"
    controls = [f"{p['large']['d_sae']} → its other seed: peak {_peak(p['control']['path_excess'])}" for p in pairs
                if (p.get("control") or {}).get("path_excess") is not None]
    base = dict(claim="Stitching interpolates between sizes with falling MSE (groups by decoder cosine ≥ 0.7)",
                paper="monotone in MSE", measured=measured,
                control="; ".join(controls) or "peak 1.00x = never above the worse endpoint")
    if not pairs:
        return Verdict(**base, verdict="inconclusive", why="no stitching results")
    if not trained:
        return Verdict(**base, verdict="inconclusive", why=why_not)
    ok = all(p.get("path_excess", 1.0) <= MARGIN and p["fvu_large"] < p["fvu_small"] for p in pairs)
    why = (f"every path stays within {MARGIN:.0%} of its worse endpoint and L beats S" if ok else
           f"a path rises more than {MARGIN:.0%} above its worse endpoint, or L does not beat S")
    return Verdict(**base, verdict="reproduced" if ok else "not reproduced", why=why)


def granularity_verdict(pairs: list[dict[str, Any]], trained: bool, why_not: str) -> Verdict:
    """Whether width needs finer groups than seed noise for a monotone path (rule in the module docstring)."""
    from canon_pl.stitching.granularity import needed_share

    def share(curve: dict[str, Any] | None) -> str:
        value = needed_share(curve)
        return "never" if value is None else f"{value:.1%}"

    rows = [(f"{p['small']['d_sae']}→{p['large']['d_sae']}", p.get("granularity"),
             (p.get("control") or {}).get("granularity")) for p in pairs]
    base = dict(claim="A monotone path needs finer groups across widths than across seeds",
                paper="(not measured by the paper: its groups are decoder cosine ≥ 0.7)",
                measured="; ".join(f"{pair}: monotone at a largest group of {share(mine)} of L" for pair, mine, _ in rows
                                   if mine) or "—",
                control="; ".join(f"{pair.split('→')[1]} → its other seed: {share(other)}" for pair, _, other in rows
                                  if other) or "none")
    if not rows or any(mine is None or other is None for _, mine, other in rows):
        return Verdict(**base, verdict="inconclusive", why="no granularity curve for a pair or its control "
                                                            "(canon-pl stitch --granularity)")
    if not trained:
        return Verdict(**base, verdict="inconclusive", why=why_not)
    finer = []
    for _, mine, other in rows:
        a, b = needed_share(mine), needed_share(other)
        finer.append(a is not None and (b is None or a * GRANULARITY_RATIO <= b))
    ok = all(finer)
    why = (f"every pair becomes monotone at groups at most 1/{GRANULARITY_RATIO:g} of its control's" if ok else
           "a pair needs groups as coarse as its cross-seed control (or never becomes monotone)")
    return Verdict(**base, verdict="supported" if ok else "refuted", why=why)


def meta_verdict(meta: dict[str, Any] | None, trained: bool, why_not: str) -> Verdict:
    floors = (meta or {}).get("floors") or {}
    highest = higher_floor(floors)
    measured = "—" if meta is None else (f"FVE {meta['fve']:.3f} (uncentred {meta.get('fve_uncentred', float('nan')):.3f}) "
                                         f"with {meta['n_meta']} meta-latents, k = {meta.get('k')}")
    control = floor_text(floors) or "none"
    if meta is not None and meta.get("pca_cap"):
        control += f"; PCA cap {meta['pca_cap']['fraction']:.3f} (top {meta['pca_cap']['m']} directions)"
    paper_geometry = paper_geometry_entry(meta)
    if paper_geometry is not None:
        measured += (f"; at the paper's {PAPER['meta_per_d_in']:g} × d_in ({paper_geometry['n_meta']} meta-latents): "
                     f"FVE {paper_geometry['fve']:.3f}")
        control += (f"; at {PAPER['meta_per_d_in']:g} × d_in: random rows "
                    f"{paper_geometry['floors']['random_rows']:.3f}, PCA cap {paper_geometry['pca_cap']:.3f}")
    base = dict(claim="Latents decompose into a few shared meta-latents", paper="FVE ≈ 0.55 at k = 4",
                measured=measured, control=control)
    if meta is None:
        return Verdict(**base, verdict="inconclusive", why="no meta-SAE analysis")
    if not trained:
        return Verdict(**base, verdict="inconclusive", why=why_not)
    if highest is None:
        return Verdict(**base, verdict="inconclusive", why="no floors: an FVE alone cannot be told from geometry")
    if highest >= MAX_FLOOR:
        return Verdict(**base, verdict="inconclusive",
                       why=f"a floor reaches {highest:.3f} (≥ {MAX_FLOOR}): this meta-SAE is wide enough to "
                           f"explain random rows, so its FVE cannot show shared structure; use fewer meta-latents")
    margin = float(meta["fve"]) - highest
    ok = margin >= META_MARGIN
    why = f"FVE exceeds the higher floor by {margin:+.3f} (needed ≥ {META_MARGIN:.2f})"
    return Verdict(**base, verdict="reproduced" if ok else "not reproduced", why=why)


L0_TOLERANCE = 0.10
"""The Matryoshka verdict compares a prefix with the independent SAE of its width only where their held-out L0s differ
by at most this fraction (a sparser SAE is a different SAE)."""
CONSISTENCY_THRESHOLD = "0.7"
"""The cosine at which two seeds' latents count as the same (the share of latents matched across seeds at it)."""


def seed_consistency(summary: dict[str, Any]) -> float | None:
    """The share of L's latents matched across its two seeds at :data:`CONSISTENCY_THRESHOLD` (Hungarian)."""
    return (((summary.get("control") or {}).get("consistency") or {}).get("shared_at") or {}).get(
        CONSISTENCY_THRESHOLD)


def large_l0(summary: dict[str, Any]) -> float | None:
    """L's held-out L0: the last point of the stitching path (L itself)."""
    l0 = (summary.get("path") or {}).get("l0")
    return float(l0[-1]) if l0 else None


def matryoshka_verdict(independent: list[dict[str, Any]], nested: list[dict[str, Any]], trained: bool = True,
                       why_not: str = "") -> Verdict:
    """Are nested (Matryoshka) prefixes more canonical than independent widths? Decided by **consistency across
    seeds**, which nothing builds in: at each width with a seed control on both sides whose held-out L0s agree within
    :data:`L0_TOLERANCE`, the share of the prefix's latents the other seed's prefix matches (Hungarian, cosine ≥
    0.7) against the same share for the independent SAE of that width. *More canonical* when the prefix's share is
    higher by ≥ :data:`MARGIN` at every compared width, *less canonical* when lower by ≥ MARGIN at every one, *no
    more canonical* otherwise. The novelty of the latents a prefix adds (trained on the prefix's residual, so they
    lower its error by construction) is reported as a description, not used.

    ``independent``: the family's stitching summaries; ``nested``: per pair of prefixes (smallest first) its
    stitching ``summary`` and the classes of the latents it ``added`` (:func:`canon_pl.stitching.nested.
    added_latent_classes`); ``trained``: the family's preconditions (untrained widths say nothing)."""
    by_pair = by_widths(independent)
    rows = []
    for n in nested:
        s = n["summary"]
        rows.append((int(s["large"]["d_sae"]), n["added"], s, by_pair.get((s["small"]["d_sae"], s["large"]["d_sae"]))))
    measured = "; ".join(
        f"{width}: seeds share {_pct(seed_consistency(s))} of the prefix's latents (L0 "
        f"{_fmt_l0(large_l0(s))}); the latents it adds are novel {_pct(a['novel_fraction_definition'])} "
        f"(control {_pct(a['control_novel_fraction_definition'])}, by construction)" for width, a, s, _ in rows) or "—"
    control = "; ".join(f"{width}: independent seeds share {_pct(seed_consistency(p))} (L0 {_fmt_l0(large_l0(p))})"
                        for width, _, _, p in rows if p) or "none"
    base = dict(claim="Nested (Matryoshka) prefixes are more canonical than independently trained widths",
                paper="the authors' proposed answer to 'no canonical size' (a follow-up, not this paper's claim)",
                measured=measured, control=control)
    if not rows:
        return Verdict(**base, verdict="inconclusive", why="no stitched Matryoshka prefixes")
    if not trained:
        return Verdict(**base, verdict="inconclusive", why=why_not)
    compared = []
    for width, _, s, p in rows:
        ours, theirs = seed_consistency(s), seed_consistency(p or {})
        l0_ours, l0_theirs = large_l0(s), large_l0(p or {})
        if None in (ours, theirs, l0_ours, l0_theirs):
            continue
        if abs(l0_ours - l0_theirs) <= L0_TOLERANCE * l0_theirs:
            compared.append((width, ours - theirs))
    if not compared:
        return Verdict(**base, verdict="inconclusive", why=f"no width with a seed control on both sides whose "
                                                            f"held-out L0s agree within {L0_TOLERANCE:.0%}")
    gaps = ", ".join(f"{w}: {g:+.1%}" for w, g in compared)
    why = (f"share of latents matched across seeds at cosine ≥ {CONSISTENCY_THRESHOLD}, prefix minus independent SAE, "
           f"at the widths whose L0s agree within {L0_TOLERANCE:.0%}: {gaps} (a verdict needs ≥ {MARGIN:.0%} either "
           f"way at every one)")
    if all(g >= MARGIN for _, g in compared):
        return Verdict(**base, verdict="more canonical", why=why)
    if all(g <= -MARGIN for _, g in compared):
        return Verdict(**base, verdict="less canonical", why=why)
    return Verdict(**base, verdict="no more canonical", why=why)


def _fmt_l0(l0: float | None) -> str:
    return "—" if l0 is None else f"{l0:.1f}"


def paper_geometry_entry(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The width-sweep entry of a meta-SAE analysis at the paper's meta width (3 × d_in), or ``None``."""
    for entry in (meta or {}).get("width_sweep") or []:
        if abs(float(entry["per_d_in"]) - PAPER["meta_per_d_in"]) < 0.01:
            return entry
    return None


def recommended_width(rows: list[dict[str, Any]], seed_spread: dict[str, dict[str, float]],
                      pairs: list[dict[str, Any]]) -> tuple[int | None, list[str]]:
    """The widest width a family earns step by step, and why, one line per adjacent pair: a step from S to L counts
    when L's held-out explained variance beats S's by more than the spread between L's seeds (wider reconstructs
    better than reseeding does) **and** L's novel fraction by definition beats its cross-seed control by at least
    :data:`MARGIN` (L adds latents that carry information, not reshuffled ones). The first step that fails stops the
    climb: past it a wider SAE mostly re-splits what the narrower one has. ``rows``: ``canon-pl evaluate``'s summary
    rows; ``seed_spread``: its per-width spread; ``pairs``: the stitching summaries. ``None`` without rows."""
    members = {r["width"]: r["metrics"] for r in rows if not r["seed_control"] and not r.get("variant")}
    if not members:
        return None, []
    widths = sorted(members)
    by_pair = {(int(p["small"]["d_sae"]), int(p["large"]["d_sae"])): p for p in pairs}
    chosen, why = widths[0], []
    for small, large in zip(widths, widths[1:]):
        gain = members[large].get("explained_variance", 0.0) - members[small].get("explained_variance", 0.0)
        noise = (seed_spread.get(str(large)) or {}).get("explained_variance")
        pair = by_pair.get((small, large)) or {}
        novel = (pair.get("classes") or {}).get("novel_fraction_definition")
        control = (pair.get("control") or {}).get("novel_fraction_definition")
        ev_ok = noise is not None and gain > noise
        novel_ok = novel is not None and control is not None and novel - control >= MARGIN
        why.append(f"{small} → {large}: EV {gain:+.3f} against a seed spread of "
                   f"{'unmeasured' if noise is None else f'{noise:.3f}'}; novel {_pct(novel)} against its control "
                   f"{_pct(control)} — {'earned' if ev_ok and novel_ok else 'not earned'}")
        if not (ev_ok and novel_ok):
            break
        chosen = large
    return chosen, why


def study_verdicts(family: list[dict[str, Any]], pairs: list[dict[str, Any]],
                   meta: dict[str, Any] | None) -> tuple[list[Verdict], tuple[bool, str]]:
    """The claims' verdicts (novel latents, path, the path's granularity when measured, meta-SAE) and the
    preconditions (passed, reason) they rest on."""
    trained, reason = preconditions(family)
    why_not = f"preconditions fail: {reason}"
    verdicts = [novel_latents_verdict(pairs, trained, why_not), path_verdict(pairs, trained, why_not)]
    if any(p.get("granularity") for p in pairs):
        verdicts.append(granularity_verdict(pairs, trained, why_not))
    return verdicts + [meta_verdict(meta, trained, why_not)], (trained, reason)


__all__ = ["CONSISTENCY_THRESHOLD", "GRANULARITY_RATIO", "L0_TOLERANCE", "MARGIN", "large_l0", "seed_consistency", "MAX_FLOOR", "META_MARGIN", "MIN_SHARE", "PAPER", "Verdict",
           "granularity_verdict", "matryoshka_verdict",
           "paper_geometry_entry",
           "preconditions", "recommended_width", "study_verdicts"]
