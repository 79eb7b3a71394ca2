"""``canon-pl family --from A B ... --out DIR``: a family of widths assembled from SAEs trained anywhere (or
``--from_release RELEASE``: a SAELens release's SAEs by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any


DESCRIPTION = """Assemble a family from existing SAEs of one model and hook point (any format load_sae reads: canon-pl,
SAELens, Gemma Scope, dictionary_learning, sparsify, Lightning .ckpt). Each is written to <out>/<width>/ as a canon-pl
export with the same encode/decode, then <out>/family.json; the sources are not modified. Stitching, meta-SAEs,
statistics and the viewer then run on <out> as on a family trained here."""


def family(*, sources: Annotated[list[str] | None, "--from"] = None, from_release: str | None = None,
           ids: list[str] | None = None, revision: str | None = None, prefixes: bool = False,
           prefix_controls: list[str] | None = None, out: str, format: str | None = None, model: str | None = None,
           hook_point: str | None = None) -> int:
    """Assemble a family folder from SAEs trained anywhere.

    Args:
        sources: the SAEs (files, folders, release/sae_id or owner/repo/folder names)
        from_release: a SAELens release (its registry name), instead of --from: every SAE of it, or those in --ids
        ids: with --from_release, the SAE ids to take (default all)
        revision: the hub revision of named SAEs (default the main branch)
        prefixes: --from names one Matryoshka SAE: its nested prefixes are the family's widths
        prefix_controls: with --prefixes, the same Matryoshka SAE trained from other init seeds (canon-pl exports):
            their prefixes are the family's cross-seed controls, <width>_seed<seed>, one per prefix width
        out: the family folder to write
        format: force the sources' format (default: recognised from the files)
        model: model id to record when the sources name none (or to override; a release names TransformerLens
            models, e.g. gpt2-small, so give the Hugging Face id: --model gpt2)
        hook_point: hook point to record when the sources name none (or to override)
    """
    from dataclasses import replace

    from canon_pl.checks import check_output_folder
    from canon_pl.errors import SettingError
    from canon_pl.io import load_sae, write_family_manifest
    from canon_pl.io.releases import release_ids

    if bool(sources) == bool(from_release):
        raise SettingError("give the SAEs with --from, or a release with --from_release (not both)")
    if ids and not from_release:
        raise SettingError("--ids picks SAEs of --from_release; with --from, list the SAEs themselves")
    if prefix_controls and not prefixes:
        raise SettingError("--prefix_controls are other seeds of a Matryoshka SAE: give them with --prefixes")
    if from_release:
        known = release_ids(from_release)
        unknown = sorted(set(ids or []) - set(known))
        if unknown:
            raise SettingError(f"release {from_release!r} has no SAE {unknown}; its ids are {known}")
        sources = [f"{from_release}/{sae_id}" for sae_id in (ids or known)]
    check_output_folder(out)
    saes = [load_sae(source, format=format, revision=revision) for source in sources]
    controls: list[tuple[str, Any, str, int]] = []  # (folder, prefix SAE, source, init seed)
    training = None  # a Matryoshka's init seed and shape, so its prefixes' initial decoders can be rebuilt
    if prefixes:
        if len(saes) != 1 or not hasattr(saes[0], "prefix_sizes"):
            raise SettingError("--prefixes takes one Matryoshka SAE (architecture matryoshka_batchtopk) in --from")
        nested = saes[0]
        nested_seed = _init_seed(sources[0])
        training = _prefix_training(nested, nested_seed)
        controls = _prefix_controls(nested, nested_seed, prefix_controls or [], format)
        saes = [nested.prefix(m) for m in nested.prefix_sizes]
        sources = [f"{sources[0]} (its first {m} latents)" for m in nested.prefix_sizes]
    for sae in [*saes, *(c[1] for c in controls)]:
        sae.cfg = replace(sae.cfg, model_id=model or sae.cfg.model_id, hook_point=hook_point or sae.cfg.hook_point)
    _check_family(saes, sources)
    members = {}
    for sae, source in sorted(zip(saes, sources), key=lambda pair: pair[0].d_sae):
        members[sae.d_sae] = str(sae.d_sae)
        _export(sae, Path(out) / members[sae.d_sae], source, training)
    for folder, sae, source, seed in controls:
        _export(sae, Path(out) / folder, source, _prefix_training(nested, seed))
    path = write_family_manifest(out, members, saes[0].cfg, tokens=0,
                                 controls={folder: {"width": sae.d_sae, "init_seed": seed}
                                           for folder, sae, _, seed in controls})
    shown = f" and their seed controls {[c[0] for c in controls]}" if controls else ""
    print(f"family of widths {sorted(members)}{shown} written to {path}")
    return 0


def _export(sae: Any, folder: Path, source: str, training: dict[str, Any] | None = None) -> None:
    from canon_pl.io import export_sae

    origin = str(Path(source).resolve()) if Path(source).exists() else source  # a name or a prefix, as given
    export_sae(sae, folder, extra={"imported_from": origin, **({"training": training} if training else {})})


def _prefix_training(nested: Any, seed: int | None) -> dict[str, Any] | None:
    """What a prefix's export records of its Matryoshka's training: the init seed and the whole SAE's width and
    architecture (``canon_pl.io.export.PREFIX_OF``), or ``None`` when the seed is not known."""
    from canon_pl.io.export import PREFIX_OF

    if seed is None:
        return None
    return {"init_seed": seed, PREFIX_OF: {"d_sae": nested.d_sae, "architecture": nested.cfg.architecture}}


def _init_seed(source: str) -> int | None:
    """The init seed a canon-pl export records (``training.init_seed`` of its cfg.json), else ``None``."""
    from canon_pl.io import training_record

    seed = training_record(source).get("init_seed") if Path(source).is_dir() else None
    return seed if isinstance(seed, int) else None


def _prefix_controls(nested: Any, nested_seed: int | None, others: list[str],
                     format: str | None) -> list[tuple[str, Any, str, int]]:
    """Each other seed's prefixes as ``(control folder, prefix SAE, source, init seed)``: the same Matryoshka
    (architecture, width, prefix sizes) from another initialisation, its seed read from its export."""
    from canon_pl.errors import SettingError
    from canon_pl.io import load_sae
    from canon_pl.training.module import control_key

    controls = []
    for source in others:
        other = load_sae(source, format=format)
        if getattr(other, "prefix_sizes", None) != nested.prefix_sizes or other.d_in != nested.d_in:
            raise SettingError(f"--prefix_controls {source}: not the same Matryoshka SAE as --from (prefix sizes "
                               f"{getattr(other, 'prefix_sizes', None)}, d_in {other.d_in}; --from has "
                               f"{nested.prefix_sizes}, d_in {nested.d_in})")
        seed = _init_seed(source)
        if seed is None:
            raise SettingError(f"--prefix_controls {source}: its init seed is not recorded (a canon-pl export records "
                               f"it in cfg.json's training.init_seed); a seed control needs one")
        if seed == nested_seed or seed in {c[3] for c in controls}:
            raise SettingError(f"--prefix_controls {source}: init seed {seed} is already taken (--from's or another "
                               f"control's); a seed control is the same SAE from a different seed")
        controls += [(control_key(m, seed), other.prefix(m), f"{source} (its first {m} latents)", seed)
                     for m in other.prefix_sizes]
    return controls



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


__all__ = ["family"]
