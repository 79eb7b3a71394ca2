"""Meta-SAE analyses under a checkpoints folder, shaped for the viewer's latent and meta-latent pages (no Streamlit
imports): which base SAE an analysis decomposes, a latent's meta-latents, a meta-latent's member latents."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from canon_pl.meta import MetaDecomposition, MetaSAEError, read_meta_analysis
from canon_pl.stats import LatentStatistics, StatsError
from canon_pl.viewer.folders import files_inside


def _meta_summaries(root: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``{label: (analysis folder, summary)}`` for every readable meta-SAE ``analysis.json`` below ``root`` (each read
    once)."""
    found = {}
    for path in files_inside(root, "**/analysis.json"):
        try:
            summary = read_meta_analysis(path)
        except MetaSAEError:
            continue  # foreign or corrupt: skipped, never fatal
        found[str(path.parent.relative_to(root))] = (path.parent, summary)
    return found


def find_meta_runs(root: str | os.PathLike) -> dict[str, Path]:
    """``{label: analysis folder}`` for every readable meta-SAE ``analysis.json`` below ``root``, the shallowest
    first: a study's own meta-SAE (``<run>/meta_sae_<w>``) before one nested deeper (its Matryoshka prefixes',
    ``<run>/matryoshka_prefixes/meta_sae_<w>``), which string order would put first."""
    found = _meta_summaries(Path(root))
    return {label: found[label][0] for label in sorted(found, key=lambda label: (label.count("/"), label))}


def _candidates(source: str, root: Path) -> list[Path]:
    """Where a recorded base path may be now: as written, relative to the folder holding ``root``, or inside
    ``root`` (a run recorded as ``checkpoints/<run>`` read from elsewhere)."""
    path = Path(source)
    if path.is_absolute():
        return [path.resolve()]
    return [path.resolve(), (root.parent / path).resolve(), (root / path.name).resolve()]


def is_base_of(base: dict[str, Any], run_dir: Path, member: str, root: Path) -> bool:
    """Whether an analysis' recorded ``base`` (``source``, ``width``) is ``member`` of the run at ``run_dir``: the
    family folder with that width, or the member's own folder."""
    run_dir = run_dir.resolve()
    width = base.get("width")
    for source in _candidates(str(base.get("source", "")), root):
        if source == run_dir and (width is None or str(width) == member):
            return True
        if source == run_dir / member:
            return True
    return False


def find_meta_analysis(root: str | os.PathLike, run_dir: Path, member: str) -> Path | None:
    """The folder of a meta-SAE analysis below ``root`` whose base is this run's ``member``, or ``None``."""
    for path, summary in _meta_summaries(Path(root)).values():
        if is_base_of(summary.get("base") or {}, run_dir, member, Path(root)):
            return path
    return None


def base_location(root: str | os.PathLike, base: dict[str, Any],
                  statistics: dict[str, Path]) -> tuple[str, str] | None:
    """``(run label, member)`` of the statistics (from ``find_statistics``) that describe an analysis' base SAE, so
    the viewer can link a base latent to its latent page; ``None`` when no statistics cover it."""
    for label, stats_dir in statistics.items():
        try:
            members = LatentStatistics.open(stats_dir, verify=False).members
        except StatsError:
            continue
        for member in members:
            if is_base_of(base, stats_dir.parent, member, Path(root)):
                return label, member
    return None


def meta_rows(decomposition: MetaDecomposition, j: int, n_siblings: int = 5) -> list[dict[str, Any]]:
    """Latent ``j``'s meta-latents ``[{meta, activation, siblings}]``, largest first; ``siblings`` are other base
    latents that use the same meta-latent."""
    return [{"meta": meta, "activation": value,
             "siblings": [b for b, _ in decomposition.users_of(meta) if b != j][:n_siblings]}
            for meta, value in decomposition.of_latent(j)]


def meta_latent_view(decomposition: MetaDecomposition, m: int, meta_stats: LatentStatistics | None = None,
                     n_members: int = 50) -> dict[str, Any]:
    """What the meta-latent page shows for meta-latent ``m``: its member latents by activation (largest first, at
    most ``n_members``), how many base latents use it and what fraction that is (density), and its promoted and
    suppressed tokens when the meta-SAE has statistics (``canon-pl stats --run <meta run>``)."""
    if not 0 <= m < decomposition.n_meta:
        raise MetaSAEError(f"meta-latent {m} is out of range: the meta-SAE has meta-latents "
                           f"0-{decomposition.n_meta - 1}")
    users = decomposition.users_of(m)
    view: dict[str, Any] = {"members": users[:n_members], "n_members": len(users),
                            "density": len(users) / max(decomposition.n_base, 1), "promoted": [], "suppressed": []}
    if meta_stats is not None and meta_stats.index.get("kind") == "meta_sae":
        data = meta_stats.latent(meta_stats.members[0], m)
        strings = meta_stats.token_strings()
        for key in ("promoted", "suppressed"):
            view[key] = [(strings.get(int(t), f"<{int(t)}>"), float(v))
                         for t, v in zip(data[f"{key}_tokens"], data[f"{key}_logits"])]
    return view


__all__ = ["base_location", "find_meta_analysis", "find_meta_runs", "is_base_of", "meta_latent_view", "meta_rows"]
