"""``canon-pl family --from A B ... --out DIR``: a family of widths assembled from SAEs trained anywhere (or
``--from_release RELEASE``: a SAELens release's SAEs by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from canon_pl.commands.args import run_command

DESCRIPTION = """Assemble a family from existing SAEs of one model and hook point (any format load_sae reads: canon-pl,
SAELens, Gemma Scope, dictionary_learning, sparsify, Lightning .ckpt). Each is written to <out>/<width>/ as a canon-pl
export with the same encode/decode, then <out>/family.json; the sources are not modified. Stitching, meta-SAEs,
statistics and the viewer then run on <out> as on a family trained here."""


def family(*, sources: Annotated[list[str] | None, "--from"] = None, from_release: str | None = None,
           ids: list[str] | None = None, revision: str | None = None, prefixes: bool = False, out: str,
           format: str | None = None, model: str | None = None, hook_point: str | None = None) -> int:
    """Assemble a family folder from SAEs trained anywhere.

    Args:
        sources: the SAEs (files, folders, release/sae_id or owner/repo/folder names)
        from_release: a SAELens release (its registry name), instead of --from: every SAE of it, or those in --ids
        ids: with --from_release, the SAE ids to take (default all)
        revision: the hub revision of named SAEs (default the main branch)
        prefixes: --from names one Matryoshka SAE: its nested prefixes are the family's widths
        out: the family folder to write
        format: force the sources' format (default: recognised from the files)
        model: model id to record when the sources name none (or to override; a release names TransformerLens
            models, e.g. gpt2-small, so give the Hugging Face id: --model gpt2)
        hook_point: hook point to record when the sources name none (or to override)
    """
    from dataclasses import replace

    from canon_pl.checks import check_output_folder
    from canon_pl.errors import SettingError
    from canon_pl.io import export_sae, load_sae, write_family_manifest
    from canon_pl.io.releases import release_ids

    if bool(sources) == bool(from_release):
        raise SettingError("give the SAEs with --from, or a release with --from_release (not both)")
    if ids and not from_release:
        raise SettingError("--ids picks SAEs of --from_release; with --from, list the SAEs themselves")
    if from_release:
        known = release_ids(from_release)
        unknown = sorted(set(ids or []) - set(known))
        if unknown:
            raise SettingError(f"release {from_release!r} has no SAE {unknown}; its ids are {known}")
        sources = [f"{from_release}/{sae_id}" for sae_id in (ids or known)]
    check_output_folder(out)
    saes = [load_sae(source, format=format, revision=revision) for source in sources]
    if prefixes:
        if len(saes) != 1 or not hasattr(saes[0], "prefix_sizes"):
            raise SettingError("--prefixes takes one Matryoshka SAE (architecture matryoshka_batchtopk) in --from")
        nested = saes[0]
        saes = [nested.prefix(m) for m in nested.prefix_sizes]
        sources = [f"{sources[0]} (its first {m} latents)" for m in nested.prefix_sizes]
    for sae in saes:
        sae.cfg = replace(sae.cfg, model_id=model or sae.cfg.model_id, hook_point=hook_point or sae.cfg.hook_point)
    _check_family(saes, sources)
    members = {}
    for sae, source in sorted(zip(saes, sources), key=lambda pair: pair[0].d_sae):
        origin = str(Path(source).resolve()) if Path(source).exists() else source  # a name or a prefix, as given
        export_sae(sae, Path(out) / str(sae.d_sae), extra={"imported_from": origin})
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
