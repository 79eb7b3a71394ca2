"""The stitching analysis of two exported SAEs, or of every adjacent pair of a family (``canon-pl stitch`` is the
command line of :func:`stitch_run`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from canon_pl.checks import check_counts, check_device, check_output_folder
from canon_pl.io import initial_decoder, load_sae, training_data
from canon_pl.io.family import MANIFEST_FILE, hook_families, is_multi_hook_run
from canon_pl.io.load import load_family
from canon_pl.io.layout import RunLayout
from canon_pl.stitching import (
    StitchingError,
    analyze_pair,
    check_tau,
    write_stitching_results,
)
from canon_pl.training.analysis_data import analysis_activations

def stitch_pairs(small: str, large: str | None, control: str | None, out: str | None,
           device: str) -> tuple[list[dict[str, Any]], Path]:
    """Each pair as ``analyze_pair`` keyword arguments: small, large, names, the large SAE's initial decoder and (in
    a family with seed controls) the control of the large width."""
    small_path = Path(small)
    if large is None:
        if not (small_path / MANIFEST_FILE).is_file():
            raise StitchingError(f"{small_path} is not a family folder ({MANIFEST_FILE} missing): pass SMALL and LARGE")
        family = load_family(small_path, device)
        widths = family.widths
        if len(widths) < 2:
            raise StitchingError(f"the family at {small_path} has one width ({widths}); stitching needs two")
        pairs = []
        for a, b in zip(widths, widths[1:]):
            large_dir = small_path / family.manifest["members"][str(b)]
            seed_control = family.control_of(b)
            pairs.append({"small": family.saes[a], "large": family.saes[b],
                          "names": (str(small_path / family.manifest["members"][str(a)]), str(large_dir)),
                          "large_initial_decoder": initial_decoder(large_dir),
                          "control": seed_control[1] if seed_control else None,
                          "control_name": str(small_path / seed_control[0]) if seed_control else None})
        return pairs, Path(out or RunLayout(small_path).stitching)
    pair = {"small": load_sae(small, device), "large": load_sae(large, device),
            "names": (small, large), "large_initial_decoder": initial_decoder(large),
            "small_initial_decoder": initial_decoder(small),
            "control": load_sae(control, device) if control else None, "control_name": control}
    return [pair], Path(out or RunLayout.STITCHING)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def describe_result(s: dict[str, Any]) -> str:
    """One line per pair: novel by definition and by cosine, the control's, the moved split and the path."""
    c, control = s["classes"], s.get("control")
    line = (f"{s['small']['d_sae']} -> {s['large']['d_sae']}: novel {_pct(c['novel_fraction_definition'])} by "
            f"definition, {_pct(c['novel_fraction_cosine'])} by cosine (agreement {_pct(c['agreement'])})")
    if control is not None:
        line += (f"; cross-seed control {_pct(control['novel_fraction_definition'])} / "
                 f"{_pct(control['novel_fraction_cosine'])}")
    if c["stuck_at_init_fraction"] is not None:
        line += f"; {_pct(c['stuck_at_init_fraction'])} of L's rows still at their initialisation"
    return (line + f"; FVU {s['fvu_small']:.4f} -> {s['fvu_large']:.4f}, path monotone "
            f"{s['path_monotone_fraction']:.1%}, excess {s['path_excess']:.3f}")


def stitch_run(small: str, large: str | None, *, data: str, tokens: int, tau: float, out: str | None, ce_points: int,
               model: str | None, hook_point: str | None, device: str | None, control: str | None,
               granularity: bool) -> int:
    """``canon-pl stitch`` (:func:`canon_pl.commands.stitch.stitch`, whose docstring says what each argument is):
    each pair's analysis written to ``out``."""
    check_tau(tau)
    check_counts(**{"--tokens": tokens})
    check_counts(0, **{"--ce_points": ce_points})
    device = check_device(device)
    if large is None and is_multi_hook_run(small):
        if hook_point is not None:
            raise StitchingError(f"{small} is a multi-hook run: each hook point's family is stitched at its own hook "
                                 f"point; leave out --hook_point")
        for hook, folder in hook_families(small).items():  # pairs only ever within one hook point's family
            print(f"hook point {hook}:")
            stitch_run(str(folder), None, data=data, tokens=tokens, tau=tau,
                       out=str(Path(out) / folder.name) if out else None, ce_points=ce_points, model=model,
                       hook_point=None, device=device, control=None, granularity=granularity)
        return 0
    pairs, out_dir = stitch_pairs(small, large, control, out, device)
    check_output_folder(out_dir)  # before the analysis, not after it
    x, spliced, _ = analysis_activations(data, tokens, pairs[0]["small"], ce=ce_points > 0, model=model,
                                      hook_point=hook_point, device=device,
                                      provenance=training_data(pairs[0]["names"][0]))
    if ce_points and spliced is None:
        warnings.warn("--ce_points needs text data (the LM runs on tokens); skipped for an activation cache")
    for pair in pairs:
        result = analyze_pair(activations=x, tau=tau, spliced_loss=spliced, ce_points=ce_points, progress=True,
                              data=data, granularity=granularity, **pair)
        path = write_stitching_results(result, out_dir)
        print(f"{describe_result(result.summary)}; wrote {path}")
    return 0


__all__ = ["describe_result", "stitch_pairs", "stitch_run"]
