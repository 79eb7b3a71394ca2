"""``ActivationDataModule``: language-model activations captured with nnsight, streamed through a shuffle buffer
on the training device, resumable at the exact batch."""

from __future__ import annotations

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
from canon_pl.lm import HookedLanguageModel, iterate_buffered_batches
from canon_pl.lm.multi_hook import MultiHookBatch, MultiHookSource, check_hook_points
from canon_pl.lm.source import CAPTURE_KEYS, ActivationSource, CaptureSettings
from canon_pl.lm.text import ContextPacker, TextCursor, TextSourceError
from canon_pl.training.datamodules import ResumableStreamDataModule, _loader


class ActivationDataModule(ResumableStreamDataModule):
    """Text -> tokens -> LM (stopped after the hook) -> kept tokens -> shuffle buffer -> ``[batch, d_in]`` batches.

    Validation batches are dicts ``{"tokens": [n_ctx, seq], "activations": [n_kept, d], "mask": [n_ctx, seq]}`` from
    held-out documents, so the SAE module can measure both FVU and the spliced next-token loss.
    """

    def __init__(
        self,
        model: str = CaptureSettings.model,
        hook_point: str = CaptureSettings.hook_point,
        text: str = CaptureSettings.text,
        text_column: str = "text",
        context_length: int = CaptureSettings.context_length,
        contexts_per_forward: int = 32,
        block_contexts: int = 256,
        batch_size: int = 4096,
        exclude_bos: bool = CaptureSettings.exclude_bos,
        outlier_factor: float | None = CaptureSettings.outlier_factor,
        val_contexts: int = 64,
        val_every: int = CaptureSettings.val_every,
        document_chars: int | None = CaptureSettings.document_chars,
        shuffle_documents: bool = CaptureSettings.shuffle_documents,
        model_dtype: str = "float32",
        model_device_map: str | None = None,
        seed: int = CaptureSettings.seed,
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
                the visible GPUs (one process, for an LM too big to sit next to the SAE; see docs/guide.md "Scaling out").
            seed: Seed of the document order and of the buffer's shuffling.
        """
        given = {key: value for key, value in locals().items() if key in CAPTURE_KEYS}
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
        self.source = self._make_source(CaptureSettings(**given),
                                        text_column, model_dtype, model_device_map)
        self._stream: ContextPacker | None = None
        self._stream_position = 0
        self._cursors: dict[int, TextCursor] = {}  # context number -> where it starts in the text, per block read

    # ------------------------------------------------------------------------------------------- set-up
    def _make_source(self, settings: CaptureSettings, text_column: str, model_dtype: str,
                     model_device_map: str | None) -> ActivationSource:
        return ActivationSource(settings, text_column=text_column, model_dtype=model_dtype,
                                model_device_map=model_device_map)

    def initial_position(self) -> Any:
        return [0, 0, None]

    @property
    def hooked(self) -> HookedLanguageModel | None:
        """The loaded LM (``None`` until :meth:`load_model`); set it to share one LM between DataModules."""
        return self.source.hooked

    @hooked.setter
    def hooked(self, hooked: HookedLanguageModel | None) -> None:
        self.source.hooked = hooked

    def load_model(self, device: torch.device | str = "cpu") -> HookedLanguageModel:
        """Load and check the LM once: hook point, context length and text source fail here, before long work."""
        return self.source.load(device)

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.load_model(device)

    @property
    def d_in(self) -> int:
        return self.source.d_in

    def provenance(self) -> dict[str, Any]:
        """How these activations are made (:class:`CaptureSettings`): recorded in every export's cfg.json under
        ``data`` and in an activation cache's index, and read back by the analyses."""
        return self.source.provenance()

    @property
    def excluded_fraction(self) -> float:
        return self.source.excluded_fraction

    # ------------------------------------------------------------------------------------------- capture
    def _contexts(self, split: str, start: int, cursor: TextCursor | None = None) -> ContextPacker:
        """This rank's contexts: under DDP rank ``r`` of ``W`` reads documents ``r, r + W, ...`` of the split."""
        return self.source.contexts(split, start, shard=world(), cursor=cursor)

    def load_block(self, k: int) -> Tensor:
        """Block ``k``: kept activations of train contexts ``[k * block_contexts, (k + 1) * block_contexts)``."""
        hp = self.hparams
        first = k * hp.block_contexts
        if self._stream is None or self._stream_position != first:
            self._stream = self._contexts("train", first, self._cursors.get(first))
            self._stream_position = first
        self._cursors = {c: v for c, v in self._cursors.items() if c >= first - hp.block_contexts}  # a resume's needs
        self._cursors[first] = self._stream.cursor
        pieces = []
        chunks = range(0, hp.block_contexts, hp.contexts_per_forward)
        for _ in tqdm(chunks, desc=f"filling buffer (block {k})", leave=False, unit="fwd", dynamic_ncols=True,
                      disable=world()[0] != 0):  # one bar, rank 0's
            contexts = list(islice(self._stream, hp.contexts_per_forward))
            self._stream_position += len(contexts)
            if not contexts:
                break
            pieces.append(self.source.capture(torch.stack(contexts)).kept)
        if not pieces:
            return torch.empty(0, self.d_in, device=self.load_model().device)
        return torch.cat(pieces)

    def train_batches(self, start: Any) -> Iterator[tuple[Any, Tensor]]:
        """Positions are ``[generation, offset, cursor]``: the buffer's place and where in the text the block a
        resume reads first (block ``generation - 1``) starts, so a resumed run tokenises nothing before it (a
        position without a cursor, from an older checkpoint, re-tokenises the text up to there)."""
        generation, offset, *cursor = start
        first_needed = max(generation - 1, 0) * self.hparams.block_contexts
        if cursor and cursor[0] is not None:
            self._cursors[first_needed] = tuple(cursor[0])
        yielded_any = False
        for position, batch in iterate_buffered_batches(self.load_block, self.hparams.batch_size, self.hparams.seed,
                                                        (generation, offset)):
            yielded_any = True
            needed = self._cursors.get(max(position[0] - 1, 0) * self.hparams.block_contexts)
            yield [*position, list(needed) if needed is not None else None], batch
        if not yielded_any and (generation, offset) == (0, 0):
            raise TextSourceError(f"the text source {self.hparams.text!r} produced fewer tokens than one batch of "
                                  f"{self.hparams.batch_size}")

    # ------------------------------------------------------------------------------------------- validation
    def val_dataloader(self) -> DataLoader:
        hp = self.hparams

        def batches() -> Iterator[dict[str, Tensor]]:
            per_rank = -(-hp.val_contexts // world()[1])  # the ranks share val_contexts between them
            for batch in self.source.take("val", per_rank, hp.contexts_per_forward, shard=world()):
                yield {"tokens": batch.tokens, "activations": self._val_activations(batch), "mask": batch.mask}

        return _loader(batches)

    def _val_activations(self, batch: Any) -> Any:
        """What a validation batch carries under ``activations``: the kept ``[n_kept, d]``."""
        return batch.kept

    def spliced_sums(self, tokens: Tensor, mask: Tensor,
                     reconstructions: dict[str, Callable[[Tensor], Tensor]]) -> dict[str, dict[str, Tensor]]:
        """Next-token loss sums with each SAE spliced in at the kept positions (see ``spliced_loss_sums``)."""
        return self.source.spliced_sums(tokens, mask, reconstructions)


class MultiHookActivationDataModule(ActivationDataModule):
    """:class:`ActivationDataModule` read at several hook points from one LM forward that stops after the last.

    Training batches are ``{hook point: [batch, d_in]}`` (row ``i`` the same token at every hook point); validation
    batches carry ``activations`` as ``{hook point: [n_kept, d]}``. A token is kept at every hook point or at none
    (see :mod:`canon_pl.lm.multi_hook`). Train it with :class:`~canon_pl.training.MultiHookFamilyModule`.
    """

    def __init__(self, hook_points: list[str], model: str = CaptureSettings.model, text: str = CaptureSettings.text,
                 text_column: str = "text", context_length: int = CaptureSettings.context_length,
                 contexts_per_forward: int = 32, block_contexts: int = 256, batch_size: int = 4096,
                 exclude_bos: bool = CaptureSettings.exclude_bos,
                 outlier_factor: float | None = CaptureSettings.outlier_factor, val_contexts: int = 64,
                 val_every: int = CaptureSettings.val_every,
                 document_chars: int | None = CaptureSettings.document_chars,
                 shuffle_documents: bool = CaptureSettings.shuffle_documents, model_dtype: str = "float32",
                 model_device_map: str | None = None, seed: int = CaptureSettings.seed) -> None:
        """
        Args:
            hook_points: The hook points, each as ``ActivationDataModule``'s ``hook_point`` (for example
                ``[model.layers.3, model.layers.6, model.layers.9]``); each listed once.
            model, text, text_column, context_length, contexts_per_forward, block_contexts, batch_size, exclude_bos,
                outlier_factor, val_contexts, val_every, document_chars, shuffle_documents, model_dtype,
                model_device_map, seed: as for :class:`ActivationDataModule` (``batch_size`` tokens per batch, each
                read at every hook point).
        """
        self.hook_points = check_hook_points(hook_points)
        super().__init__(model=model, hook_point=self.hook_points[0], text=text, text_column=text_column,
                         context_length=context_length, contexts_per_forward=contexts_per_forward,
                         block_contexts=block_contexts, batch_size=batch_size, exclude_bos=exclude_bos,
                         outlier_factor=outlier_factor, val_contexts=val_contexts, val_every=val_every,
                         document_chars=document_chars, shuffle_documents=shuffle_documents,
                         model_dtype=model_dtype, model_device_map=model_device_map, seed=seed)
        self.save_hyperparameters()

    def _make_source(self, settings: CaptureSettings, text_column: str, model_dtype: str,
                     model_device_map: str | None) -> MultiHookSource:
        return MultiHookSource(settings, self.hook_points, text_column=text_column, model_dtype=model_dtype,
                               model_device_map=model_device_map)

    def provenance(self) -> dict[str, Any]:
        raise SettingError(f"this DataModule reads {len(self.hook_points)} hook points "
                           f"({', '.join(self.hook_points)}): "
                           f"train it with canon_pl.training.MultiHookFamilyModule, which records each hook point's "
                           f"provenance in its own family")

    def provenance_by_hook(self) -> dict[str, dict[str, Any]]:
        """``{hook point: what its family's exports record}``."""
        return self.source.provenance_by_hook()

    def load_block(self, k: int) -> Tensor:
        """Block ``k`` with the hook points side by side: ``[n_kept, n_hooks * d_in]``."""
        block = super().load_block(k)
        if block.numel() == 0:
            return torch.empty(0, self.d_in * len(self.hook_points), device=block.device)
        return block

    def split_by_hook(self, batch: Tensor) -> dict[str, Tensor]:
        """``[batch, n_hooks * d_in]`` -> ``{hook point: [batch, d_in]}`` (each contiguous, as the SAE kernels read)."""
        return {h: part.contiguous() for h, part in zip(self.hook_points, batch.split(self.d_in, dim=1))}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        return self.split_by_hook(batch) if isinstance(batch, Tensor) else batch

    def _val_activations(self, batch: MultiHookBatch) -> dict[str, Tensor]:
        return dict(batch.kept_by_hook)

    def spliced_sums_by_hook(self, tokens: Tensor, mask: Tensor,
                             reconstructions: dict[str, dict[str, Callable[[Tensor], Tensor]]],
                             ) -> dict[str, dict[str, dict[str, Tensor]]]:
        """``{hook point: {name: loss sums}}`` with each hook point's reconstructions spliced in there."""
        return self.source.spliced_sums_by_hook(tokens, mask, reconstructions)
