"""``canon-pl family --from A B ... --out DIR``: a family of widths assembled from SAEs trained anywhere."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """Assemble a family from existing SAEs of one model and hook point (any format load_sae reads: canon-pl,
SAELens, Gemma Scope, dictionary_learning, sparsify, Lightning .ckpt). Each is written to <out>/<width>/ as a canon-pl
export with the same encode/decode, then <out>/family.json; the sources are not modified. Stitching, meta-SAEs,
statistics and the viewer then run on <out> as on a family trained here."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canon-pl family", description=DESCRIPTION)
    parser.add_argument("--from", dest="sources", nargs="+", required=True, help="the SAEs (files or folders)")
    parser.add_argument("--out", required=True, help="the family folder to write")
    parser.add_argument("--format", help="force the sources' format (default: recognised from the files)")
    parser.add_argument("--model", help="model id to record when the sources name none (or to override)")
    parser.add_argument("--hook-point", help="hook point to record when the sources name none (or to override)")
    return parser


def family_command(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    from dataclasses import replace

    from canon_pl.checks import check_output_folder
    from canon_pl.errors import CanonError
    from canon_pl.io import export_sae, load_sae, write_family_manifest

    try:
        check_output_folder(ns.out)
        saes = [load_sae(source, format=ns.format) for source in ns.sources]
        for sae in saes:
            sae.cfg = replace(sae.cfg, model_id=ns.model or sae.cfg.model_id,
                              hook_point=ns.hook_point or sae.cfg.hook_point)
        _check_family(saes, ns.sources)
    except CanonError as err:
        print(f"canon-pl family: error: {err}", file=sys.stderr)
        return 2
    out = Path(ns.out)
    members = {}
    for sae, source in sorted(zip(saes, ns.sources), key=lambda pair: pair[0].d_sae):
        export_sae(sae, out / str(sae.d_sae), extra={"imported_from": str(Path(source).resolve())})
        members[sae.d_sae] = str(sae.d_sae)
    path = write_family_manifest(out, members, saes[0].cfg, tokens=0)
    print(f"family of widths {sorted(members)} written to {path}")
    return 0


def _check_family(saes: list, sources: list[str]) -> None:
    from canon_pl.io import CheckpointError

    described = [f"{s}: d_in {sae.d_in}, {sae.d_sae} latents, {sae.cfg.model_id or 'no model'} at "
                 f"{sae.cfg.hook_point or 'no hook point'}" for s, sae in zip(sources, saes)]
    if len({sae.d_in for sae in saes}) > 1:
        raise CheckpointError("the SAEs read activations of different widths:\n  " + "\n  ".join(described))
    if len({sae.d_sae for sae in saes}) < len(saes):
        raise CheckpointError("two SAEs have the same number of latents; a family has one per width:\n  "
                              + "\n  ".join(described))
    for field in ("hook_point", "model_id"):
        values = {getattr(sae.cfg, field) for sae in saes}
        if len(values) > 1:
            raise CheckpointError(f"the SAEs disagree on {field} ({sorted(map(str, values))}); a family shares one "
                                  f"(pass --{field.replace('_id', '').replace('_', '-')} if they are the same one "
                                  f"under different names):\n  " + "\n  ".join(described))


__all__ = ["family_command"]
