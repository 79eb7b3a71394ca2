"""Building SAEs by architecture name. Importing this module imports every built-in architecture, each of which
registers its SAE class (:data:`SAE_CLASSES`) and its settings class (:data:`SETTINGS_CLASSES`) as it is defined."""

from __future__ import annotations

import importlib
import os
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


ENTRY_POINT_GROUP = "canon_pl.architectures"
"""The entry-point group a package declares its architectures in (``toy_gain = toy_gain`` under
``[project.entry-points."canon_pl.architectures"]``: the architecture's name, the module that registers it)."""
TRUST_CODE_ENV = "CANON_PL_TRUST_CODE"
"""Set to 1 (``canon-pl --trust-code``) to let loading import the module an export names, for every command and page."""


def trusting_code() -> bool:
    """Whether the user allowed, for this process, importing the module a file names (``CANON_PL_TRUST_CODE=1``)."""
    return os.environ.get(TRUST_CODE_ENV, "") == "1"


def find_architecture(architecture: object, module: object = None, trust_code: bool = False) -> None:
    """Make ``architecture`` (a name a file records) registered, running only code the user chose to run: a
    built-in needs nothing; otherwise an installed package that declares it under the entry-point group
    :data:`ENTRY_POINT_GROUP` is imported (the packaging ecosystem's plugin mechanism); otherwise, only with
    ``trust_code`` (or :func:`trusting_code`), the ``module`` the file names. Never from a file's word alone: without
    either, :class:`SAEConfigError` names the architecture and both ways to allow it, and nothing is imported."""
    if architecture in SAE_CLASSES:
        return
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == architecture:
            entry.load()
            if architecture in SAE_CLASSES:
                return
            raise SAEConfigError(f"the package entry point {entry.name} = {entry.value} (group {ENTRY_POINT_GROUP}) "
                                 f"was imported but registers no architecture {architecture!r}")
    named = module if isinstance(module, str) and module and all(p.isidentifier() for p in module.split(".")) else None
    if named is not None and (trust_code or trusting_code()):
        try:
            importlib.import_module(named)
        except ImportError as err:
            raise SAEConfigError(f"architecture {architecture!r}: the module the file names, {named!r}, cannot be "
                                 f"imported ({err}); put its folder on PYTHONPATH or install its package") from err
        if architecture in SAE_CLASSES:
            return
    raise SAEConfigError(
        f"architecture {architecture!r} is not built in and no installed package declares it, so it is not loaded: "
        f"loading never imports a module a file names on its own. Install the package that defines it (it declares "
        f"'{architecture} = <its module>' under the entry-point group {ENTRY_POINT_GROUP!r})"
        + (f", or, for a file you trust, let canon-pl import the module it names ({named!r}): load_sae(..., "
           f"trust_code=True), or {TRUST_CODE_ENV}=1 / canon-pl --trust-code for commands and the viewer"
           if named else "") + f"; built in: {', '.join(sorted(SAE_CLASSES))}")


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


__all__ = ["ENTRY_POINT_GROUP", "SAE_CLASSES", "SETTINGS_CLASSES", "TRUST_CODE_ENV", "build_sae", "describe_sae",
           "exported_shapes", "find_architecture", "initial_sae", "trusting_code", "sae_training_flops", "settings_class"]
