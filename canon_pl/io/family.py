"""The family manifest ``family.json``: which exports form a family of SAE widths on one hook point; and the hook
points manifest ``hooks.json`` of a run that trained a family at each of several hook points."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from canon_pl.io.atomic import atomic_write_json
from canon_pl.io.document import DocumentKind
from canon_pl.io.validate import CheckpointError
from canon_pl.sae import SAEConfig

MANIFEST_FILE = "family.json"
FORMAT_NAME = "canon_pl.family"
FAMILY = DocumentKind(FORMAT_NAME, 1, "family manifest", CheckpointError)
"""A family folder's ``family.json``."""
HOOKS_FILE = "hooks.json"
HOOKS = DocumentKind("canon_pl.hook_families", 1, "hook points manifest", CheckpointError)
"""A multi-hook run's ``hooks.json``: its hook points, in order, and each one's family folder."""


def write_family_manifest(directory: str | os.PathLike, members: dict[int, str], cfg: SAEConfig, tokens: int,
                          controls: dict[str, dict[str, int]] | None = None,
                          variants: dict[str, dict[str, Any]] | None = None) -> Path:
    """Record ``members`` (width -> export folder relative to ``directory``), the seed ``controls`` (export folder ->
    ``{"width", "init_seed"}``: the same width from another initialisation), the sparsity ``variants`` (export
    folder -> ``{"width", <setting>: <value>...}``: the same width with other sparsity settings, width × L0) and
    what they share."""
    path = Path(directory) / MANIFEST_FILE
    atomic_write_json(path, FAMILY.stamp({
        "widths": sorted(members),
        "members": {str(w): members[w] for w in sorted(members)},
        "controls": {name: {"width": int(c["width"]), "init_seed": int(c["init_seed"])}
                     for name, c in sorted((controls or {}).items())},
        "variants": {name: dict(v) for name, v in sorted((variants or {}).items())},
        "d_in": cfg.d_in,
        "architecture": cfg.architecture,
        "k": getattr(cfg.settings, "k", None),  # the TopK family's; None for an architecture without one
        "hook_point": cfg.hook_point,
        "model_id": cfg.model_id,
        "tokens": int(tokens),
    }))
    return path


def write_hooks_manifest(directory: str | os.PathLike, families: dict[str, str]) -> Path:
    """Record ``families`` (hook point -> its family folder relative to ``directory``), in the run's order."""
    path = Path(directory) / HOOKS_FILE
    atomic_write_json(path, HOOKS.stamp({"hook_points": list(families), "families": dict(families)}))
    return path


def is_multi_hook_run(directory: str | os.PathLike) -> bool:
    return (Path(directory) / HOOKS_FILE).is_file()


def hook_families(directory: str | os.PathLike) -> dict[str, Path]:
    """``{hook point: family folder}`` of a multi-hook run (``hooks.json``), in the run's order; each folder must be
    a family folder directly inside ``directory``."""
    directory = Path(directory)
    path = directory / HOOKS_FILE
    manifest = HOOKS.read(path)
    families = manifest.get("families")
    if not (isinstance(families, dict) and families and all(isinstance(f, str) for f in families.values())):
        raise CheckpointError(f"{path} is malformed: \"families\" must map each hook point to its family folder; "
                              f"re-run the multi-hook fit or write it with write_hooks_manifest")
    found = {}
    for hook_point, folder in families.items():
        if Path(folder).name != folder or folder in (".", ".."):
            raise CheckpointError(f"{path} names the family folder {folder!r}: each hook point's family is a folder "
                                  f"directly inside the run (a name, no path)")
        if not (directory / folder / MANIFEST_FILE).is_file():
            raise CheckpointError(f"{path} lists {hook_point!r} in {folder!r}, which has no {MANIFEST_FILE}; the run "
                                  f"did not finish its export: re-run it or resume from its last checkpoint")
        found[str(hook_point)] = directory / folder
    return found


def read_family_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a family folder holds {MANIFEST_FILE} and one export per width")
    manifest = FAMILY.read(path)
    members = manifest.get("members")
    if not (isinstance(members, dict) and members and all(
            isinstance(w, str) and w.isdigit() and isinstance(f, str) and f for w, f in members.items())):
        raise CheckpointError(f"{path} is malformed: \"members\" must map each width to its export folder; "
                              f"re-write the manifest (write_family_manifest) or re-run the family")
    controls = manifest.setdefault("controls", {})
    if not (isinstance(controls, dict) and all(isinstance(c, dict) and isinstance(c.get("width"), int)
                                               for c in controls.values())):
        raise CheckpointError(f"{path} is malformed: \"controls\" must map each export folder to its "
                              f"{{\"width\", \"init_seed\"}}; re-write the manifest or re-run the family")
    variants = manifest.setdefault("variants", {})
    if not (isinstance(variants, dict) and all(isinstance(v, dict) and isinstance(v.get("width"), int)
                                               for v in variants.values())):
        raise CheckpointError(f"{path} is malformed: \"variants\" must map each export folder to its "
                              f"{{\"width\", <setting>: <value>}}; re-write the manifest or re-run the family")
    for folder in [*members.values(), *controls, *variants]:
        if Path(folder).name != folder or folder in (".", ".."):
            raise CheckpointError(f"{path} names the member folder {folder!r}: a family's members are folders "
                                  f"directly inside it (a name, no path); move the export there and re-write the "
                                  f"manifest (write_family_manifest)")
    return manifest
