"""``load_sae``: one entry point for every SAE file canon-pl can read."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from canon_pl.io.checkpoint import load_lightning_checkpoint
from canon_pl.io.export import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_export
from canon_pl.io.family import MANIFEST_FILE, read_family_manifest
from canon_pl.sae import SparseAutoencoder


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu", width: int | None = None) -> SparseAutoencoder:
    """Load an SAE that takes raw activations, in eval mode.

    ``path`` may be an export folder (``cfg.json`` + ``sae.safetensors``), either of those two files, a family folder
    (``family.json``; pick the member with ``width``), or a Lightning ``.ckpt`` written by ``SAEModule`` or
    ``SAEFamilyModule`` (read with ``weights_only=True``; ``width`` picks a family member).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return load_export(path, device)
        if (path / MANIFEST_FILE).is_file():
            family = read_family_manifest(path)
            if width is None or str(width) not in family["members"]:
                raise CheckpointError(f"{path} is a family of widths {family['widths']}: pass width=... to pick one")
            return load_export(path / family["members"][str(width)], device)
        ckpts = sorted(path.glob("*.ckpt"))
        raise CheckpointError(
            f"{path} holds no {CONFIG_FILE}; pass an export folder"
            + (f" or one of its checkpoints, e.g. {ckpts[-1]}" if ckpts else "")
        )
    if path.name in (CONFIG_FILE, WEIGHTS_FILE):
        return load_export(path.parent, device)
    if path.suffix == ".ckpt":
        return load_lightning_checkpoint(path, width).to(device)
    raise CheckpointError(
        f"don't know how to read {path}: expected an export folder, {CONFIG_FILE}, {WEIGHTS_FILE} or a .ckpt"
    )
