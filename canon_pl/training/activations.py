"""``ActivationDataModule``: language-model activations captured with nnsight, streamed through a shuffle buffer
on the training device, resumable at the exact batch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from canon_pl.checks import check_counts, check_positive
from canon_pl.distributed import world
from canon_pl.errors import SettingError
from canon_pl.lm import (
    ContextLengthError,
    HookedLanguageModel,
    context_stream,
    iterate_buffered_batches,
    load_causal_lm,
    select_training_tokens,
    spliced_loss_sums,
)
from canon_pl.lm.text import TextSourceError, check_text_source, document_order_seed, iter_documents
from canon_pl.training.datamodules import ResumableStreamDataModule, _loader


CAPTURE_KEYS = ("model", "hook_point", "text", "context_length", "exclude_bos", "outlier_factor", "val_every",
                "document_chars", "shuffle_documents", "seed")
"""The settings that decide which activations a run sees: the model and hook point, the text and its documents
(held-out split, order), the context length and the token selection."""


class ActivationDataModule(ResumableStreamDataModule):
    """Text -> tokens -> LM (stopped after the hook) -> kept tokens -> shuffle buffer -> ``[batch, d_in]`` batches.

    Validation batches are dicts ``{"tokens": [n_ctx, seq], "activations": [n_kept, d], "mask": [n_ctx, seq]}`` from
    held-out documents, so the SAE module can measure both FVU and the spliced next-token loss.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        hook_point: str = "model.layers.6",
        text: str = "python-docs",
        text_column: str = "text",
        context_length: int = 128,
        contexts_per_forward: int = 32,
        block_contexts: int = 256,
        batch_size: int = 4096,
        exclude_bos: bool = True,
        outlier_factor: float | None = 10.0,
        val_contexts: int = 64,
        val_every: int = 20,
        document_chars: int | None = 2000,
        shuffle_documents: bool = True,
        model_dtype: str = "float32",
        model_device_map: str | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            model: ``smollm2-135m`` (bundled), a local model folder, or a hub id.
            hook_point: ``model.layers.N`` (residual stream), ``model.layers.N.mlp`` or ``model.layers.N.self_attn``.
            text: ``python-docs``, ``pydoc-topics``, a local file/folder/glob, or a hub dataset name.
            text_column: Column holding the text (hub datasets).
            context_length: Tokens per context, BOS included.
            contexts_per_forward: Contexts per LM forward pass.
            block_contexts: Contexts per buffer block; the buffer holds two blocks and refills when half is served.
            batch_size: Tokens per SAE batch on each rank (the global batch under DDP is this x the ranks).
            exclude_bos: Leave BOS out of training and FVU.
            outlier_factor: Leave out tokens whose norm exceeds this multiple of the median (``null`` keeps them).
            val_contexts: Held-out contexts evaluated at each validation.
            val_every: Every ``val_every``-th document (in the source's order, so spread over the corpus) is held
                out for validation and analyses.
            document_chars: Local text files are cut into documents of about this many characters at paragraph
                breaks (``null``: one document per file).
            shuffle_documents: Read each split's documents in the random order of ``seed`` (``false``: the
                source's order, file by file).
            model_dtype: dtype of the LM weights (``float32``; ``bfloat16`` on a GPU).
            model_device_map: ``None`` puts the LM whole on the training device; ``auto`` spreads its layers over
                the visible GPUs (one process, for an LM too big to sit next to the SAE; see README "Scaling out").
            seed: Seed of the document order and of the buffer's shuffling.
        """
        super().__init__()
        self.save_hyperparameters()
        check_counts(2, context_length=context_length, val_every=val_every)
        check_counts(contexts_per_forward=contexts_per_forward, block_contexts=block_contexts, batch_size=batch_size)
        check_counts(0, val_contexts=val_contexts)
        if block_contexts < contexts_per_forward:
            raise SettingError(f"block_contexts ({block_contexts}) must be at least contexts_per_forward "
                               f"({contexts_per_forward}): a buffer block holds whole forwards")
        if document_chars is not None:
            check_counts(document_chars=document_chars)
        if outlier_factor is not None:
            check_positive(outlier_factor=outlier_factor)
        self.hooked: HookedLanguageModel | None = None
        self.tokens_seen = 0
        self.tokens_excluded = 0
        self._stream: Iterator[Tensor] | None = None
        self._stream_position = 0

    # ------------------------------------------------------------------------------------------- set-up
    def initial_position(self) -> Any:
        return [0, 0]

    def load_model(self, device: torch.device | str = "cpu") -> HookedLanguageModel:
        """Load and check the LM once: hook point, context length and text source fail here, before long work."""
        if self.hooked is None:
            hp = self.hparams
            check_text_source(hp.text)  # a missing, binary or unreachable text fails before the model loads
            loaded = load_causal_lm(hp.model, device=device, dtype=hp.model_dtype, device_map=hp.model_device_map)
            hooked = HookedLanguageModel(loaded)
            hooked.parse_hook_point(hp.hook_point)
            if hp.context_length > loaded.max_context:
                raise ContextLengthError(
                    f"context_length={hp.context_length} exceeds the model's maximum of {loaded.max_context} tokens; "
                    f"lower data.init_args.context_length"
                )
            # missing/empty text fails now
            next(iter_documents(hp.text, "train", hp.val_every, hp.text_column, order_seed=None))
            self.hooked = hooked
        return self.hooked

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.load_model(device)

    @property
    def d_in(self) -> int:
        return self.load_model().loaded.d_model

    def provenance(self) -> dict[str, Any]:
        """How these activations are made (:data:`CAPTURE_KEYS`): recorded in every export's cfg.json under
        ``data`` and in an activation cache's index, and read back by the analyses."""
        return {key: self.hparams[key] for key in CAPTURE_KEYS}

    @property
    def excluded_fraction(self) -> float:
        return self.tokens_excluded / max(self.tokens_seen, 1)

    # ------------------------------------------------------------------------------------------- capture
    def _autocast(self) -> contextlib.AbstractContextManager:
        device = self.hooked.device
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def capture(self, contexts: Tensor) -> tuple[Tensor, Tensor]:
        """contexts ``[n, seq]`` -> (kept activations ``[n_kept, d]`` float32 on the LM's device, mask ``[n, seq]``)."""
        hooked = self.load_model()
        with self._autocast():
            acts = hooked.capture(contexts, self.hparams.hook_point)
        selection = select_training_tokens(acts.float(), self.hparams.exclude_bos, self.hparams.outlier_factor)
        self.tokens_seen += selection.mask.numel()
        self.tokens_excluded += selection.mask.numel() - int(selection.mask.sum())
        return selection.kept, selection.mask

    def _contexts(self, split: str, start: int) -> Iterator[Tensor]:
        """This rank's contexts: under DDP rank ``r`` of ``W`` reads documents ``r, r + W, ...`` of the split."""
        hp, tokenizer = self.hparams, self.load_model().tokenizer
        return context_stream(hp.text, split, tokenizer, hp.context_length, start, hp.val_every, hp.text_column,
                              bos_token_id=tokenizer.bos_token_id, shard=world(), order_seed=self.order_seed,
                              document_chars=hp.document_chars)

    @property
    def order_seed(self) -> int | None:
        """Seed of the document order (``None``: the source's own order)."""
        return document_order_seed(self.hparams.seed, self.hparams.shuffle_documents)

    def load_block(self, k: int) -> Tensor:
        """Block ``k``: kept activations of train contexts ``[k * block_contexts, (k + 1) * block_contexts)``."""
        hp = self.hparams
        first = k * hp.block_contexts
        if self._stream is None or self._stream_position != first:
            self._stream, self._stream_position = self._contexts("train", first), first
        pieces = []
        chunks = range(0, hp.block_contexts, hp.contexts_per_forward)
        for _ in tqdm(chunks, desc=f"filling buffer (block {k})", leave=False, unit="fwd", dynamic_ncols=True,
                      disable=world()[0] != 0):  # one bar, rank 0's
            contexts = list(islice(self._stream, hp.contexts_per_forward))
            self._stream_position += len(contexts)
            if not contexts:
                break
            pieces.append(self.capture(torch.stack(contexts))[0])
        if not pieces:
            return torch.empty(0, self.d_in, device=self.load_model().device)
        return torch.cat(pieces)

    def train_batches(self, start: Any) -> Iterator[tuple[Any, Tensor]]:
        generation, offset = start
        yielded_any = False
        for position, batch in iterate_buffered_batches(self.load_block, self.hparams.batch_size, self.hparams.seed,
                                                        (generation, offset)):
            yielded_any = True
            yield list(position), batch
        if not yielded_any and (generation, offset) == (0, 0):
            raise TextSourceError(f"the text source {self.hparams.text!r} produced fewer tokens than one batch of "
                                  f"{self.hparams.batch_size}")

    # ------------------------------------------------------------------------------------------- validation
    def val_dataloader(self) -> DataLoader:
        hp = self.hparams

        def batches() -> Iterator[dict[str, Tensor]]:
            per_rank = -(-hp.val_contexts // world()[1])  # the ranks share val_contexts between them
            contexts = list(islice(self._contexts("val", 0), per_rank))
            for i in range(0, len(contexts), hp.contexts_per_forward):
                tokens = torch.stack(contexts[i:i + hp.contexts_per_forward])
                kept, mask = self.capture(tokens)
                yield {"tokens": tokens, "activations": kept, "mask": mask}

        return _loader(batches)

    def spliced_sums(self, tokens: Tensor, mask: Tensor,
                     reconstructions: dict[str, Callable[[Tensor], Tensor]]) -> dict[str, dict[str, Tensor]]:
        """Next-token loss sums with each SAE spliced in at the kept positions (see ``spliced_loss_sums``)."""
        with self._autocast():
            return spliced_loss_sums(self.load_model(), tokens, self.hparams.hook_point, reconstructions, mask)
