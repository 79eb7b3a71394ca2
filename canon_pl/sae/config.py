"""An SAE's configuration: one frozen settings class per architecture, and the config of one SAE built from it.

:class:`SAESettings` holds what every architecture shares; each architecture file (``topk.py``, ``batchtopk.py``,
``relu.py``, ``jumprelu.py``, ``gated.py``, ...) subclasses it beside its SAE class with its own hyper-parameters as
real fields. Defining a subclass with an ``architecture`` name registers it: nothing else lists the architectures.
A run states its settings once (``model.init_args.sae`` in YAML) and every width it trains shares them.

:class:`SAEConfig` is one SAE: its sizes, where its activations come from, what it does to its inputs, and its
architecture's settings. Its ``cfg.json`` section is flat (``{"d_in", "d_sae", "architecture", <the settings'
fields>, "input_norm", "hook_point", "model_id"}``); the settings' fields read through it (``cfg.k`` is
``cfg.settings.k``).

In YAML (LightningCLI)::

    sae:                       # BatchTopKSettings unless a class_path says otherwise
      k: 32
    sae:
      class_path: canon_pl.sae.ReLUSettings
      init_args: {l1_coefficient: 5.0}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from canon_pl.checks import fits_type, type_name
from canon_pl.errors import CanonError


class SAEConfigError(CanonError, ValueError):
    """A hyper-parameter that cannot describe a valid SAE."""


INPUT_NORMS = ("none", "center", "layer_norm")
KERNELS = ("sparse", "dense")

SAE_CLASSES: dict[str, type] = {}
"""Architecture name -> SAE class (a :class:`canon_pl.sae.base.SparseAutoencoder` subclass), filled as each class with
an ``architecture`` is defined."""

SETTINGS_CLASSES: dict[str, type[SAESettings]] = {}
"""Architecture name -> its settings class, filled as each subclass is defined."""

LEGACY_KEYS = frozenset({"k", "l1_coefficient", "aux_k", "aux_coefficient", "dead_tokens_threshold",
                         "threshold_momentum", "encoder_bias", "kernel", "options"})
"""Keys of the one flat config every architecture shared before each had its own settings class (``options`` held
an architecture's own fields): in an older ``cfg.json`` (:meth:`SAEConfig.from_dict`) a value its architecture has no
field for is dropped, not refused. Anywhere else such a key is refused by name: ``SAEConfig(576, 4608, "relu",
k=8)`` is an error, not a ReLU SAE that silently ignores ``k``."""


def check_field_types(settings: Any) -> None:
    """Raise :class:`SAEConfigError` naming the first field of a settings dataclass whose value is not of its
    declared type (a number given as text, ``.inf`` or ``.nan`` for a float), before any check compares it."""
    import typing

    hints = typing.get_type_hints(type(settings))
    for field in fields(settings):
        value = getattr(settings, field.name)
        if fits_type(hints.get(field.name), value) is False:
            kind = type_name(hints[field.name]).replace("float", "a finite number")
            raise SAEConfigError(f"{type(settings).__name__}.{field.name} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class SAESettings:
    """What every SAE architecture shares. Subclass it (as a frozen dataclass) with ``architecture`` set; override
    :meth:`validate` (calling ``super().validate()``) to check the fields it adds."""

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
        if cls.__dict__.get("architecture"):
            SETTINGS_CLASSES[cls.architecture] = cls

    def __post_init__(self) -> None:
        check_field_types(self)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SAEConfigError` naming the first setting that cannot train and how to fix it."""
        if self.kernel not in (None, *KERNELS):
            raise SAEConfigError(f"kernel must be 'sparse' or 'dense', got {self.kernel!r}")
        aux = self.aux_coefficient
        if self.aux_k <= 0 or (aux is not None and not (math.isfinite(aux) and aux >= 0)):
            raise SAEConfigError(f"aux_k must be > 0 and aux_coefficient >= 0, got {self.aux_k}, {aux}")
        if self.dead_tokens_threshold <= 0:
            raise SAEConfigError(f"dead_tokens_threshold must be > 0, got {self.dead_tokens_threshold}")

    def check_width(self, d_sae: int) -> None:
        """Raise :class:`SAEConfigError` when these settings cannot describe an SAE of ``d_sae`` latents (TopK: a
        token cannot use more latents than the SAE has)."""

    def fitted_to(self, d_sae: int) -> SAESettings:
        """These settings for an SAE of ``d_sae`` latents (a narrower piece of a wider one): the same, or with what
        depends on the width capped (TopK's ``k``)."""
        return self

    def resolved(self) -> SAESettings:
        """The settings with every ``None`` that means "the architecture's default" replaced by that default."""
        return replace(self, aux_coefficient=self.default_aux_coefficient if self.aux_coefficient is None
                       else self.aux_coefficient, kernel=self.kernel or self.default_kernel)

    def describe(self) -> str:
        """The architecture and its defining settings in words, e.g. ``BatchTopK (k = 32)`` (the report's arm line)."""
        return self.architecture

    def exported(self) -> dict[str, Any]:
        """The fields an export's ``cfg.json`` records (every one but :attr:`training_only`), as JSON values."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items() if key not in self.training_only}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``architecture`` first): what checkpoints store, so they load with ``weights_only``."""
        return {"architecture": self.architecture, **asdict(self)}

    def sae_config(self, d_in: int, d_sae: int, hook_point: str | None = None,
                   model_id: str | None = None) -> SAEConfig:
        """The :class:`SAEConfig` of one width trained with these settings (raises :class:`SAEConfigError` naming
        the first invalid value)."""
        if not self.architecture:
            raise SAEConfigError(f"{type(self).__name__} names no architecture; use one of "
                                 f"{', '.join(sorted(SETTINGS_CLASSES))} settings")
        return SAEConfig(d_in, d_sae, settings=self, hook_point=hook_point, model_id=model_id)

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
        return settings_named(settings_class_named(str(architecture)), value)


def settings_class_named(architecture: str, unknown: str = "no trainable SAE architecture") -> type[SAESettings]:
    """The settings class registered for ``architecture``; :class:`SAEConfigError` (``unknown`` and the name) listing
    the registered ones."""
    cls = SETTINGS_CLASSES.get(architecture)
    if cls is None:
        raise SAEConfigError(f"{unknown} {architecture!r}; choose one of {', '.join(sorted(SETTINGS_CLASSES))} (or "
                             f"import the module that defines it first)")
    return cls


def settings_named(cls: type[SAESettings], values: dict[str, Any], drop: frozenset[str] = frozenset()) -> SAESettings:
    """``cls(**values)``, refusing a key ``cls`` has no field for with :class:`SAEConfigError` naming both; keys in
    ``drop`` that ``cls`` has no field for are left out instead (:data:`LEGACY_KEYS`: the one flat config of old gave
    every architecture a ``k``)."""
    known = {f.name for f in fields(cls)}
    values = {key: value for key, value in values.items() if key in known or key not in drop}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SAEConfigError(f"{cls.__name__} has no setting {', '.join(unknown)}; it has {', '.join(sorted(known))}")
    return cls(**values)


@dataclass(frozen=True, init=False)
class SAEConfig:
    """One sparse autoencoder (docs/design.md 1.1): its sizes, provenance and input normalisation, and its
    architecture's :class:`SAESettings` (whose fields read through: ``cfg.k`` is ``cfg.settings.k``).

    Built from settings (``SAEConfig(576, 4608, settings=ReLUSettings(l1_coefficient=3.0))``) or from an
    architecture's name and its fields (``SAEConfig(d_in=576, d_sae=4608, architecture="relu",
    l1_coefficient=3.0)``; BatchTopK when no architecture is named)."""

    d_in: int
    """Width of the activations the SAE reads (the model's d_model for a residual stream)."""
    d_sae: int
    """Number of latents (rows of ``W_dec``)."""
    settings: SAESettings
    """The architecture and its hyper-parameters (every ``None`` default resolved)."""
    input_norm: str = "none"
    """What the SAE does to each input before encoding, undone after decoding (imported SAEs; canon-pl trains with
    ``none`` and one activation scale folded into the weights): ``none``; ``center`` (subtract the input's mean over
    its d_in entries, as a TransformerLens model with ``center_writing_weights`` sees the residual stream);
    ``layer_norm`` (SAELens's ``normalize_activations: layer_norm``: centre, then divide by the input's standard
    deviation + 1e-5; the reconstruction is multiplied by it and the mean added back)."""
    hook_point: str | None = None
    """Where the activations come from (for example ``model.layers.12``)."""
    model_id: str | None = None
    """The language model the activations come from."""

    def __init__(self, d_in: int, d_sae: int, architecture: str | None = None, *, settings: SAESettings | None = None,
                 input_norm: str = "none", hook_point: str | None = None, model_id: str | None = None,
                 **setting_values: Any) -> None:
        if settings is None:
            cls = settings_class_named(architecture or "batchtopk", unknown="unknown SAE architecture")
            settings = settings_named(cls, setting_values)  # a key its architecture lacks is refused (a ReLU's k)
        elif setting_values or (architecture is not None and architecture != settings.architecture):
            raise SAEConfigError(f"an SAEConfig takes its architecture's settings either as settings=... or as "
                                 f"fields, not both (got {settings!r} and {architecture!r}, {setting_values})")
        for name, value in (("d_in", d_in), ("d_sae", d_sae), ("settings", settings.resolved()),
                            ("input_norm", input_norm), ("hook_point", hook_point), ("model_id", model_id)):
            object.__setattr__(self, name, value)
        self.validate()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "settings":  # not set yet (copy, unpickling): no read-through
            raise AttributeError(name)
        try:
            return getattr(self.settings, name)
        except AttributeError:
            names = ", ".join(f.name for f in fields(self.settings))
            raise AttributeError(f"a {self.settings.architecture} SAE's config has no {name!r} "
                                 f"({type(self.settings).__name__} has {names})") from None

    @property
    def architecture(self) -> str:
        return self.settings.architecture

    def validate(self) -> None:
        """Raise :class:`SAEConfigError` naming the first invalid field and how to fix it."""
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SAEConfigError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.input_norm not in INPUT_NORMS:
            raise SAEConfigError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {self.input_norm!r}")
        if self.architecture not in SAE_CLASSES:
            raise SAEConfigError(f"unknown SAE architecture {self.architecture!r}; choose one of "
                                 f"{', '.join(SAE_CLASSES)} (or import the module that defines it first)")
        self.settings.check_width(self.d_sae)

    def for_width(self, d_sae: int, architecture: str | None = None) -> SAEConfig:
        """This config for an SAE of ``d_sae`` latents (a piece of this one: a stitched subset, a Matryoshka prefix)
        and, if named, another ``architecture``: the settings both architectures have and this one does not leave at
        its defaults carried over, the rest at the other's defaults; what depends on the width (TopK's ``k``) capped
        at it."""
        settings = self.settings
        if architecture is not None and architecture != settings.architecture:
            cls = settings_class_named(architecture, unknown="unknown SAE architecture")
            defaults = asdict(type(settings)().resolved())
            shared = {f.name for f in fields(cls)} - set(cls.training_only)
            settings = cls(**{key: value for key, value in asdict(settings).items()
                              if key in shared and value != defaults[key]})
        return replace(self, d_sae=d_sae, settings=settings.fitted_to(d_sae))

    def to_dict(self) -> dict[str, Any]:
        """The ``cfg.json`` section: ``d_in``, ``d_sae``, ``architecture``, the settings' fields, then provenance."""
        return {"d_in": self.d_in, "d_sae": self.d_sae, "architecture": self.architecture, **self.settings.exported(),
                "input_norm": self.input_norm, "hook_point": self.hook_point, "model_id": self.model_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Build from a :meth:`to_dict` dict, rejecting keys this version does not know (they would be silently lost);
        an older export's flat keys (:data:`LEGACY_KEYS`) load as their architecture's fields where it has them."""
        values = dict(data)
        settings_cls = settings_class_named(str(values.pop("architecture", "batchtopk")),
                                            unknown="unknown SAE architecture")
        own = {"d_in", "d_sae", "input_norm", "hook_point", "model_id"}
        setting_names = {f.name for f in fields(settings_cls)}
        unknown = sorted(set(values) - own - setting_names - LEGACY_KEYS)
        if unknown:  # named as a config's keys (settings_named would name the settings class)
            raise SAEConfigError(f"unknown SAE config keys {unknown}; known keys are "
                                 f"{sorted(own | setting_names | {'architecture'})}")
        options = values.pop("options", None) or {}
        if not isinstance(options, dict):
            raise SAEConfigError(f"options must be a dict of architecture settings, got {type(options).__name__}")
        setting_values = {key: value for key, value in {**values, **options}.items() if key not in own}
        try:
            settings = settings_named(settings_cls, setting_values, LEGACY_KEYS)
            return cls(values.get("d_in"), values.get("d_sae"), settings=settings,
                       **{key: values[key] for key in own - {"d_in", "d_sae"} if key in values})
        except TypeError as err:
            raise SAEConfigError(f"SAE config values have the wrong type: {err}") from err


__all__ = ["INPUT_NORMS", "LEGACY_KEYS", "SAE_CLASSES", "SETTINGS_CLASSES", "SAEConfig", "SAEConfigError",
           "SAESettings", "settings_class_named", "settings_named"]
