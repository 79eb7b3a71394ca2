"""dictionary_learning (saprmarks): ``ae.pt`` (a state dict) + ``config.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from canon_pl.io.checkpoint import safe_torch_load
from canon_pl.io.validate import CheckpointError
from canon_pl.io.formats.common import imported_sae, read_config, take, text
from canon_pl.sae import SparseAutoencoder

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"
CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE")


def _dict_class(state: dict[str, Any], trainer: dict[str, Any], path: Path) -> str:
    named = text(trainer.get("dict_class"))
    if named is not None:
        return named
    if "group_sizes" in state:
        return "MatryoshkaBatchTopKSAE"
    if "W_enc" in state:
        return "JumpReluAutoEncoder"
    if "bias" in state:
        return "AutoEncoder"
    raise CheckpointError(f"{path} holds a TopK or BatchTopK dictionary (tensors {sorted(state)}) and no "
                          f"{CONFIG_FILE} says which: the two encode differently; put the run's {CONFIG_FILE} (with "
                          f"trainer.dict_class) next to it")


def load_dictionary_learning(path: str | os.PathLike) -> SparseAutoencoder:
    """A dictionary_learning SAE, read with ``torch.load(weights_only=True)``: ``AutoEncoder`` (ReLU;
    ``decoder.weight [d_in, d_sae]``, ``b_dec`` stored as ``bias``), ``AutoEncoderTopK`` (top k of
    ``relu(encoder(x - b_dec))``), ``BatchTopKSAE`` (its scalar threshold on the post-ReLU value; −1 = unset, then the
    batch's top k·batch), ``JumpReluAutoEncoder`` (no ``b_dec`` subtraction) and ``MatryoshkaBatchTopKSAE`` (BatchTopK
    whose ``group_sizes`` make its nested prefixes). ``path`` is ``ae.pt`` or its folder;
    the class comes from ``config.json`` (``trainer.dict_class``) when it is there."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    state = safe_torch_load(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    config = read_config(path.parent / CONFIG_FILE, "dictionary_learning config") if (
        path.parent / CONFIG_FILE).is_file() else {}
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    cls = _dict_class(state, trainer, path)
    model_id = text(trainer.get("lm_name"))
    hook = text(trainer.get("submodule_name"))
    if cls == "JumpReluAutoEncoder":
        d_in, d_sae = _shape(state, "W_enc", path)
        t = take(state, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
                         "threshold": (d_sae,)}, path)
        return imported_sae("jumprelu", t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], subtract_b_dec=False,
                            source=path, threshold=t["threshold"], hook_point=hook, model_id=model_id)
    if cls == "MatryoshkaBatchTopKSAE":
        return _matryoshka(state, path, hook, model_id)
    d_sae, d_in = _shape(state, "encoder.weight", path)
    if cls == "AutoEncoder":
        t = take(state, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "decoder.weight": (d_in, d_sae),
                         "bias": (d_in,)}, path)
        return imported_sae("relu", t["encoder.weight"].T, t["encoder.bias"], t["decoder.weight"].T, t["bias"],
                            subtract_b_dec=True, source=path, hook_point=hook, model_id=model_id)
    if cls not in CLASSES:
        raise CheckpointError(f"{path}: dictionary_learning class {cls!r} is not supported; canon-pl reads {CLASSES}")
    t = take(state, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "decoder.weight": (d_in, d_sae),
                     "b_dec": (d_in,), "k": (), "threshold": None}, path, optional=("threshold",))
    k = int(t["k"])
    if cls == "AutoEncoderTopK":
        return imported_sae("topk", t["encoder.weight"].T, t["encoder.bias"], t["decoder.weight"].T, t["b_dec"],
                            subtract_b_dec=True, source=path, k=k, hook_point=hook, model_id=model_id)
    threshold = t.get("threshold")
    if threshold is not None and threshold.numel() != 1:
        raise CheckpointError(f"{path}: a BatchTopKSAE threshold is a scalar, got shape {tuple(threshold.shape)}")
    set_threshold = threshold if threshold is not None and float(threshold) >= 0 else None  # -1: never set
    return imported_sae("batchtopk", t["encoder.weight"].T, t["encoder.bias"], t["decoder.weight"].T, t["b_dec"],
                        subtract_b_dec=True, source=path, k=k, threshold=set_threshold, hook_point=hook,
                        model_id=model_id)


def _matryoshka(state: dict[str, Any], path: Path, hook: str | None, model_id: str | None) -> SparseAutoencoder:
    """``MatryoshkaBatchTopKSAE``: BatchTopK (threshold on the post-ReLU value) with nested groups
    ``group_sizes [n_groups]``, whose running sums are the prefix widths."""
    d_in, d_sae = _shape(state, "W_enc", path)
    t = take(state, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "k": (),
                     "threshold": None, "group_sizes": None}, path)
    sizes = [int(g) for g in t["group_sizes"].reshape(-1)]
    if not sizes or min(sizes) <= 0 or sum(sizes) != d_sae:
        raise CheckpointError(f"{path}: group_sizes {sizes} must be positive and sum to the {d_sae} latents")
    ends = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
    threshold = t["threshold"]
    set_threshold = threshold if threshold.numel() == 1 and float(threshold) >= 0 else None  # -1: never set
    return imported_sae("matryoshka_batchtopk", t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], subtract_b_dec=True,
                        source=path, k=int(t["k"]), threshold=set_threshold, hook_point=hook, model_id=model_id,
                        settings={"prefix_fractions": [end / d_sae for end in ends]})


def _shape(state: dict[str, Any], name: str, path: Path) -> tuple[int, int]:
    value = state.get(name)
    if value is None or getattr(value, "dim", lambda: 0)() != 2:
        raise CheckpointError(f"{path}: no 2-D {name}; found {sorted(state)}")
    return tuple(value.shape)


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_dictionary_learning"]
