"""``load_sae``: one entry point for every SAE file canon-pl can read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from canon_pl.io.checkpoint import load_lightning_checkpoint
from canon_pl.io.export import CheckpointError, load_export
from canon_pl.io.family import MANIFEST_FILE, read_family_manifest
from canon_pl.io.validate import malformed_as
from canon_pl.sae import SparseAutoencoder


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu", width: int | None = None,
             format: str | None = None, revision: str | None = None, trust_code: bool = False) -> SparseAutoencoder:
    """Load an SAE that takes raw activations, in eval mode, whatever library wrote it.

    ``path`` may be a canon-pl export folder (``cfg.json`` + ``sae.safetensors``) or either file, a family folder
    (``family.json``; pick the member with ``width``), a Lightning ``.ckpt`` written by ``SAEModule`` or
    ``SAEFamilyModule`` (``width`` picks a family member), or another library's files: SAELens (``cfg.json`` +
    ``sae_weights.safetensors``), Gemma Scope (``params.npz``), dictionary_learning (``ae.pt`` + ``config.json``) or
    sparsify (``cfg.json`` + ``sae.safetensors``). The format is recognised from the files; ``format=`` forces one
    (``canon_pl``, ``lightning``, ``saelens``, ``gemma_scope``, ``dictionary_learning``, ``sparsify``). Nothing is
    unpickled beyond tensors and plain containers.

    A name that is not a local path is looked up as a pretrained SAE (:mod:`canon_pl.io.releases`): a SAELens
    release and SAE id (``gpt2-small-res-jb-feature-splitting/blocks.8.hook_resid_pre_768``) or a Hugging Face
    repository folder (``EleutherAI/sae-llama-3-8b-32x/layers.10``), at ``revision`` (default: the main branch),
    fetched into the Hugging Face cache. A release read from a TransformerLens model with ``center_writing_weights``
    (the paper's GPT-2 releases) centres each input, as that model's residual stream is centred.

    Loading runs no code a file names: an architecture that is not built in loads when an installed package declares
    it (entry-point group ``canon_pl.architectures``), or, for a file you trust, with ``trust_code=True`` (the module
    the export records is imported; ``CANON_PL_TRUST_CODE=1`` says the same for every command and viewer page).
    """
    from canon_pl.io.formats import FOREIGN_FORMATS, LOADERS, detect_format
    from canon_pl.io.releases import fetch, parse_name

    if not Path(path).exists():
        release = parse_name(str(path), revision)
        if release is None:
            raise CheckpointError(f"{path} does not exist (and is not a release/sae_id or owner/repo/folder name)")
        sae = load_sae(fetch(release), device, width, format or release.format)
        if release.input_norm and sae.cfg.input_norm == "none":
            sae.cfg = replace(sae.cfg, input_norm=release.input_norm)
        return sae
    path = Path(path)
    kind = format or detect_format(path)
    if kind in FOREIGN_FORMATS:
        with malformed_as(CheckpointError, path, f"its {kind} files are corrupt or not what their names say"):
            return LOADERS[kind](path).to(device)
    if kind == "lightning":
        return load_lightning_checkpoint(path, width).to(device)
    if kind == "family":
        family = read_family_manifest(path)
        if width is None or str(width) not in family["members"]:
            raise CheckpointError(f"{path} is a family of widths {family['widths']}: pass width=... to pick one")
        return load_sae(path / family["members"][str(width)], device, trust_code=trust_code)
    if kind != "canon_pl":
        raise CheckpointError(f"unknown format {kind!r}; choose one of canon_pl, lightning, {', '.join(FOREIGN_FORMATS)}")
    return load_export(path if path.is_dir() else path.parent, device, trust_code)


@dataclass
class SAEFamily:
    """Loaded members of a family, smallest first: ``saes[width]`` takes raw activations; ``controls[width]`` lists
    ``(folder name, SAE)`` of the same width from other init seeds (the cross-seed control)."""

    directory: Path
    manifest: dict[str, Any]
    saes: dict[int, SparseAutoencoder]
    controls: dict[int, list[tuple[str, SparseAutoencoder]]] = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        return sorted(self.saes)

    def control_of(self, width: int) -> tuple[str, SparseAutoencoder] | None:
        """The first seed control of ``width`` (folder name, SAE), or ``None``."""
        found = self.controls.get(width)
        return found[0] if found else None


def load_family(directory: str | os.PathLike, device: str = "cpu", trust_code: bool = False) -> SAEFamily:
    """Every member listed in ``family.json``; each is checked against the manifest's shared fields (``trust_code``:
    as :func:`load_sae`)."""
    directory = Path(directory)
    manifest = read_family_manifest(directory)
    if not isinstance(manifest.get("d_in"), int):
        raise CheckpointError(f"{directory / MANIFEST_FILE} is malformed: \"d_in\" must be an integer")
    saes = {}
    def load_member(width: int, folder: str) -> SparseAutoencoder:
        sae = load_sae(directory / folder, device, trust_code=trust_code)  # canon-pl's export or another library's
        if sae.d_sae != int(width) or sae.d_in != manifest["d_in"] or sae.cfg.hook_point != manifest.get("hook_point"):
            raise CheckpointError(
                f"{directory / folder} (d_sae={sae.d_sae}, d_in={sae.d_in}, hook_point={sae.cfg.hook_point!r}) does "
                f"not match {MANIFEST_FILE} (width {width}, d_in {manifest['d_in']}, {manifest.get('hook_point')!r})"
            )
        return sae

    for width, folder in manifest["members"].items():
        saes[int(width)] = load_member(int(width), folder)
    controls: dict[int, list[tuple[str, SparseAutoencoder]]] = {}
    for folder, control in manifest["controls"].items():
        controls.setdefault(control["width"], []).append((folder, load_member(control["width"], folder)))
    return SAEFamily(directory, manifest, saes, controls)
