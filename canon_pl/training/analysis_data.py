"""Activations for an analysis (stitching, meta-SAE): from an activation cache or captured from text."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from canon_pl.data import ShardIndex
from canon_pl.data.shards import INDEX_FILE
from canon_pl.errors import CanonError
from canon_pl.lm.source import ActivationSource, CaptureSettings
from canon_pl.lm.text import TextSourceError, check_text_source
from canon_pl.sae import SparseAutoencoder
from canon_pl.metrics.spliced import SplicedLoss, spliced_loss_on


class AnalysisDataError(CanonError, ValueError):
    """Analysis data that does not fit the SAEs (width, model, hook point) or is empty."""


class AnalysisData(NamedTuple):
    """Held-out activations ``x [n, d_in]`` (float32); with ``ce`` and text data the next-token losses with an SAE
    spliced in (:data:`SplicedLoss`); with ``labels`` and text data each token label of
    :mod:`canon_pl.lm.token_labels` for those tokens (``int8 [n]``). An activation cache gives neither."""

    x: Tensor
    spliced: SplicedLoss | None = None
    labels: dict[str, Tensor] | None = None


def cache_activations(path: str | Path, n_tokens: int, d_in: int, model_id: str | None = None,
                      hook_point: str | None = None, split: str = "val") -> Tensor:
    """The first ``n_tokens`` *held-out* activations ``[n, d_in]`` (float32) of a cache written by ``canon-pl
    cache`` (its shards marked ``val``; an unmarked cache's last shard): never tokens the SAEs trained on.
    ``split="train"`` reads the training part instead (to compare training and held-out error: overfitting).

    ``model_id`` / ``hook_point`` (the SAEs'): a cache that records another model or hook point is refused (the same
    d_in does not make the same activations)."""
    index = ShardIndex.load(path)
    if index.d_in != d_in:
        raise AnalysisDataError(f"the activation cache at {path} has d_in={index.d_in} but the SAEs take {d_in}")
    for what, mine in (("model", model_id), ("hook_point", hook_point)):
        recorded = index.metadata.get(what)
        if mine is not None and recorded is not None and str(recorded) != str(mine):
            raise AnalysisDataError(f"the activation cache at {path} holds {what} {recorded!r} but the SAEs were "
                                    f"trained on {mine!r}: pass a cache of {mine!r} (canon-pl cache) or a text source")
    held_out = index.split_ids(split)
    if not held_out and split != "val":
        raise AnalysisDataError(f"the activation cache at {path} has no {split!r} part")
    if not held_out:
        raise AnalysisDataError(f"the activation cache at {path} has no held-out part (analyses never read training "
                                f"tokens): rebuild it with canon-pl cache --val_tokens N, or pass a text source")
    pieces, have = [], 0
    for i in held_out:
        if have >= n_tokens:
            break
        shard = index.read_shard(i)[: n_tokens - have].float()
        pieces.append(shard)
        have += shard.shape[0]
    return torch.cat(pieces)


def text_activations(text: str, n_tokens: int, model: str, hook_point: str, ce: bool = False,
                     device: str = "cpu", provenance: dict[str, Any] | None = None,
                     contexts_per_forward: int = 32, labels: bool = False) -> AnalysisData:
    """Activations ``[n, d]`` at ``hook_point`` on held-out documents of ``text``, captured as the run's training
    captured its own (``provenance``: the export's recorded data settings, :meth:`CaptureSettings.like_training`),
    with ``ce`` a :data:`SplicedLoss` on the first batch of those contexts and with ``labels`` the tokens' labels."""
    from canon_pl.lm.token_labels import tokenizer_labels

    source = ActivationSource(CaptureSettings.like_training(provenance, model=model, hook_point=hook_point, text=text))
    label_tokens = tokenizer_labels(source.load(device).tokenizer) if labels else None
    n_contexts = math.ceil(n_tokens / (source.settings.context_length - 1))
    activations, lm_batches, token_labels = [], [], []
    for batch in source.take("val", n_contexts, contexts_per_forward):
        activations.append(batch.kept)
        if label_tokens is not None:
            mask = batch.mask.cpu()
            token_labels.append({name: values[mask] for name, values in label_tokens(batch.tokens.cpu()).items()})
        if not lm_batches:
            lm_batches.append((batch.tokens, batch.mask))
    if not activations:
        raise AnalysisDataError(f"the text source {text!r} gave no held-out tokens")
    kept = {name: torch.cat([part[name] for part in token_labels])[:n_tokens]
            for name in token_labels[0]} if token_labels else None
    return AnalysisData(torch.cat(activations)[:n_tokens],
                        spliced_loss_on(source.spliced_sums, lm_batches) if ce else None, kept)


def analysis_activations(data: str, n_tokens: int, sae: SparseAutoencoder, ce: bool = False,
                         model: str | None = None, hook_point: str | None = None,
                         device: str = "cpu", provenance: dict[str, Any] | None = None,
                         labels: bool = False) -> AnalysisData:
    """``data`` is an activation-cache folder (no next-token loss, no token labels) or a text source captured
    through the SAE's model and hook point (or the ones given), as the run recorded in ``provenance`` captured its
    training text (``canon_pl.io.training_data`` of its export)."""
    if n_tokens <= 0:
        raise AnalysisDataError(f"the number of analysis tokens must be positive, got {n_tokens}")
    if (Path(data) / INDEX_FILE).is_file():
        return AnalysisData(cache_activations(data, n_tokens, sae.d_in, model or sae.cfg.model_id,
                                              hook_point or sae.cfg.hook_point))
    try:
        check_text_source(data)  # before any model is loaded
    except TextSourceError as err:
        raise AnalysisDataError(f"{data!r} is not an activation cache (no {INDEX_FILE} there) and not a readable "
                                f"text source: {err}") from err
    model, hook_point = model or sae.cfg.model_id, hook_point or sae.cfg.hook_point
    if not model or not hook_point:
        raise AnalysisDataError(f"the SAE records no model_id/hook_point, so text data {data!r} cannot be captured: "
                                f"pass the model and hook point (--model, --hook_point)")
    captured = text_activations(data, n_tokens, model, hook_point, ce, device, provenance, labels=labels)
    if captured.x.shape[1] != sae.d_in:
        raise AnalysisDataError(f"{hook_point} of {model} gives {captured.x.shape[1]}-dimensional activations but "
                                f"the SAE takes {sae.d_in}")
    return captured
