"""Safe reading of Lightning ``.ckpt`` files written by :class:`canon_pl.training.SAEModule`.

Only ``torch.load(weights_only=True)`` is ever used: a checkpoint holding arbitrary pickled objects is refused
without executing them.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from canon_pl.io.export import CheckpointError, check_shapes_before_building
from canon_pl.io.validate import STRUCTURAL_ERRORS, malformed_as, regular_file
from canon_pl.sae import SAEConfig, SAEConfigError, SAESettings, SparseAutoencoder, build_sae
from canon_pl.sae.config import LEGACY_KEYS

MEMBER_PREFIX = "members."


def newest_checkpoint(run: str | os.PathLike) -> Path | None:
    """The newest whole Lightning checkpoint of the run folder ``run`` (``RunLayout.checkpoints``): the highest
    ``step=`` in a name, else the most recently written ``.ckpt``; ``last.ckpt`` only when it is a file or resolves
    to one (a kill can leave the link dangling, and resuming must not then start again from step 0)."""
    from canon_pl.io.layout import RunLayout

    return newest_in_folder(RunLayout(Path(run)).checkpoints)


def newest_in_folder(folder: Path) -> Path | None:
    """The newest whole ``.ckpt`` in ``folder`` (as :func:`newest_checkpoint` picks it)."""
    import re

    if not folder.is_dir():
        return None
    whole = [p for p in folder.glob("*.ckpt") if p.is_file() and not p.is_symlink() and p.name != "last.ckpt"]

    def step(path: Path) -> int:
        match = re.search(r"step=(\d+)", path.name)
        return int(match.group(1)) if match else -1

    if whole:
        return max(whole, key=lambda p: (step(p), p.stat().st_mtime))
    last = folder / "last.ckpt"
    return last if last.is_file() else None


def resolve_last_link(path: str | os.PathLike) -> Path:
    """``path``, or, when it is a ``last.ckpt`` link left dangling (a kill between Lightning removing the old
    checkpoint and re-linking ``last.ckpt``), the newest whole checkpoint beside it; a dangling link with nothing
    beside it is returned as it is (the reader then names it)."""
    path = Path(path)
    if path.name == "last.ckpt" and path.is_symlink() and not path.exists():
        newest = newest_in_folder(path.parent)
        if newest is not None:
            return newest
    return path


def safe_torch_load(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` restricted to tensors and plain containers, with errors that name the problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    regular_file(path, CheckpointError, "point at a checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (not a zip archive: truncated or corrupt?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "global" in line), "")
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain containers, which "
            f"could run code on this machine (rejected by torch.load(weights_only=True)) {detail}".rstrip()
        ) from err
    except (zipfile.BadZipFile, OSError, *STRUCTURAL_ERRORS) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a Lightning checkpoint dict")
    return obj


def load_lightning_checkpoint(path: str | os.PathLike, width: int | None = None) -> SparseAutoencoder:
    """An SAE from an ``SAEModule`` / ``SAEFamilyModule`` checkpoint, with its activation scale folded in (takes raw
    activations). ``width`` picks a family member; it may be left out when there is only one."""
    ckpt = safe_torch_load(path)
    with malformed_as(CheckpointError, path, "the checkpoint is corrupt: use an earlier one"):
        return _sae_from_checkpoint(ckpt, Path(path), width)


def _sae_from_checkpoint(ckpt: dict[str, Any], path: Path, width: int | None) -> SparseAutoencoder:
    state = ckpt.get("state_dict")
    hparams = ckpt.get("hyper_parameters")
    names = {key.split(".")[1] for key in state or {} if isinstance(key, str) and key.startswith(MEMBER_PREFIX)}
    members = sorted(int(name) for name in names if name.isdigit())  # the widths; seed controls are "<w>_seed<s>"
    if not isinstance(state, dict) or not isinstance(hparams, dict) or not members:
        raise CheckpointError(
            f"{path} is not a canon-pl SAEModule checkpoint (no 'state_dict' with SAE members and no "
            f"'hyper_parameters'); for another library's file use the matching loader"
        )
    if width is None:
        if len(members) > 1:
            raise CheckpointError(f"{path} holds a family of widths {members}: pass width=... to pick one")
        width = members[0]
    if width not in members:
        raise CheckpointError(f"{path} has no member of width {width}; it holds {members}")
    known = {"d_in", "architecture", "input_norm", "hook_point", "model_id", *LEGACY_KEYS}
    stored = (ckpt.get("canon_pl_sae_configs") or {}).get(str(width))
    try:
        if isinstance(stored, dict):  # written by canon-pl since the meta-SAE module: the member's own config
            cfg = SAEConfig.from_dict(stored)
        elif isinstance(hparams.get("sae"), dict):  # the module's settings, as its hyper-parameters hold them
            cfg = SAESettings.from_value(hparams["sae"]).sae_config(
                int(hparams["d_in"]), width, hparams.get("hook_point"), hparams.get("model_id"))
        else:
            cfg = SAEConfig.from_dict({"d_sae": width, **{key: value for key, value in hparams.items() if key in known}})
    except (TypeError, SAEConfigError) as err:
        raise CheckpointError(f"{path}: hyper-parameters do not describe an SAE: {err}") from err
    prefix = f"{MEMBER_PREFIX}{width}."
    sae_state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    check_shapes_before_building(cfg, {k: tuple(v.shape) for k, v in sae_state.items() if hasattr(v, "shape")},
                                 str(path))
    sae = build_sae(cfg)
    try:
        sae.load_state_dict(sae_state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: SAE weights do not match its hyper-parameters: {err}") from err
    scale = state.get("activation_scale")
    scale = float(scale) if scale is not None and bool(torch.isfinite(scale)) else 1.0
    return sae.fold_activation_scale(scale).eval()
