"""EleutherAI sparsify 1.3: ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight`` and ``W_dec`` both
``[num_latents, d_in]``."""

from __future__ import annotations

import os
from pathlib import Path

from canon_pl.io.validate import CheckpointError
from canon_pl.io.formats.common import imported_sae, read_config, read_safetensors, take
from canon_pl.sae import SparseAutoencoder

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def load_sparsify(directory: str | os.PathLike, hook_point: str | None = None,
                  model_id: str | None = None) -> SparseAutoencoder:
    """A sparsify TopK SAE: ``pre = relu(encoder(x - b_dec))``, the top ``k`` (from ``cfg.json``) of it, decoded by
    ``W_dec`` as stored (not transposed) plus ``b_dec``. The folder is one hook point of a sparsify run; its name is
    taken as the hook point unless one is given."""
    directory = Path(directory)
    if directory.is_file():  # cfg.json or the weights: their folder
        directory = directory.parent
    cfg = read_config(directory / CONFIG_FILE, "sparsify config")
    k = cfg.get("k")
    if not isinstance(k, int) or k <= 0:
        raise CheckpointError(f"{directory / CONFIG_FILE}: sparsify stores k only in cfg.json; got {k!r}")
    for flag in ("skip_connection", "transcode"):
        if cfg.get(flag):
            raise CheckpointError(f"{directory / CONFIG_FILE}: {flag}=true (a transcoder or skip connection) is not "
                                  f"an SAE canon-pl can read")
    tensors = read_safetensors(directory / WEIGHTS_FILE)
    enc = tensors.get("encoder.weight")
    if enc is None or enc.dim() != 2:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: no 2-D encoder.weight; found {sorted(tensors)}")
    d_sae, d_in = enc.shape
    t = take(tensors, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in),
                       "b_dec": (d_in,)}, directory / WEIGHTS_FILE)
    return imported_sae("topk", t["encoder.weight"].T, t["encoder.bias"], t["W_dec"], t["b_dec"], subtract_b_dec=True,
                        source=directory, k=k, hook_point=hook_point or directory.name, model_id=model_id)


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_sparsify"]
