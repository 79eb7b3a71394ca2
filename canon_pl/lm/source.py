"""One activation source for everything that captures: training, the activation cache, stitching and meta-SAE
analyses on text, statistics and benchmarks.

:class:`CaptureSettings` says which activations (model, hook point, text and its documents, context length, token
selection); it is what every export records under ``data`` and what an analysis reads back, so it captures text
exactly as the run's training did. :class:`ActivationSource` turns settings into contexts and captured batches with
no Lightning involved.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from itertools import islice
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from canon_pl.lm.hooked import HookedLanguageModel
from canon_pl.lm.loading import load_causal_lm
from canon_pl.lm.spliced import spliced_loss_sums
from canon_pl.lm.text import (
    DOCUMENT_CHARS,
    ContextLengthError,
    ContextPacker,
    TextCursor,
    check_text_source,
    context_stream,
    document_order_seed,
    iter_documents,
    pack_contexts,
)
from canon_pl.lm.tokens import TokenSelection, select_training_tokens


@dataclass(frozen=True)
class CaptureSettings:
    """Which activations a run sees. Every field is provenance: recorded in each export's ``cfg.json`` under
    ``data`` and in an activation cache's index."""

    model: str = "smollm2-135m"
    hook_point: str = "model.layers.6"
    text: str = "python-docs"
    context_length: int = 128
    exclude_bos: bool = True
    outlier_factor: float | None = 10.0
    val_every: int = 20
    document_chars: int | None = DOCUMENT_CHARS
    shuffle_documents: bool = True
    seed: int = 0

    def provenance(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def order_seed(self) -> int | None:
        """Seed of the document order (``None``: the source's own order)."""
        return document_order_seed(self.seed, self.shuffle_documents)

    @classmethod
    def like_training(cls, provenance: dict[str, Any] | None, **given: Any) -> CaptureSettings:
        """The settings a run recorded (``provenance``; the defaults where it records nothing), with ``given`` in
        place of its own (an analysis's model, hook point and text). Analysing another text than the run's is
        allowed and said on stderr."""
        provenance = provenance or {}
        trained_on, text = provenance.get("text"), given.get("text")
        if trained_on is not None and text is not None and str(trained_on) != str(text):
            print(f"note: analysing {text!r}; the SAEs were trained on {trained_on!r} (captured with the run's context "
                  f"length and token selection)", file=sys.stderr)
        known = {f.name for f in fields(cls)}
        recorded = {key: value for key, value in provenance.items() if key in known}
        return cls(**{**recorded, **{key: value for key, value in given.items() if value is not None}})


CAPTURE_KEYS = tuple(f.name for f in fields(CaptureSettings))
PROVENANCE_KEYS = (*CAPTURE_KEYS, "transformer_lens_hook")
"""What a run records of its activations: the capture settings, and the hook point's TransformerLens name (what
SAELens files call ``hook_name``; ``None`` where TransformerLens has no hook)."""
"""The provenance keys, in order."""


@dataclass
class CapturedBatch:
    """One LM forward: tokens ``[n, seq]``, activations ``[n, seq, d]`` (float32, at the hook point) and the token
    selection (``selection.mask [n, seq]``, ``selection.kept [n_kept, d]``)."""

    tokens: Tensor
    activations: Tensor
    selection: TokenSelection

    @property
    def kept(self) -> Tensor:
        return self.selection.kept

    @property
    def mask(self) -> Tensor:
        return self.selection.mask


class ActivationSource:
    """Text -> contexts -> LM stopped after the hook point -> selected tokens, with no Lightning involved."""

    def __init__(self, settings: CaptureSettings, text_column: str = "text", model_dtype: str = "float32",
                 model_device_map: str | None = None, hooked: HookedLanguageModel | None = None) -> None:
        """
        Args:
            settings: Which activations (recorded as provenance).
            text_column: Column holding the text (hub datasets).
            model_dtype: dtype of the LM weights.
            model_device_map: ``None`` puts the LM whole on one device; ``auto`` spreads its layers over the GPUs.
            hooked: An already loaded LM to share (it must be ``settings.model``).
        """
        self.settings = settings
        self.text_column, self.model_dtype, self.model_device_map = text_column, model_dtype, model_device_map
        self.hooked = hooked
        self.tokens_seen = 0
        self.tokens_excluded = 0

    def load(self, device: torch.device | str = "cpu") -> HookedLanguageModel:
        """Load and check the LM once: text source, hook point, context length and an empty text fail here, before
        long work."""
        if self.hooked is None:
            s = self.settings
            check_text_source(s.text)  # a missing, binary or unreachable text fails before the model loads
            loaded = load_causal_lm(s.model, device=device, dtype=self.model_dtype,
                                    device_map=self.model_device_map)
            hooked = HookedLanguageModel(loaded)
            hooked.site(s.hook_point)
            if s.context_length > loaded.max_context:
                raise ContextLengthError(
                    f"context_length={s.context_length} exceeds the model's maximum of {loaded.max_context} tokens; "
                    f"lower data.init_args.context_length"
                )
            next(iter_documents(s.text, "train", s.val_every, self.text_column, order_seed=None))  # empty text fails
            self.hooked = hooked
        return self.hooked

    @property
    def d_in(self) -> int:
        return self.load().loaded.d_model

    def provenance(self) -> dict[str, Any]:
        """:data:`PROVENANCE_KEYS`: the settings, and once the model is loaded the hook point's TransformerLens name."""
        record = self.settings.provenance()
        if self.hooked is not None:
            record["transformer_lens_hook"] = self.hooked.transformer_lens_name(self.settings.hook_point)
        return record

    @property
    def excluded_fraction(self) -> float:
        return self.tokens_excluded / max(self.tokens_seen, 1)

    def contexts(self, split: str, start: int = 0, shard: tuple[int, int] = (0, 1),
                 cursor: TextCursor | None = None) -> ContextPacker:
        """``[context_length]`` token tensors of ``split`` (``train`` / ``val``) from context ``start`` on (with its
        ``cursor``, read from the packer when the stream was there, nothing before it is tokenised); ``shard = (r,
        W)`` reads documents ``r, r + W, ...`` (one rank's part)."""
        s, tokenizer = self.settings, self.load().tokenizer
        return context_stream(s.text, split, tokenizer, s.context_length, start, s.val_every, self.text_column,
                              bos_token_id=tokenizer.bos_token_id, shard=shard, order_seed=s.order_seed,
                              document_chars=s.document_chars, cursor=cursor)

    def documents(self, split: str) -> Iterator[str]:
        """The documents of ``split`` in the run's seeded order, as text (nothing tokenised)."""
        s = self.settings
        return iter_documents(s.text, split, s.val_every, self.text_column, order_seed=s.order_seed,
                              document_chars=s.document_chars)

    def pack(self, documents: Iterable[str]) -> Iterator[Tensor]:
        """``documents`` packed into ``[context_length]`` token tensors on their own (BOS first, EOS between
        documents), as :meth:`contexts` packs a whole split."""
        tokenizer = self.load().tokenizer
        return pack_contexts(iter(documents), tokenizer, self.settings.context_length, tokenizer.bos_token_id)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the LM on a GPU, nothing on a CPU."""
        if self.load().device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def capture(self, tokens: Tensor) -> CapturedBatch:
        """tokens ``[n, seq]`` -> their activations at the hook point and the token selection (on the LM's device)."""
        with self.autocast():
            acts = self.load().capture(tokens, self.settings.hook_point).float()
        selection = select_training_tokens(acts, self.settings.exclude_bos, self.settings.outlier_factor)
        self.tokens_seen += selection.mask.numel()
        self.tokens_excluded += selection.mask.numel() - int(selection.mask.sum())
        return CapturedBatch(tokens, acts, selection)

    def batches(self, contexts: Iterator[Tensor], contexts_per_forward: int,
                progress: str | None = None) -> Iterator[CapturedBatch]:
        """One :class:`CapturedBatch` per ``contexts_per_forward`` contexts of ``contexts``; ``progress`` names a
        progress bar counted in tokens."""
        bar = tqdm(desc=progress, unit="tok", unit_scale=True, dynamic_ncols=True, disable=progress is None)
        try:
            while chunk := list(islice(contexts, contexts_per_forward)):
                batch = self.capture(torch.stack(chunk))
                bar.update(batch.tokens.numel())
                yield batch
        finally:
            bar.close()

    def take(self, split: str, n_contexts: int, contexts_per_forward: int, shard: tuple[int, int] = (0, 1),
             progress: str | None = None) -> Iterator[CapturedBatch]:
        """The first ``n_contexts`` contexts of ``split`` (fewer when the split has fewer), captured."""
        return self.batches(islice(self.contexts(split, 0, shard), n_contexts), contexts_per_forward, progress)

    def spliced_sums(self, tokens: Tensor, mask: Tensor,
                     reconstructions: dict[str, Callable[[Tensor], Tensor]]) -> dict[str, dict[str, Tensor]]:
        """Next-token loss sums with each SAE spliced in at the kept positions (see ``spliced_loss_sums``)."""
        with self.autocast():
            return spliced_loss_sums(self.load(), tokens, self.settings.hook_point, reconstructions, mask)


__all__ = ["CAPTURE_KEYS", "PROVENANCE_KEYS", "ActivationSource", "CaptureSettings", "CapturedBatch"]
