"""``canon-pl family --from A B ... --out DIR``: a family of widths assembled from SAEs trained anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from canon_pl.commands.args import run_command

DESCRIPTION = """Assemble a family from existing SAEs of one model and hook point (any format load_sae reads: canon-pl,
SAELens, Gemma Scope, dictionary_learning, sparsify, Lightning .ckpt). Each is written to <out>/<width>/ as a canon-pl
export with the same encode/decode, then <out>/family.json; the sources are not modified. Stitching, meta-SAEs,
statistics and the viewer then run on <out> as on a family trained here."""


def family(*, sources: Annotated[list[str], "--from"], out: str, format: str | None = None, model: str | None = None,
           hook_point: str | None = None) -> int:
    """Assemble a family folder from SAEs trained anywhere.

    Args:
        sources: the SAEs (files or folders)
        out: the family folder to write
        format: force the sources' format (default: recognised from the files)
        model: model id to record when the sources name none (or to override)
        hook_point: hook point to record when the sources name none (or to override)
    """
    from dataclasses import replace

    from canon_pl.checks import check_output_folder
    from canon_pl.io import export_sae, load_sae, write_family_manifest

    check_output_folder(out)
    saes = [load_sae(source, format=format) for source in sources]
    for sae in saes:
        sae.cfg = replace(sae.cfg, model_id=model or sae.cfg.model_id, hook_point=hook_point or sae.cfg.hook_point)
    _check_family(saes, sources)
    members = {}
    for sae, source in sorted(zip(saes, sources), key=lambda pair: pair[0].d_sae):
        export_sae(sae, Path(out) / str(sae.d_sae), extra={"imported_from": str(Path(source).resolve())})
        members[sae.d_sae] = str(sae.d_sae)
    path = write_family_manifest(out, members, saes[0].cfg, tokens=0)
    print(f"family of widths {sorted(members)} written to {path}")
    return 0


def family_command(argv: list[str]) -> int:
    return run_command(family, argv, "family", DESCRIPTION)


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
                                  f"(pass --{field.replace('_id', '')} if they are the same one "
                                  f"under different names):\n  " + "\n  ".join(described))


__all__ = ["family", "family_command"]
