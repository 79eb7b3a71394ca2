"""The family manifest ``family.json``: which exports form a family of SAE widths on one hook point."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canon_pl.io.atomic import atomic_write_json
from canon_pl.io.export import CheckpointError
from canon_pl.io.validate import read_json
from canon_pl.sae import SAEConfig, SparseAutoencoder

MANIFEST_FILE = "family.json"
FORMAT_NAME = "canon_pl.family"


def write_family_manifest(directory: str | os.PathLike, members: dict[int, str], cfg: SAEConfig, tokens: int) -> Path:
    """Record ``members`` (width -> export folder relative to ``directory``) and what they share."""
    from canon_pl import __version__

    path = Path(directory) / MANIFEST_FILE
    atomic_write_json(path, {
        "format": FORMAT_NAME,
        "canon_pl_version": __version__,
        "widths": sorted(members),
        "members": {str(w): members[w] for w in sorted(members)},
        "d_in": cfg.d_in,
        "architecture": cfg.architecture,
        "k": cfg.k,
        "hook_point": cfg.hook_point,
        "model_id": cfg.model_id,
        "tokens": int(tokens),
    })
    return path


def read_family_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a family folder holds {MANIFEST_FILE} and one export per width")
    manifest = read_json(path, CheckpointError, "family manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a canon-pl family manifest (no \"format\": \"{FORMAT_NAME}\")")
    members = manifest.get("members")
    if not (isinstance(members, dict) and members and all(
            isinstance(w, str) and w.isdigit() and isinstance(f, str) and f for w, f in members.items())):
        raise CheckpointError(f"{path} is malformed: \"members\" must map each width to its export folder; "
                              f"re-write the manifest (write_family_manifest) or re-run the family")
    return manifest


@dataclass
class SAEFamily:
    """Loaded members of a family, smallest first: ``saes[width]`` takes raw activations."""

    directory: Path
    manifest: dict[str, Any]
    saes: dict[int, SparseAutoencoder]

    @property
    def widths(self) -> list[int]:
        return sorted(self.saes)


def load_family(directory: str | os.PathLike, device: str = "cpu") -> SAEFamily:
    """Every member listed in ``family.json``; each is checked against the manifest's shared fields."""
    directory = Path(directory)
    manifest = read_family_manifest(directory)
    if not isinstance(manifest.get("d_in"), int):
        raise CheckpointError(f"{directory / MANIFEST_FILE} is malformed: \"d_in\" must be an integer")
    saes = {}
    from canon_pl.io.load import load_sae

    for width, folder in manifest["members"].items():
        sae = load_sae(directory / folder, device)  # a canon-pl export or another library's files
        if sae.d_sae != int(width) or sae.d_in != manifest["d_in"] or sae.cfg.hook_point != manifest.get("hook_point"):
            raise CheckpointError(
                f"{directory / folder} (d_sae={sae.d_sae}, d_in={sae.d_in}, hook_point={sae.cfg.hook_point!r}) does "
                f"not match {MANIFEST_FILE} (width {width}, d_in {manifest['d_in']}, {manifest.get('hook_point')!r})"
            )
        saes[int(width)] = sae
    return SAEFamily(directory, manifest, saes)
