"""What every importer shares: reading tensors safely and building our SAE with the source's encode/decode rule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from canon_pl.io.validate import CheckpointError
from canon_pl.io.validate import STRUCTURAL_ERRORS, read_json, regular_file
from canon_pl.sae import SAEConfig, SAEConfigError, SparseAutoencoder, build_sae


INTEGER_TENSORS = ("k", "group_sizes")
"""Tensors the formats store as integers (TopK's ``k``, a Matryoshka SAE's ``group_sizes``); every other is float."""


def read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_safetensors_bytes(regular_file(path, CheckpointError, "point at the SAE's own file").read_bytes())
    except (OSError, SafetensorError, *STRUCTURAL_ERRORS) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err


def read_config(path: Path, what: str) -> dict[str, Any]:
    cfg = read_json(path, CheckpointError, what)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not a {what}: expected a JSON object")
    return cfg


def take(tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...] | None], source: str | os.PathLike,
         optional: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Exactly the tensors named in ``expected`` (shape, or ``None`` for any), as float32: a missing, unknown or
    mis-shaped tensor, or a NaN, is an error naming it. ``optional`` names may be absent."""
    missing = sorted(set(expected) - set(tensors) - set(optional))
    unknown = sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise CheckpointError(f"{source}: missing tensors {missing}, unknown tensors {unknown}; expected "
                              f"{sorted(expected)}")
    out = {}
    for name, shape in expected.items():
        if name not in tensors:
            continue
        value = tensors[name]
        if not isinstance(value, Tensor) or not value.is_floating_point() and name not in INTEGER_TENSORS:
            raise CheckpointError(f"{source}: {name} is not a floating-point tensor")
        if shape is not None and tuple(value.shape) != shape:
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(value.shape)}, expected {shape}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: tensor {name} contains NaN or Inf")
        out[name] = value.detach().float() if value.is_floating_point() else value
    return out


@torch.no_grad()
def imported_sae(architecture: str, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, *,
                 subtract_b_dec: bool, source: str | os.PathLike, threshold: Tensor | None = None,
                 k: int | None = None, hook_point: str | None = None, model_id: str | None = None,
                 input_norm: str = "none", settings: dict[str, Any] | None = None) -> SparseAutoencoder:
    """Our SAE computing exactly the source's ``f = σ((x - b_dec·[subtract_b_dec]) @ W_enc + b_enc)`` and
    ``x̂ = f @ W_dec + b_dec``. W_enc ``[d_in, d_sae]``, b_enc ``[d_sae]``, W_dec ``[d_sae, d_in]``, b_dec ``[d_in]``,
    threshold ``[]`` or ``[d_sae]``. A source that does not subtract ``b_dec`` before encoding gets
    ``b_enc + b_dec @ W_enc`` (our encoder always subtracts it): the same pre-activations. ``input_norm``: what the
    source does to each input first (:class:`canon_pl.sae.SAEConfig`); ``k`` and ``settings``: the architecture's
    own fields (its settings class's)."""
    d_in, d_sae = W_enc.shape
    try:
        values = {**(settings or {}), **({"k": k} if k is not None else {})}
        cfg = SAEConfig(d_in, d_sae, architecture, hook_point=hook_point, model_id=model_id, input_norm=input_norm,
                        **values)
    except SAEConfigError as err:
        raise CheckpointError(f"{source}: {err}") from err
    sae = build_sae(cfg)
    sae.W_enc.copy_(W_enc)
    sae.b_enc.copy_(b_enc if subtract_b_dec else b_enc + b_dec @ W_enc)
    sae.W_dec.copy_(W_dec)
    sae.b_dec.copy_(b_dec)
    if threshold is not None:
        if architecture == "jumprelu":
            sae.threshold.copy_(threshold.expand(d_sae))
        else:
            sae.threshold.fill_(float(threshold))
        sae.threshold_initialized.fill_(True)
    return sae.eval()


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
