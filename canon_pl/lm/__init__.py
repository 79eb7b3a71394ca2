"""Language models and text: loading, nnsight capture and splicing, token packing and selection, the buffer."""

from canon_pl.lm.buffer import iterate_buffered_batches
from canon_pl.lm.hooked import HookedLanguageModel, HookPointError
from canon_pl.lm.loading import (
    BUNDLED_MODELS,
    LoadedModel,
    ModelLoadError,
    load_causal_lm,
)
from canon_pl.lm.source import CAPTURE_KEYS, ActivationSource, CapturedBatch, CaptureSettings
from canon_pl.lm.spliced import spliced_loss_sums
from canon_pl.lm.text import (
    NAMED_SOURCES,
    ContextLengthError,
    TextSourceError,
    check_text_source,
    context_stream,
    iter_documents,
    pack_contexts,
)
from canon_pl.lm.tokens import TokenSelection, select_training_tokens

__all__ = [
    "CAPTURE_KEYS",
    "ActivationSource",
    "CaptureSettings",
    "CapturedBatch",
    "BUNDLED_MODELS",
    "ContextLengthError",
    "HookPointError",
    "HookedLanguageModel",
    "LoadedModel",
    "ModelLoadError",
    "NAMED_SOURCES",
    "TextSourceError",
    "TokenSelection",
    "check_text_source",
    "context_stream",
    "iter_documents",
    "iterate_buffered_batches",
    "load_causal_lm",
    "pack_contexts",
    "select_training_tokens",
    "spliced_loss_sums",
]
