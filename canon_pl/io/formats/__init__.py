"""Other libraries' SAE files: recognised from local files and read into canon-pl SAEs with the source's own
encode/decode behaviour (SAELens, Gemma Scope, dictionary_learning, sparsify); SAELens written back. Nothing is
unpickled: safetensors, ``np.load(allow_pickle=False)`` and ``torch.load(weights_only=True)`` only."""

from __future__ import annotations

import os
from pathlib import Path

from canon_pl.io.export import CONFIG_FILE, FORMAT_NAME, CheckpointError
from canon_pl.io.formats import dictionary_learning, gemma_scope, saelens, sparsify
from canon_pl.io.formats.dictionary_learning import load_dictionary_learning
from canon_pl.io.formats.gemma_scope import load_gemma_scope
from canon_pl.io.formats.saelens import export_saelens, load_saelens
from canon_pl.io.formats.sparsify import load_sparsify
from canon_pl.io.validate import read_json

FOREIGN_FORMATS = ("saelens", "gemma_scope", "dictionary_learning", "sparsify")
LOADERS = {"saelens": load_saelens, "gemma_scope": load_gemma_scope, "dictionary_learning": load_dictionary_learning,
           "sparsify": load_sparsify}


def detect_format(path: str | os.PathLike) -> str:
    """Which format a local SAE file or folder is in: ``canon_pl``, ``family``, ``lightning`` or one of
    ``FOREIGN_FORMATS``. Unknown or ambiguous folders raise naming the files found."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".ckpt":
            return "lightning"
        if path.suffix == ".npz":
            return "gemma_scope"
        if path.name == dictionary_learning.WEIGHTS_FILE:
            return "dictionary_learning"
        return detect_format(path.parent)
    found = []
    cfg_path = path / CONFIG_FILE
    cfg = read_json(cfg_path, CheckpointError, "config") if cfg_path.is_file() else None
    if isinstance(cfg, dict) and str(cfg.get("format", "")) == FORMAT_NAME:
        found.append("canon_pl")
    elif (path / saelens.WEIGHTS_FILE).is_file():
        found.append("saelens")
    elif isinstance(cfg, dict) and (path / sparsify.WEIGHTS_FILE).is_file():
        found.append("sparsify")
    if (path / "family.json").is_file():
        found.append("family")
    if (path / gemma_scope.PARAMS_FILE).is_file():
        found.append("gemma_scope")
    if (path / dictionary_learning.WEIGHTS_FILE).is_file():
        found.append("dictionary_learning")
    if len(found) == 1:
        return found[0]
    files = sorted(p.name for p in path.iterdir())[:20] if path.is_dir() else []
    if not found:
        raise CheckpointError(
            f"{path} is not an SAE canon-pl recognises (files: {files}): expected a canon-pl export (cfg.json with "
            f"\"format\": \"{FORMAT_NAME}\"), a family (family.json), SAELens (cfg.json + sae_weights.safetensors), "
            f"sparsify (cfg.json + sae.safetensors), Gemma Scope (params.npz), dictionary_learning (ae.pt) or a "
            f"Lightning .ckpt")
    raise CheckpointError(f"{path} is ambiguous: it looks like {' and '.join(found)} (files: {files}); pass format= "
                          f"to choose, or point at the file itself")


__all__ = ["FOREIGN_FORMATS", "LOADERS", "detect_format", "export_saelens", "load_dictionary_learning",
           "load_gemma_scope", "load_saelens", "load_sparsify"]
