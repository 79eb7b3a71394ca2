"""Building SAEs by architecture name. Importing this module imports every built-in architecture, each of which
registers its SAE class (:data:`SAE_CLASSES`) and its settings class (:data:`SETTINGS_CLASSES`) as it is defined."""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any

import torch

import canon_pl.sae.batchtopk
import canon_pl.sae.gated
import canon_pl.sae.jumprelu
import canon_pl.sae.matryoshka
import canon_pl.sae.relu
import canon_pl.sae.topk  # noqa: F401 - the built-in architectures register themselves
from canon_pl.sae.base import SparseAutoencoder
from canon_pl.sae.config import (SAE_CLASSES, SETTINGS_CLASSES, SAEConfig, SAEConfigError, SAESettings,
                                 settings_class_named)


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of ``cfg.architecture`` (registered: :class:`SAEConfig` checked it)."""
    return SAE_CLASSES[cfg.architecture](cfg)


def initial_sae(cfg: SAEConfig, init_seed: int) -> SparseAutoencoder:
    """The SAE exactly as training initialised it from ``init_seed``: each width draws its own stream of the seed,
    and the global RNG is left as it was. With the export's ``training.init_seed`` this rebuilds a trained SAE's
    initial decoder, so an analysis can tell latents that moved from latents still near their random start."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed * 1_000_003 + cfg.d_sae)
        return build_sae(cfg)


def exported_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor an SAE of ``cfg`` exports, from the SAE built on the meta device (shapes, no memory:
    a config a file crafted to ask for gigabytes is checked against its weights before anything is allocated)."""
    with torch.device("meta"):
        sae = SAE_CLASSES[cfg.architecture](cfg)
    return {name: tuple(tensor.shape) for name, tensor in sae.export_tensors().items()}


def sae_training_flops(batch: int, d_in: int, d_sae: int, k: float, architecture: str = "batchtopk",
                       kernel: str = "sparse") -> int:
    """FLOPs of forward + backward of one training step of an SAE of ``architecture`` on ``batch`` tokens (``k``: mean
    active latents per token): the architecture's own :meth:`SparseAutoencoder.training_flops`, built on the meta
    device (no memory)."""
    cls = settings_class_named(architecture, unknown="unknown SAE architecture")
    values: dict[str, Any] = {"kernel": kernel}
    if "k" in {f.name for f in fields(cls)}:
        values["k"] = min(max(int(k), 1), d_sae)
    with torch.device("meta"):
        sae = build_sae(SAEConfig(d_in, d_sae, settings=cls(**values)))
    return sae.training_flops(batch, k)


def import_architecture(architecture: object, module: object) -> None:
    """Import ``module`` (a dotted name an export records beside its architecture) when ``architecture`` is not
    registered yet, so an SAE of a researcher's own architecture loads wherever its file is importable; nothing when
    it is registered, the name is not a module path, or the module cannot be imported (the config's own check then
    names the problem)."""
    if architecture in SAE_CLASSES or not isinstance(module, str) or not all(
            part.isidentifier() for part in module.split(".")):
        return
    try:
        importlib.import_module(module)
    except ImportError:
        pass


def describe_sae(cfg: dict[str, Any]) -> str:
    """An export's ``sae`` section (:meth:`SAEConfig.to_dict`) in words, e.g. ``BatchTopK (k = 32)``: its settings'
    :meth:`SAESettings.describe`; the bare name for an architecture not imported or a section that does not load."""
    try:
        return SAEConfig.from_dict(cfg).settings.describe()
    except (SAEConfigError, TypeError, ValueError):
        return str(cfg.get("architecture"))


def settings_class(value: dict[str, Any]) -> type[SAESettings]:
    """The settings class a YAML ``sae:`` section names (``class_path``, imported; or ``architecture``; the default
    BatchTopK when it names neither)."""
    if "class_path" in value:
        module, _, name = str(value["class_path"]).rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as err:
            raise SAEConfigError(f"sae class_path {value['class_path']!r} cannot be imported: {err}") from err
        if not (isinstance(found, type) and issubclass(found, SAESettings)):
            raise SAEConfigError(f"sae class_path {value['class_path']!r} is not an SAE settings class")
        return found
    return settings_class_named(str(value.get("architecture") or "batchtopk"))


__all__ = ["SAE_CLASSES", "SETTINGS_CLASSES", "build_sae", "describe_sae", "exported_shapes", "import_architecture",
           "initial_sae", "sae_training_flops", "settings_class"]
