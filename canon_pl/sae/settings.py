"""The settings an SAE run states once (``model.init_args.sae`` in YAML), shared by every width it trains.

A base class holds what every architecture has; each architecture file (``topk.py``, ``batchtopk.py``, ``relu.py``)
subclasses it beside its SAE class and adds its own hyper-parameters. Defining a subclass with an ``architecture``
name registers it: nothing else lists the architectures. The settings build each width's :class:`SAEConfig` (the
export's ``cfg.json``); fields that are not :class:`SAEConfig` fields travel in its ``options``, so a new
architecture's hyper-parameters need no change anywhere else.

In YAML (LightningCLI)::

    sae:                       # BatchTopKSettings unless a class_path says otherwise
      k: 32
    sae:
      class_path: canon_pl.sae.ReLUSettings
      init_args: {l1_coefficient: 5.0}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from canon_pl.sae.config import SAEConfig, SAEConfigError

SETTINGS_CLASSES: dict[str, type[SAESettings]] = {}
"""Architecture name -> its settings class, filled as each subclass is defined."""


@dataclass(frozen=True)
class SAESettings:
    """What every SAE architecture shares. Subclass it (as a frozen dataclass) with ``architecture`` set."""

    architecture: ClassVar[str] = ""
    default_aux_coefficient: ClassVar[float] = 1.0 / 32.0
    default_kernel: ClassVar[str] = "sparse"
    training_only: ClassVar[tuple[str, ...]] = ()
    """Fields that shape training but not the trained SAE (not written to ``cfg.json``)."""

    encoder_bias: bool = True
    """Learn ``b_enc`` (``False``: fixed at zero, as the paper's meta-SAE)."""
    aux_k: int = 512
    """Dead latents per token in the AuxK loss (capped at ``d_sae // 2``)."""
    aux_coefficient: float | None = None
    """Weight of the AuxK loss; 0 disables it; ``None`` = the architecture's ``default_aux_coefficient`` (1/32, the
    BatchTopK paper's, for the TopK family; 0 for ReLU + L1)."""
    dead_tokens_threshold: int = 10_000_000
    """Training tokens without firing after which a latent counts as dead."""
    kernel: str | None = None
    """Training step: ``sparse`` (only the surviving latents enter the backward pass) or ``dense`` (the plain
    formula; a reference, slower); ``None`` = the architecture's ``default_kernel`` (``sparse``; ``dense`` for the
    architectures that train only with the plain formula)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.architecture:
            SETTINGS_CLASSES[cls.architecture] = cls

    def sae_config(self, d_in: int, d_sae: int, hook_point: str | None = None,
                   model_id: str | None = None) -> SAEConfig:
        """The :class:`SAEConfig` of one width trained with these settings (raises :class:`SAEConfigError` naming
        the first invalid value)."""
        if not self.architecture:
            raise SAEConfigError(f"{type(self).__name__} names no architecture; use one of "
                                 f"{', '.join(sorted(SETTINGS_CLASSES))} settings")
        config_fields = {f.name for f in fields(SAEConfig)}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.training_only}
        if values["aux_coefficient"] is None:
            values["aux_coefficient"] = self.default_aux_coefficient
        if values["kernel"] is None:
            values["kernel"] = self.default_kernel
        options = {key: value for key, value in values.items() if key not in config_fields}
        common = {key: value for key, value in values.items() if key in config_fields}
        return SAEConfig(d_in=d_in, d_sae=d_sae, architecture=self.architecture, hook_point=hook_point,
                         model_id=model_id, options=options, **common)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``architecture`` first): what checkpoints store, so they load with ``weights_only``."""
        return {"architecture": self.architecture, **asdict(self)}

    @staticmethod
    def from_value(value: SAESettings | dict[str, Any] | None, default: SAESettings | None = None) -> SAESettings:
        """Settings from an instance, a :meth:`to_dict` dict (a checkpoint's hyper-parameters) or ``None``
        (``default``, else :class:`BatchTopKSettings`)."""
        if isinstance(value, SAESettings):
            return value
        if value is None:
            return default if default is not None else SETTINGS_CLASSES["batchtopk"]()
        if not isinstance(value, dict):
            raise SAEConfigError(f"SAE settings must be a settings object or a dict, got {type(value).__name__}")
        value = dict(value)
        architecture = value.pop("architecture", None) or (default.architecture if default else "batchtopk")
        cls = settings_class_named(str(architecture))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise SAEConfigError(f"{cls.__name__} has no setting {', '.join(unknown)}; it has {', '.join(sorted(known))}")
        return cls(**value)


def settings_class_named(architecture: str) -> type[SAESettings]:
    """The settings class registered for ``architecture``; :class:`SAEConfigError` naming the registered ones."""
    cls = SETTINGS_CLASSES.get(architecture)
    if cls is None:
        raise SAEConfigError(f"no trainable SAE architecture {architecture!r}; choose one of "
                             f"{', '.join(sorted(SETTINGS_CLASSES))} (or import the module defining it)")
    return cls


__all__ = ["SETTINGS_CLASSES", "SAESettings", "settings_class_named"]
