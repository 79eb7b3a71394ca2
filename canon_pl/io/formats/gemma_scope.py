"""Gemma Scope: ``params.npz`` with W_enc ``[d_in, d_sae]``, W_dec ``[d_sae, d_in]``, b_enc, b_dec, threshold."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from canon_pl.io.validate import CheckpointError
from canon_pl.io.formats.common import imported_sae, take
from canon_pl.sae import SparseAutoencoder

PARAMS_FILE = "params.npz"


def load_gemma_scope(path: str | os.PathLike, hook_point: str | None = None,
                     model_id: str | None = None) -> SparseAutoencoder:
    """A Gemma Scope JumpReLU SAE: ``pre = x @ W_enc + b_enc`` (no ``b_dec`` subtraction),
    ``f = (pre > threshold) * relu(pre)``. ``path`` is ``params.npz`` or its folder; the file names no model or hook
    point, so pass them when known."""
    path = Path(path)
    if path.is_dir():
        path = path / PARAMS_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:  # never unpickles
            arrays = {name: torch.from_numpy(np.array(npz[name])) for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise CheckpointError(f"{path} is not a readable Gemma Scope params.npz ({type(err).__name__}: {err})") from err
    if "W_enc" not in arrays or arrays["W_enc"].dim() != 2:
        raise CheckpointError(f"{path}: no 2-D W_enc [d_in, d_sae]; found {sorted(arrays)}")
    d_in, d_sae = arrays["W_enc"].shape
    t = take(arrays, {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
                      "threshold": (d_sae,)}, path)
    return imported_sae("jumprelu", t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], subtract_b_dec=False, source=path,
                        threshold=t["threshold"], hook_point=hook_point, model_id=model_id)


__all__ = ["PARAMS_FILE", "load_gemma_scope"]
