"""Latent statistics under a checkpoints folder, shaped for the viewer's latent page (no Streamlit imports)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import pandas as pd

from canon_pl.stats import HIST_EDGES, LatentStatistics, StatsError


def find_statistics(root: str | os.PathLike) -> dict[str, Path]:
    """``{label: stats folder}`` for every readable ``stats/stats.json`` below ``root``."""
    root = Path(root)
    found = {}
    for index in sorted(root.glob("**/stats/stats.json")):
        try:
            LatentStatistics.open(index.parent)
        except StatsError:
            continue
        found[str(index.parent.parent.relative_to(root))] = index.parent
    return found


def _text(token_strings: dict[int, str], ids: list[int]) -> list[str]:
    return [token_strings.get(int(i), f"<{int(i)}>") for i in ids]


def highlighted_context(token_strings: dict[int, str], tokens: list[int], activations: list[float],
                        centre: int) -> str:
    """HTML: the tokens with a background proportional to the latent's activation; the centre token in bold."""
    peak = max(max(activations), 1e-9)
    spans = []
    for i, (text, act) in enumerate(zip(_text(token_strings, tokens), activations)):
        alpha = min(max(act / peak, 0.0), 1.0)
        body = html.escape(text).replace("\n", "↵")
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


__all__ = ["find_statistics", "highlighted_context", "latent_view"]
