"""Latent statistics under a checkpoints folder, shaped for the viewer's latent page (no Streamlit imports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from canon_pl.io.validate import malformed_as
from canon_pl.stats import HIST_EDGES, LatentStatistics, StatsError
from canon_pl.viewer.folders import files_inside, inside


def find_statistics(root: str | os.PathLike, kind: str | None = "sae",
                    skipped: list[str] | None = None) -> dict[str, Path]:
    """``{run label: stats folder}`` for every readable ``stats/stats.json`` below ``root`` of this ``kind``
    (``"sae"`` for token SAEs, ``"meta_sae"`` for meta-SAEs, ``None`` for both); one that cannot be read is left out
    and, with ``skipped``, named there."""
    root = Path(root)
    found = {}
    for index in files_inside(root, "**/stats/stats.json"):
        try:
            stats = LatentStatistics.open(index.parent, verify=False)  # the index alone: a listing
        except StatsError as err:
            if skipped is not None:
                skipped.append(str(err))
            continue  # foreign or corrupt: skipped, never fatal
        if kind is not None and stats.index.get("kind", "sae") != kind:
            continue
        found[str(index.parent.parent.relative_to(root))] = index.parent
    return found


def members_by_width(stats: LatentStatistics) -> list[str]:
    """The statistics' members narrowest first (576 before 1152, each member before its seed controls), not in the
    string order of their names (which puts 1152 and 2304 before 576)."""

    def width(member: str) -> int:
        try:
            return int(stats.index["members"][member].get("d_sae") or 0)
        except (TypeError, ValueError, AttributeError):
            return 0

    return sorted(stats.members, key=lambda member: (width(member), member))


def _text(token_strings: dict[int, str], ids: list[int]) -> list[str]:
    return [token_strings.get(int(i), f"<{int(i)}>") for i in ids]


# Characters that HTML or Streamlit's markdown would read as syntax (tags, code, emphasis, math, emoji shortcodes,
# links, headings, tables): written as numeric entities so a token shows as itself.
_ENTITIES = {c: f"&#{ord(c)};" for c in "&<>\"'`*_$:~[]()#|\\!{}+-=^"}


def token_html(text: str) -> str:
    """A token's text as inert HTML for a markdown element: every syntax character as an entity, newlines as ↵,
    tabs as ⇥, runs of spaces kept."""
    body = "".join(_ENTITIES.get(c, c) for c in text.replace("\n", "↵").replace("\t", "⇥"))
    return body.replace("  ", " &nbsp;")


def highlighted_context(token_strings: dict[int, str], tokens: list[int], activations: list[float],
                        centre: int) -> str:
    """HTML: the tokens with a background proportional to the latent's activation; the centre token in bold."""
    peak = max(max(activations), 1e-9)
    spans = []
    for i, (text, act) in enumerate(zip(_text(token_strings, tokens), activations)):
        alpha = min(max(act / peak, 0.0), 1.0)
        body = token_html(text)
        if i == centre:
            body = f"<b>{body}</b>"
        spans.append(f'<span style="background: rgba(255, 140, 0, {alpha:.2f})">{body}</span>')
    return "".join(spans)


def latent_view(stats: LatentStatistics, member: str, j: int) -> dict[str, Any]:
    """What the latent page shows for latent ``j``: frequency, top and sampled examples (HTML), histogram table,
    promoted and suppressed tokens."""
    d_sae = int(stats.index["members"][member]["d_sae"])
    if not 0 <= j < d_sae:
        raise StatsError(f"latent {j} is out of range: {member} has latents 0-{d_sae - 1}")
    with malformed_as(StatsError, stats.directory, "re-run canon-pl stats"):
        return _latent_view(stats, member, j, d_sae)


def _latent_view(stats: LatentStatistics, member: str, j: int, d_sae: int) -> dict[str, Any]:
    data = stats.latent(member, j)
    strings = stats.token_strings()
    contexts = stats.contexts()
    seq = contexts.shape[1]
    window = int(stats.index["window"])

    def example(i: int, activations: list[float]) -> str:
        ctx, pos = divmod(int(i), seq)
        lo = max(pos - window, 0)
        tokens = contexts[ctx, lo:pos + window + 1].tolist()
        acts = activations[window - (pos - lo): window - (pos - lo) + len(tokens)]
        return highlighted_context(strings, tokens, acts, pos - lo)

    top = [(float(v), example(i, w.tolist())) for v, i, w in zip(data["top_values"], data["top_ids"],
                                                                 data["top_windows"]) if int(i) >= 0 and v > 0]
    samples = []
    for v, i in sorted(zip(data["sample_values"].tolist(), data["sample_ids"].tolist()), reverse=True):
        if i >= 0:
            activations = [0.0] * (2 * window + 1)
            activations[window] = v
            samples.append((v, example(i, activations)))
    edges = HIST_EDGES.tolist()
    counts = data["histogram"].tolist()
    histogram = pd.DataFrame({"log10_activation": [edges[0] - 0.125] + [e + 0.0625 for e in edges],
                              "count": counts[: len(edges) + 1]})
    return {
        "frequency": float(stats.frequencies(member)[j]),
        "top": top,
        "samples": samples,
        "histogram": histogram[histogram["count"] > 0],
        "promoted": list(zip(_text(strings, data["promoted_tokens"].tolist()), data["promoted_logits"].tolist())),
        "suppressed": list(zip(_text(strings, data["suppressed_tokens"].tolist()),
                               data["suppressed_logits"].tolist())),
        "d_sae": d_sae,
    }


__all__ = ["control_decoders", "find_statistics", "highlighted_context", "latent_view", "seed_partners",
           "token_html"]


def family_decoders(run_dir: Path) -> dict[int, torch.Tensor]:
    """Unit decoder rows ``[d_sae, d_in]`` of every width of the family at ``run_dir`` (empty outside a family, or
    when a member folder is a symlink that leads out of the family's folder)."""
    from canon_pl.io import CheckpointError
    from canon_pl.io.family import MANIFEST_FILE, read_family_manifest
    from canon_pl.io.load import load_family

    if not (run_dir / MANIFEST_FILE).is_file():
        return {}
    try:
        manifest = read_family_manifest(run_dir)
        if not all(inside(run_dir, run_dir / folder) for folder in [*manifest["members"].values(),
                                                                      *manifest.get("controls", {})]):
            return {}
        family = load_family(run_dir)
    except CheckpointError:
        return {}
    return {w: torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1) for w, sae in family.saes.items()}


def control_decoders(run_dir: Path) -> dict[str, tuple[int, torch.Tensor]]:
    """``{control folder: (width, unit decoder rows [d_sae, d_in])}`` of the family's seed controls (the same width
    as a member from another init seed); empty outside a family, or for a control that cannot be read or leads out
    of the family's folder."""
    from canon_pl.io import CheckpointError, load_sae
    from canon_pl.io.family import MANIFEST_FILE, read_family_manifest

    if not (run_dir / MANIFEST_FILE).is_file():
        return {}
    try:
        controls = read_family_manifest(run_dir).get("controls") or {}
    except CheckpointError:
        return {}
    found = {}
    for folder, control in controls.items():
        if not inside(run_dir, run_dir / folder):
            continue
        try:
            sae = load_sae(run_dir / folder)
        except CheckpointError:
            continue
        found[folder] = (int(control["width"]), torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1))
    return found


def seed_partners(decoders: dict[int, torch.Tensor], controls: dict[str, tuple[int, torch.Tensor]], member: str,
                  j: int) -> pd.DataFrame:
    """For a family member's latent ``j``: its closest latent (decoder cosine) in each seed control of its width,
    ``control, latent, cosine``: whether another seed found the same direction. Empty when it has none."""
    if not member.isdigit() or int(member) not in decoders:
        return pd.DataFrame()
    direction = decoders[int(member)][j]
    rows = []
    for folder, (width, rows_c) in sorted(controls.items()):
        if width == int(member):
            value, index = (rows_c @ direction).max(0)
            rows.append({"control": folder, "latent": int(index), "cosine": float(value)})
    return pd.DataFrame(rows)


def nearest_in_other_widths(decoders: dict[int, torch.Tensor], member: str, j: int, n: int = 3) -> pd.DataFrame:
    """For a family member's latent ``j``: its ``n`` nearest latents (decoder cosine) in every other width.
    Empty outside a family."""
    if not member.isdigit() or int(member) not in decoders:
        return pd.DataFrame()
    direction = decoders[int(member)][j]
    rows = []
    for width, rows_w in decoders.items():
        if width == int(member):
            continue
        values, index = (rows_w @ direction).topk(min(n, rows_w.shape[0]))
        rows += [{"width": width, "latent": int(i), "cosine": float(v)} for v, i in zip(values, index)]
    return pd.DataFrame(rows)
