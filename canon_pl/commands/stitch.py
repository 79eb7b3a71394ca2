"""``canon-pl stitch``: the stitching analysis of two exported SAEs, or of every adjacent pair of a family."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from canon_pl.checks import check_counts, check_device, check_output_folder
from canon_pl.errors import CanonError
from canon_pl.io import initial_decoder, load_sae, training_data
from canon_pl.io.family import MANIFEST_FILE, load_family
from canon_pl.io.layout import RunLayout
from canon_pl.stitching import (
    DEFAULT_TAU,
    StitchingError,
    analyze_pair,
    check_tau,
    write_stitching_results,
)
from canon_pl.training.analysis_data import analysis_activations

DESCRIPTION = """Which latents of a larger SAE are novel and which only re-split a smaller SAE's (Leask et al. 2025).
SMALL and LARGE are exports (folders with cfg.json) of the same d_in; a family folder alone (family.json) stitches
every adjacent pair of widths. Writes <out>/<small>_<large>.json (summary and path) and .safetensors (per-latent
arrays); the format is in docs/stitching_results.md."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canon-pl stitch", description=DESCRIPTION)
    parser.add_argument("small", help="the smaller SAE (export folder), or a family folder")
    parser.add_argument("large", nargs="?", help="the larger SAE (export folder); omit for a family")
    parser.add_argument("--data", required=True,
                        help="an activation cache (folder with index.json, from `canon-pl cache`), or a text source "
                             "(python-docs, pydoc-topics, a local file/glob, a hub dataset) captured through the model")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens to analyse (default 8192)")
    parser.add_argument("--tau", type=float, default=DEFAULT_TAU, help="cosine threshold (default 0.7)")
    parser.add_argument("--out", help="results folder (default <family>/stitching, or ./stitching for a pair)")
    parser.add_argument("--ce-points", type=int, default=0,
                        help="path points at which to measure the spliced next-token loss (text data only)")
    parser.add_argument("--model", help="language model for text data (default: the SAEs' model_id)")
    parser.add_argument("--hook-point", help="hook point for text data (default: the SAEs' hook_point)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--control", help="the cross-seed control for a pair: an SAE of LARGE's width from another "
                                          "init seed (a family's controls are found in family.json)")
    return parser


def _pairs(ns: argparse.Namespace) -> tuple[list[dict[str, Any]], Path]:
    """Each pair as ``analyze_pair`` keyword arguments: small, large, names, the large SAE's initial decoder and (in
    a family with seed controls) the control of the large width."""
    small_path = Path(ns.small)
    if ns.large is None:
        if not (small_path / MANIFEST_FILE).is_file():
            raise StitchingError(f"{small_path} is not a family folder ({MANIFEST_FILE} missing): pass SMALL and LARGE")
        family = load_family(small_path, ns.device)
        widths = family.widths
        if len(widths) < 2:
            raise StitchingError(f"the family at {small_path} has one width ({widths}); stitching needs two")
        pairs = []
        for a, b in zip(widths, widths[1:]):
            large_dir = small_path / family.manifest["members"][str(b)]
            control = family.control_of(b)
            pairs.append({"small": family.saes[a], "large": family.saes[b],
                          "names": (str(small_path / family.manifest["members"][str(a)]), str(large_dir)),
                          "large_initial_decoder": initial_decoder(large_dir),
                          "control": control[1] if control else None,
                          "control_name": str(small_path / control[0]) if control else None})
        return pairs, Path(ns.out or RunLayout(small_path).stitching)
    control = load_sae(ns.control, ns.device) if ns.control else None
    pair = {"small": load_sae(ns.small, ns.device), "large": load_sae(ns.large, ns.device),
            "names": (ns.small, ns.large), "large_initial_decoder": initial_decoder(ns.large),
            "small_initial_decoder": initial_decoder(ns.small),
            "control": control, "control_name": ns.control}
    return [pair], Path(ns.out or "stitching")


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


def stitch_command(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    try:
        check_tau(ns.tau)
        check_counts(**{"--tokens": ns.tokens})
        check_counts(0, **{"--ce-points": ns.ce_points})
        check_device(ns.device)
        pairs, out = _pairs(ns)
        check_output_folder(out)  # before the analysis, not after it
        x, spliced = analysis_activations(ns.data, ns.tokens, pairs[0]["small"], ce=ns.ce_points > 0,
                                          model=ns.model, hook_point=ns.hook_point, device=ns.device,
                                          provenance=training_data(pairs[0]["names"][0]))
        if ns.ce_points and spliced is None:
            warnings.warn("--ce-points needs text data (the LM runs on tokens); skipped for an activation cache")
        for pair in pairs:
            result = analyze_pair(activations=x, tau=ns.tau, spliced_loss=spliced, ce_points=ns.ce_points,
                                  progress=True, data=ns.data, **pair)
            path = write_stitching_results(result, out)
            print(f"{describe_result(result.summary)}; wrote {path}")
    except CanonError as err:
        print(f"canon-pl stitch: error: {err}", file=sys.stderr)
        return 2
    return 0
