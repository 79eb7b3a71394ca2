"""SAELens 6.x: ``cfg.json`` + ``sae_weights.safetensors`` (W_enc ``[d_in, d_sae]``, W_dec ``[d_sae, d_in]``).

The hook point read is ``hf_hook_name`` (a module of the Hugging Face model, as newer SAELens files record it) when
present, else ``hook_name`` (a TransformerLens name such as ``blocks.8.hook_resid_pre``): capture understands both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from canon_pl.io.atomic import atomic_paths
from canon_pl.io.validate import CheckpointError
from canon_pl.io.formats.common import (
    imported_sae,
    read_config,
    read_safetensors,
    take,
    text,
)
from canon_pl.lm.hook_names import is_transformer_lens_name
from canon_pl.sae import SAEConfig, SAEConfigError, SparseAutoencoder, build_sae

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# SAELens architecture -> ours. BatchTopK SAEs are saved by SAELens as jumprelu with the threshold broadcast.
ARCHITECTURES = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
MATRYOSHKA = "matryoshka_batchtopk"
"""SAELens's ``metadata.training_architecture`` of a Matryoshka BatchTopK SAE (saved as jumprelu, its level widths in
``metadata.training_architecture_details.matryoshka_widths``)."""


def _metadata(cfg: dict[str, Any], key: str) -> str | None:
    return text(cfg.get(key)) or text((cfg.get("metadata") or {}).get(key) if isinstance(cfg.get("metadata"), dict)
                                      else None)


def load_saelens(directory: str | os.PathLike) -> SparseAutoencoder:
    """An SAELens SAE with SAELens's encode: ``pre = (x - b_dec·apply_b_dec_to_input) @ W_enc + b_enc``; standard
    ``relu(pre)``; JumpReLU ``relu(pre) * (pre > threshold)``; TopK the top k of ``pre`` then ReLU, with
    ``rescale_acts_by_decoder_norm`` folded in (pre-activations times decoder row norms, divided back out in
    decode); ``normalize_activations: layer_norm`` as the SAE's ``input_norm`` (each input centred and scaled before
    encoding, its own statistics undoing it after decoding)."""
    directory = Path(directory)
    if directory.is_file():  # cfg.json or the weights: their folder
        directory = directory.parent
    cfg = read_config(directory / CONFIG_FILE, "SAELens config")
    arch = cfg.get("architecture", "standard")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise CheckpointError(f"{directory / CONFIG_FILE}: SAELens architecture {arch!r} is not supported; canon-pl "
                              f"reads {sorted(ARCHITECTURES)}")
    norm = cfg.get("normalize_activations", "none") or "none"  # files before SAELens 6 may say false
    if norm not in ("none", "layer_norm"):
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: normalize_activations={norm!r} rescales inputs by a factor SAELens keeps "
            f"outside the file; fold it into the weights in SAELens first (sae.fold_activation_norm_scaling_factor) "
            f"or use an SAE saved with 'none' or 'layer_norm'")
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not isinstance(d_in, int) or not isinstance(d_sae, int):
        raise CheckpointError(f"{directory / CONFIG_FILE}: d_in and d_sae must be integers, got {d_in!r}, {d_sae!r}")
    hook_point = (_metadata(cfg, "hf_hook_name") or _metadata(cfg, "hook_name")
                  or text(cfg.get("hook_point")))  # before SAELens 6: hook_point
    if arch == "gated":
        return _gated(directory, cfg, d_in, d_sae, norm, hook_point)
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        expected["threshold"] = (d_sae,)
    t = take(read_safetensors(directory / WEIGHTS_FILE), expected, directory / WEIGHTS_FILE)
    W_enc, b_enc, W_dec = t["W_enc"], t["b_enc"], t["W_dec"]
    subtract = bool(cfg.get("apply_b_dec_to_input", True))
    if cfg.get("rescale_acts_by_decoder_norm", False):
        if arch != "topk":
            raise CheckpointError(f"{directory / CONFIG_FILE}: rescale_acts_by_decoder_norm is only read for topk "
                                  f"SAEs, this one is {arch!r}")
        norms = W_dec.norm(dim=-1)
        if subtract:
            W_enc, b_enc = W_enc * norms, b_enc * norms
        else:  # fold b_dec first, then scale
            b_enc, subtract = b_enc + t["b_dec"] @ W_enc, True
            W_enc, b_enc = W_enc * norms, b_enc * norms
        W_dec = W_dec / norms[:, None]
    nested = _matryoshka_levels(cfg, t.get("threshold"), d_sae, directory / CONFIG_FILE)
    if nested is not None:
        k, fractions = nested
        return imported_sae(MATRYOSHKA, W_enc, b_enc, W_dec, t["b_dec"], subtract_b_dec=subtract, source=directory,
                            threshold=t["threshold"][0], k=k, input_norm=norm, hook_point=hook_point,
                            model_id=_metadata(cfg, "model_name"), settings={"prefix_fractions": fractions})
    k = cfg.get("k")
    if arch == "topk" and not isinstance(k, int):
        raise CheckpointError(f"{directory / CONFIG_FILE}: a topk SAE needs an integer k, got {k!r}")
    return imported_sae(ARCHITECTURES[arch], W_enc, b_enc, W_dec, t["b_dec"], subtract_b_dec=subtract,
                        source=directory, threshold=t.get("threshold"), k=k if arch == "topk" else None,
                        input_norm=norm, hook_point=hook_point, model_id=_metadata(cfg, "model_name"))


@torch.no_grad()
def _gated(directory: Path, cfg: dict[str, Any], d_in: int, d_sae: int, norm: str,
           hook_point: str | None) -> SparseAutoencoder:
    """A gated SAE with SAELens's encode (``π_gate = (x - b_dec·apply_b_dec_to_input) @ W_enc + b_gate``, the
    magnitude path through ``W_enc * exp(r_mag)``); a file that does not subtract ``b_dec`` gets it folded into both
    biases (our encoder always subtracts it)."""
    vector = (d_sae,)
    t = take(read_safetensors(directory / WEIGHTS_FILE), {"W_enc": (d_in, d_sae), "b_gate": vector, "r_mag": vector,
                                                          "b_mag": vector, "W_dec": (d_sae, d_in), "b_dec": (d_in,)},
             directory / WEIGHTS_FILE)
    try:
        sae = build_sae(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="gated", input_norm=norm,
                                  hook_point=hook_point, model_id=_metadata(cfg, "model_name")))
    except SAEConfigError as err:
        raise CheckpointError(f"{directory}: {err}") from err
    state = sae.state_dict()
    for name, value in t.items():
        state[name].copy_(value)
    if not bool(cfg.get("apply_b_dec_to_input", True)):
        sae.b_gate.add_(t["b_dec"] @ t["W_enc"])
        sae.b_mag.add_(t["b_dec"] @ (t["W_enc"] * t["r_mag"].exp()))
    return sae.eval()


def _matryoshka_levels(cfg: dict[str, Any], threshold: Any, d_sae: int, path: Path) -> tuple[int, list[float]] | None:
    """``(k, prefix fractions)`` of a Matryoshka BatchTopK SAE as SAELens saves one (jumprelu whose threshold is
    BatchTopK's one threshold broadcast to ``[d_sae]``), or ``None`` for any other SAE."""
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    details = metadata.get("training_architecture_details") or {}
    if cfg.get("architecture") != "jumprelu" or metadata.get("training_architecture") != MATRYOSHKA:
        return None
    widths = details.get("matryoshka_widths") if isinstance(details, dict) else None
    if not (isinstance(widths, list) and widths and all(isinstance(w, int) and 0 < w <= d_sae for w in widths)):
        raise CheckpointError(f"{path}: a Matryoshka SAE needs metadata.training_architecture_details."
                              f"matryoshka_widths, increasing widths up to d_sae={d_sae}; got {widths!r}")
    if not (bool((threshold == threshold[0]).all()) and float(threshold[0]) >= 0):
        raise CheckpointError(f"{path}: a Matryoshka BatchTopK SAE has one threshold (SAELens broadcasts it to every "
                              f"latent); this file's differ, so it is not one SAELens saved")
    k = details.get("k")
    if not isinstance(k, (int, float)) or k <= 0:
        raise CheckpointError(f"{path}: a Matryoshka SAE needs its BatchTopK k in metadata."
                              f"training_architecture_details.k; got {k!r}")
    return max(1, round(k)), [w / d_sae for w in sorted(set(widths)) if w < d_sae]


def export_saelens(sae: SparseAutoencoder, directory: str | os.PathLike,
                   transformer_lens_hook: str | None = None) -> Path:
    """Write ``sae`` in SAELens 6.x format (BatchTopK as jumprelu with its threshold broadcast, as SAELens saves
    them); both files renamed into place together. The hook point is recorded as SAELens records it: ``hook_name``
    the TransformerLens name (``transformer_lens_hook`` when given, else the SAE's own hook point) and
    ``hf_hook_name`` the module of the Hugging Face model (what canon-pl reads back). Returns the directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    arch = sae.saelens_architecture
    if arch is None:
        raise CheckpointError(f"SAELens has no {sae.architecture} SAE; keep this SAE in canon-pl's format")
    if not sae.inference_ready():
        raise CheckpointError(f"this {sae.architecture} SAE has no inference threshold yet (never trained): SAELens "
                              f"would read it as jumprelu with threshold 0; train it first")
    if sae.cfg.input_norm not in ("none", "layer_norm"):
        raise CheckpointError(f"SAELens has no input normalisation {sae.cfg.input_norm!r} (it reads 'none' and "
                              f"'layer_norm'); keep this SAE in canon-pl's format")
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in sae.saelens_tensors().items()}
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": sae.cfg.input_norm, "reshape_activations": "none",
        "metadata": {"model_name": sae.cfg.model_id, "hook_name": transformer_lens_hook or sae.cfg.hook_point,
                     "hf_hook_name": None if is_transformer_lens_name(sae.cfg.hook_point or "") else sae.cfg.hook_point,
                     "sae_lens_training_version": None, "exported_by": "canon_pl"},
    }
    own = sae.saelens_config()
    cfg["metadata"].update(own.pop("metadata", {}))
    cfg.update(own)
    with atomic_paths(directory / WEIGHTS_FILE, directory / CONFIG_FILE) as (weights_tmp, config_tmp):
        save_file(tensors, str(weights_tmp))
        config_tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "export_saelens", "load_saelens"]
