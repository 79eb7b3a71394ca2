"""The portable SAE export: ``sae.safetensors`` + ``cfg.json`` (docs/design.md 2), read by :func:`load_sae`.

An export takes raw activations: any activation normalisation used in training is folded into the weights first.
``cfg.json`` records the architecture, sizes, threshold, hook point, model, the folded scale, the canon_pl version
and the SHA-256 of the weights file, so a truncated or mismatched pair is detected instead of half-loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from canon_pl.io.atomic import atomic_paths, sha256_file
from canon_pl.io.document import DocumentKind
from canon_pl.io.validate import (
    STRUCTURAL_ERRORS,
    CheckpointError,
    malformed_as,
    read_consistent,
    read_json,
    regular_file,
)
from canon_pl.sae import SAEConfig, SAEConfigError, SparseAutoencoder, build_sae
from canon_pl.sae.registry import exported_shapes, find_architecture

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"
FORMAT_NAME = "canon_pl.sae"
FORMAT_VERSION = 1
ARCHITECTURE_MODULE = "architecture_module"
"""The module that defines the SAE's class: imported on load when its architecture is not registered yet (one of a
researcher's own, in a file of their own)."""
CONFIG_DIGEST = "config_sha256"
"""The SHA-256 of ``cfg.json``'s own settings (every key but this one, as canonical JSON): an edited k, hook point or
threshold would otherwise load silently, changing what the SAE computes while ``weights_sha256`` still matches."""


def config_digest(cfg: dict[str, Any]) -> str:
    """:data:`CONFIG_DIGEST` of a parsed ``cfg.json``."""
    import hashlib

    settings = {key: value for key, value in cfg.items() if key != CONFIG_DIGEST}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


EXPORT = DocumentKind(FORMAT_NAME, FORMAT_VERSION, "export", CheckpointError,
                      foreign_hint="it may come from another library (SAELens, sparsify, dictionary_learning, Gemma "
                                   "Scope): load_sae reads those from their own files")
"""An export's ``cfg.json``."""


def export_sae(
    sae: SparseAutoencoder,
    directory: str | os.PathLike,
    activation_scale: float = 1.0,
    extra: dict[str, Any] | None = None,
    format: str = "canon_pl",
) -> Path:
    """Write ``sae`` (trained on ``x * activation_scale``) so that it takes raw activations; ``format="saelens"``
    writes SAELens 6.x files instead (``cfg.json`` + ``sae_weights.safetensors``).

    Both files are written to temporary files first and renamed into place together (the config last), so an
    interrupted or disk-full export leaves the previous one as it was.
    Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    folded = sae.fold_activation_scale(activation_scale) if activation_scale != 1.0 else sae
    if format == "saelens":
        from canon_pl.io.formats.saelens import export_saelens

        return export_saelens(folded, directory, (extra or {}).get("data", {}).get("transformer_lens_hook"))
    if format != "canon_pl":
        raise CheckpointError(f"cannot write format {format!r}: canon-pl writes 'canon_pl' and 'saelens'")
    extra = with_provenance_once(sae, extra or {})
    tensors = {key: value.detach().float().cpu().contiguous() for key, value in folded.export_tensors().items()}
    with atomic_paths(directory / WEIGHTS_FILE, directory / CONFIG_FILE, digest_key="weights_sha256") as (
            weights_tmp, config_tmp):
        save_file(tensors, str(weights_tmp), metadata={"format": FORMAT_NAME})
        cfg = EXPORT.stamp({
            "sae": sae.cfg.to_dict(),
            ARCHITECTURE_MODULE: type(sae).__module__,
            "activation_scale_folded": float(activation_scale),
            "normalize_activations": "none",
            "threshold_initialized": bool(sae.threshold_initialized),
            "weights_sha256": sha256_file(weights_tmp),
            **(extra or {}),
        })
        cfg[CONFIG_DIGEST] = config_digest(json.loads(json.dumps(cfg)))  # as a reader will parse it back
        config_tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return directory


def training_data(directory: str | os.PathLike) -> dict[str, Any]:
    """How the export's training activations were made (model, hook point, text, context length, token selection,
    document split and order), as its ``cfg.json`` records under ``data``; empty for exports that do not record it
    (synthetic data, imported SAEs, older versions) or that are not export folders (a ``.ckpt``)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return {}
    raw = read_json(path, CheckpointError, "config")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:  # another library's cfg.json (an imported SAE)
        return {}
    cfg = read_export_config(directory)
    data = cfg.get("data")
    if not isinstance(data, dict):
        return {}
    sae = cfg.get("sae") if isinstance(cfg.get("sae"), dict) else {}
    return {**data, **{key: sae[field] for key, field in PROVENANCE_IN_SAE.items() if sae.get(field) is not None}}


PROVENANCE_IN_SAE = {"model": "model_id", "hook_point": "hook_point"}
"""The provenance keys an export writes once, in its ``sae`` section (``data`` key -> ``SAEConfig`` field); exports
before this wrote them in both and still read the same."""


def with_provenance_once(sae: SparseAutoencoder, extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` with the model and hook point taken out of its ``data`` section (the ``sae`` section holds them);
    raises :class:`CheckpointError` when the two disagree (an export would otherwise record two models)."""
    data = extra.get("data")
    if not isinstance(data, dict):
        return extra
    data = dict(data)
    for key, field in PROVENANCE_IN_SAE.items():
        recorded, own = data.get(key), getattr(sae.cfg, field)
        if own is None:
            continue  # the SAE does not say: the data's record stays where it is
        if recorded is not None and recorded != own:
            raise CheckpointError(f"the data's {key} is {recorded!r} but the SAE's {field} is {own!r}: an export "
                                  f"records one; build the SAE with the data's")
        data.pop(key, None)
    return {**extra, "data": data}


def training_record(directory: str | os.PathLike) -> dict[str, Any]:
    """What the export's ``cfg.json`` records of its training under ``training`` (``init_seed``, ``global_step``,
    ...); empty when it records none or cannot be read (another library's file, a missing or corrupt export)."""
    try:
        training = read_export_config(directory).get("training")
    except (CheckpointError, OSError, ValueError):
        return {}
    return dict(training) if isinstance(training, dict) else {}


def read_export_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``cfg.json`` of an export directory."""
    cfg_path = Path(directory) / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} not found: a canon-pl export is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}")
    return EXPORT.read(cfg_path, " config (the export is corrupt: re-export it)")


def weights_bytes_bound(cfg: dict[str, Any]) -> int | None:
    """The most ``sae.safetensors`` can hold for an export of ``cfg``'s ``d_in`` x ``d_sae``: three such matrices and
    eight vectors of each size in float64, plus a header of 16 MiB (``None`` when the sizes are not positive
    integers: the config is refused later, by its own check)."""
    sae = cfg.get("sae") if isinstance(cfg, dict) else None
    d_in, d_sae = (sae.get("d_in"), sae.get("d_sae")) if isinstance(sae, dict) else (None, None)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in (d_in, d_sae)):
        return None
    return 8 * (3 * d_in * d_sae + 8 * (d_in + d_sae)) + (16 << 20)


def load_export(directory: str | os.PathLike, device: str | torch.device = "cpu",
                trust_code: bool = False) -> SparseAutoencoder:
    """Load an export folder into an SAE in eval mode that takes raw activations. An architecture that is not built
    in loads through an installed package's entry point, or with ``trust_code`` from the module the export names
    (:func:`canon_pl.sae.registry.find_architecture`); nothing is imported otherwise."""
    directory = Path(directory)
    weights_path = directory / WEIGHTS_FILE
    cfg, weights = read_consistent(lambda: read_export_config(directory), lambda _: weights_path, "weights_sha256",
                                   CheckpointError, fix="re-export the SAE", max_bytes=weights_bytes_bound)
    try:
        find_architecture(cfg["sae"].get("architecture"), cfg.get(ARCHITECTURE_MODULE), trust_code)
        sae_cfg = SAEConfig.from_dict(cfg["sae"])
    except (SAEConfigError, *STRUCTURAL_ERRORS) as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid \"sae\" section: {err}") from err
    try:
        tensors = load_safetensors_bytes(weights)
    except (SafetensorError, *STRUCTURAL_ERRORS) as err:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({err}); re-export the SAE") from err
    check_shapes_before_building(sae_cfg, {k: tuple(v.shape) for k, v in tensors.items()}, str(weights_path))
    recorded = cfg.get(CONFIG_DIGEST)
    if recorded is not None and recorded != config_digest(cfg):  # exports before this digest have none: they load
        raise CheckpointError(f"{directory / CONFIG_FILE} was changed after export: its settings no longer match their "
                              f"recorded {CONFIG_DIGEST} (an edited k, hook point or threshold changes what the SAE "
                              f"computes); re-export the SAE, or, if the edit is deliberate, delete the "
                              f"\"{CONFIG_DIGEST}\" entry")
    with malformed_as(CheckpointError, directory, "re-export the SAE"):
        sae = build_sae(sae_cfg)
        load_sae_tensors(sae, tensors, source=str(weights_path))
        sae.threshold_initialized.fill_(bool(cfg.get("threshold_initialized", True)))
    return sae.to(device).eval()


PREFIX_OF = "prefix_of"
"""``training.prefix_of`` of an export that is a Matryoshka SAE's prefix: ``{"d_sae", "architecture"}`` of the
whole SAE, whose initial decoder's first rows are the prefix's."""
MAX_PREFIX_RATIO = 256
"""The widest whole SAE a prefix's initial decoder is rebuilt from, in multiples of the prefix (a crafted cfg.json
cannot make it allocate more)."""


def initial_decoder(directory: str | os.PathLike) -> torch.Tensor | None:
    """``W_dec [d_sae, d_in]`` of the export's SAE as training initialised it (rebuilt from ``training.init_seed``;
    unit rows, raw scale not applied: compare it by cosine), or ``None`` when the export does not record its seed
    (another library's file, or canon-pl before init seeds were recorded). A Matryoshka prefix (``training.
    prefix_of``) gets the first ``d_sae`` rows of its whole SAE's initial decoder."""
    from canon_pl.sae import initial_sae

    try:
        cfg = read_export_config(directory)
    except CheckpointError:
        return None
    training = cfg.get("training") or {}
    seed = training.get("init_seed")
    if not isinstance(seed, int):
        return None
    try:
        sae_cfg = SAEConfig.from_dict(cfg["sae"])
        from safetensors import safe_open

        with safe_open(str(regular_file(Path(directory) / WEIGHTS_FILE, CheckpointError)), "pt") as handle:  # the header only: no tensor is read
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        check_shapes_before_building(sae_cfg, shapes, str(Path(directory) / WEIGHTS_FILE))
    except (SAEConfigError, CheckpointError, SafetensorError, OSError, *STRUCTURAL_ERRORS):
        return None
    whole = training.get(PREFIX_OF)
    if whole is None:
        return initial_sae(sae_cfg, seed).W_dec.detach()
    width, architecture = (whole.get("d_sae"), whole.get("architecture")) if isinstance(whole, dict) else (None, None)
    if not (isinstance(width, int) and sae_cfg.d_sae <= width <= MAX_PREFIX_RATIO * sae_cfg.d_sae
            and isinstance(architecture, str)):
        return None
    try:
        whole_cfg = sae_cfg.for_width(width, architecture)
        return initial_sae(whole_cfg, seed).W_dec[: sae_cfg.d_sae].detach()
    except (SAEConfigError, *STRUCTURAL_ERRORS):
        return None


def check_shapes_before_building(cfg: SAEConfig, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse a config whose sizes disagree with the weight ``shapes`` it comes with, *before* an SAE of that size is
    allocated (a crafted cfg.json of a few bytes could otherwise ask for gigabytes): the SAE is built on the meta
    device, where it has shapes but no memory, and its own exported tensors are the expectation."""
    for key, shape in exported_shapes(cfg).items():
        found = shapes.get(key)
        if found is None or (tuple(found) != shape and not (key == "threshold" and tuple(found) == ())):
            raise CheckpointError(f"{source}: the config describes d_in={cfg.d_in}, d_sae={cfg.d_sae} but {key} is "
                                  f"{tuple(found) if found is not None else 'missing'} (expected {shape}); the "
                                  f"config and the weights do not belong together: re-export the SAE")


def load_sae_tensors(sae: SparseAutoencoder, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy exactly the SAE's exported tensors (:meth:`SparseAutoencoder.export_tensors`) into ``sae``, failing on
    missing, unknown or mis-shaped keys."""
    targets = sae.export_tensors()
    missing = sorted(set(targets) - set(tensors))
    unknown = sorted(set(tensors) - set(targets))
    if missing or unknown:
        raise CheckpointError(f"{source}: missing tensors {missing}, unknown tensors {unknown}; expected {sorted(targets)}")
    with torch.no_grad():
        for key, target in targets.items():
            value = tensors[key]
            if key == "threshold" and value.dim() == 0 and target.dim() == 0:
                pass
            elif value.shape != target.shape:
                raise CheckpointError(
                    f"{source}: tensor {key} has shape {tuple(value.shape)} but the config says {tuple(target.shape)}"
                )
            if not torch.isfinite(value).all():
                raise CheckpointError(f"{source}: tensor {key} contains NaN or Inf")
            target.copy_(value)
