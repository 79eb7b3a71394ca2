"""The SAE's architecture hyper-parameters, as one serialisable dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from canon_pl.errors import CanonError


class SAEConfigError(CanonError, ValueError):
    """A hyper-parameter that cannot describe a valid SAE."""


INPUT_NORMS = ("none", "center", "layer_norm")

SAE_CLASSES: dict[str, type] = {}
"""Architecture name -> SAE class (a :class:`canon_pl.sae.base.SparseAutoencoder` subclass), filled as each class with
an ``architecture`` is defined: the one registry the config validates against."""


@dataclass
class SAEConfig:
    """Architecture of one sparse autoencoder (docs/design.md 1.1)."""

    d_in: int
    """Width of the activations the SAE reads (the model's d_model for a residual stream)."""
    d_sae: int
    """Number of latents (rows of ``W_dec``)."""
    architecture: str = "batchtopk"
    """``batchtopk`` (default), ``topk``, ``relu`` (ReLU + L1) or ``jumprelu`` (per-latent thresholds; imported SAEs,
    not trained here)."""
    k: int = 32
    """Active latents per token: exact for ``topk``, on average over the batch for ``batchtopk``."""
    l1_coefficient: float = 5.0
    """Weight of the L1 penalty (``relu`` only)."""
    aux_k: int = 512
    """Dead latents used per token by the AuxK loss (capped at ``d_sae // 2``)."""
    aux_coefficient: float = 1.0 / 32.0
    """Weight of the AuxK loss; 0 disables it."""
    dead_tokens_threshold: int = 10_000_000
    """A latent that has not fired for this many training tokens counts as dead."""
    threshold_momentum: float = 0.9
    """EMA momentum of the BatchTopK inference threshold (smallest kept activation per batch). About ten batches:
    pre-activations shrink during training and a longer average lags behind (0.99 left θ 35% above the final
    batches' value after 250 steps on SmolLM2, so held-out L0 was 20 instead of k = 32)."""
    encoder_bias: bool = True
    """Whether ``b_enc`` is learned; ``False`` fixes it at zero (the meta-SAE of the paper's code has no encoder
    bias)."""
    kernel: str = "sparse"
    """Training step of the TopK family: ``sparse`` (only the selected latents enter the backward pass) or
    ``dense`` (the plain formula; a reference, slower)."""
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
    options: dict[str, Any] = field(default_factory=dict)
    """Hyper-parameters of the architecture that no other has (its settings class's own fields, by name)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SAEConfigError` naming the first invalid field and how to fix it."""
        if self.architecture not in SAE_CLASSES:
            raise SAEConfigError(
                f"unknown SAE architecture {self.architecture!r}; choose one of {', '.join(SAE_CLASSES)} (or import "
                f"the module that defines it first)"
            )
        if not isinstance(self.options, dict):
            raise SAEConfigError(f"options must be a dict of architecture settings, got {type(self.options).__name__}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SAEConfigError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if SAE_CLASSES[self.architecture].selects_k:
            if not 0 < self.k <= self.d_sae:
                raise SAEConfigError(
                    f"k={self.k} must be between 1 and d_sae={self.d_sae}: a token cannot use more latents than "
                    f"the SAE has; lower k or raise d_sae"
                )
        if self.input_norm not in INPUT_NORMS:
            raise SAEConfigError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {self.input_norm!r}")
        if self.kernel not in ("sparse", "dense"):
            raise SAEConfigError(f"kernel must be 'sparse' or 'dense', got {self.kernel!r}")
        if not math.isfinite(self.l1_coefficient) or self.l1_coefficient < 0:
            raise SAEConfigError(f"l1_coefficient must be a finite number >= 0, got {self.l1_coefficient}")
        if self.aux_k <= 0 or not math.isfinite(self.aux_coefficient) or self.aux_coefficient < 0:
            raise SAEConfigError(f"aux_k must be > 0 and aux_coefficient >= 0, got {self.aux_k}, {self.aux_coefficient}")
        if self.dead_tokens_threshold <= 0:
            raise SAEConfigError(f"dead_tokens_threshold must be > 0, got {self.dead_tokens_threshold}")
        if not 0.0 <= self.threshold_momentum < 1.0:
            raise SAEConfigError(f"threshold_momentum must be in [0, 1), got {self.threshold_momentum}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Build from a dict, rejecting keys this version does not know (they would be silently lost)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SAEConfigError(f"unknown SAE config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)
