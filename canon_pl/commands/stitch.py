"""``canon-pl stitch``: the stitching analysis of two exported SAEs, or of every adjacent pair of a family (the work
is :func:`canon_pl.study.stitch.stitch_run`)."""

from __future__ import annotations

from canon_pl.paper import DEFAULT_TAU

DESCRIPTION = """Which latents of a larger SAE are novel and which only re-split a smaller SAE's (Leask et al. 2025).
SMALL and LARGE are exports (folders with cfg.json) of the same d_in; a family folder alone (family.json) stitches
every adjacent pair of widths, and a multi-hook run (hooks.json) every hook point's family at its own hook point.
Writes <out>/<small>_<large>.json (summary and path) and .safetensors (per-latent arrays); the format is in
docs/stitching_results.md."""


def stitch(small: str, large: str | None = None, *, data: str, tokens: int = 8192, tau: float = DEFAULT_TAU,
           out: str | None = None, ce_points: int = 0, model: str | None = None, hook_point: str | None = None,
           device: str | None = None, control: str | None = None, granularity: bool = False) -> int:
    """Stitch two exported SAEs, or every adjacent pair of a family, and write each pair's results.

    Args:
        small: the smaller SAE (export folder), a family folder, or a multi-hook run (each hook point's family)
        large: the larger SAE (export folder); omit for a family
        data: an activation cache (folder with index.json, from `canon-pl cache`), or a text source (python-docs,
            pydoc-topics, a local file/glob, a hub dataset) captured through the model
        tokens: tokens to analyse
        tau: cosine threshold
        out: results folder (default <family>/stitching, or ./stitching for a pair)
        ce_points: path points at which to measure the spliced next-token loss (text data only)
        model: language model for text data (default: the SAEs' model_id)
        hook_point: hook point for text data (default: the SAEs' hook_point)
        device: cpu, cuda, cuda:1, ... (default: cuda when a GPU is present)
        control: the cross-seed control for a pair: an SAE of LARGE's width from another init seed (a family's
            controls are found in family.json)
        granularity: also walk the path at every granularity of grouping (decoder cosine, reconstruction overlap),
            for the pair and for its cross-seed control: where the path becomes monotone
    """
    from canon_pl.study.stitch import stitch_run

    return stitch_run(small, large, data=data, tokens=tokens, tau=tau, out=out, ce_points=ce_points, model=model,
                      hook_point=hook_point, device=device, control=control, granularity=granularity)


__all__ = ["stitch"]
