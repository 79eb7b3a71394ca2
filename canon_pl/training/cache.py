"""Writing an ``ActivationDataModule``'s activations to disk shards, in resumable pieces, for
``ActivationShardDataModule``.

A cache is written in *pieces*: piece ``p`` holds the activations of documents ``[p * piece_documents, (p + 1) *
piece_documents)`` of the training split, in the run's seeded document order, packed into contexts on their own. The
index is rewritten (atomically) after every piece, so a killed writer loses at most the piece it was writing, and the
next run with the same settings goes on at the next piece: the documents of the earlier pieces are read as text and
skipped, never tokenised or run through the model again. The held-out part (activations of held-out documents) is
written with the first piece. The reader shuffles tokens across shards (``iterate_shard_batches``), so the writer
keeps each piece's tokens in their order.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from canon_pl.checks import check_counts
from canon_pl.data import ShardIndex
from canon_pl.data.shards import CACHE_INDEX, INDEX_FILE, ShardWriter, write_shard_index
from canon_pl.lm.text import TextSourceError
from canon_pl.lm.text_identity import identity_text, text_identity
from canon_pl.training.activations import ActivationDataModule

PIECE_DOCUMENTS = 2000
"""Documents of the training split per piece of a cache (about 1M SmolLM2 tokens of the bundled documentation,
8-10 minutes of capture on two CPU cores): what a killed writer can lose."""


def cache_metadata(datamodule: ActivationDataModule) -> dict:
    """What a cache must match to stand in for ``datamodule``'s stream: its provenance."""
    return datamodule.provenance()


def held_out_activations(datamodule: ActivationDataModule, n_tokens: int) -> Iterator[Tensor]:
    """Kept activations ``[n, d_in]`` (CPU) of the held-out documents, in their seeded order, ``n_tokens`` in all (or
    as many as the held-out split has)."""
    written = 0
    batches = datamodule.source.batches(datamodule.source.contexts("val"), datamodule.hparams.contexts_per_forward,
                                        progress="caching held-out activations")
    for batch in batches:
        kept = batch.kept[: n_tokens - written]
        written += kept.shape[0]
        yield kept.cpu()
        if written >= n_tokens:
            return


def pieces_to_resume(directory: str | Path, metadata: dict[str, Any], dtype: str, layout: dict[str, int],
                     identity: dict[str, Any]) -> tuple[list[dict], list[dict], dict[str, Any] | None] | None:
    """``(shards, pieces, recorded text identity)`` of the cache in ``directory`` when it was written in pieces with
    these settings (``metadata``, ``dtype`` and ``layout``: pieces and shard sizes), from the same text (``identity``,
    :func:`~canon_pl.lm.text_identity.text_identity`, where the cache recorded one) and every shard it lists is
    there; else ``None`` (no cache, or one of other settings or text, which a new write replaces)."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        return None
    raw = CACHE_INDEX.read(path)
    same = (isinstance(raw.get("pieces"), list) and raw.get("metadata") == metadata and raw.get("dtype") == dtype
            and all(raw.get(key) == value for key, value in layout.items()))
    if not same:
        print(f"note: {directory} holds a cache of other settings (or one not written in pieces); this write "
              f"replaces it once its first piece is written", file=sys.stderr)
        return None
    recorded = raw.get("text_identity")
    if recorded is not None and recorded.get("sha256") != identity.get("sha256"):
        print(f"note: the text of {directory}'s earlier pieces is not the text on this machine now "
              f"({identity_text(recorded)} then; {identity_text(identity)} now, a package update?): this write "
              f"replaces the cache once its first piece is written", file=sys.stderr)
        return None
    shards = list(raw["shards"])
    missing = [entry["file"] for entry in shards if not (Path(directory) / entry["file"]).is_file()]
    if missing:
        print(f"note: {directory}'s index lists {len(missing)} missing shard(s) ({missing[0]}, ...); the cache is "
              f"written anew", file=sys.stderr)
        return None
    return shards, list(raw["pieces"]), recorded


def write_activation_cache(datamodule: ActivationDataModule, directory: str | Path, n_tokens: int,
                           dtype: str = "float16", tokens_per_shard: int = 262_144,
                           val_tokens: int = 0, device: str = "cpu",
                           piece_documents: int = PIECE_DOCUMENTS) -> ShardIndex:
    """Capture ``n_tokens`` training activations into safetensors shards, piece by piece (see the module), and
    ``val_tokens`` activations of held-out documents into shards marked ``"split": "val"`` (what validation and the
    analyses read). A cache of the same settings already in ``directory`` is continued, not redone; when the
    training split runs out first, the cache holds all of it and says so. The LM runs on ``device``."""
    check_counts(n_tokens=n_tokens, piece_documents=piece_documents, tokens_per_shard=tokens_per_shard)
    check_counts(0, val_tokens=val_tokens)
    datamodule.load_model(device)
    source, d_in = datamodule.source, datamodule.d_in
    metadata = {**cache_metadata(datamodule), "d_in": d_in}
    layout = {"piece_documents": piece_documents, "tokens_per_shard": tokens_per_shard}
    identity = text_identity(datamodule.hparams.text)
    shards, pieces, recorded = pieces_to_resume(directory, metadata, dtype, layout, identity) or ([], [], identity)
    written = sum(int(piece["tokens"]) for piece in pieces)
    if pieces and written < n_tokens:
        print(f"resuming the cache in {directory} at piece {len(pieces)} ({written:,} of {n_tokens:,} training "
              f"activations written)", file=sys.stderr)
    exhausted = bool(pieces) and int(pieces[-1]["documents"]) < piece_documents  # the split ended in that piece
    documents = islice(source.documents("train"), len(pieces) * piece_documents, None)  # text only, not tokenised
    progress = tqdm(total=n_tokens, initial=min(written, n_tokens), desc="caching activations", unit="tok",
                    unit_scale=True, dynamic_ncols=True)
    try:
        while written < n_tokens and not exhausted:
            piece_texts = list(islice(documents, piece_documents))
            if not piece_texts:
                break
            wanted = n_tokens - written
            writer = ShardWriter(directory, tokens_per_shard, dtype, first_number=len(shards), d_in=d_in,
                                 piece=len(pieces))
            taken = {"tokens": 0, "cut": False}

            def rows() -> Iterator[Tensor]:
                for batch in source.batches(source.pack(piece_texts), datamodule.hparams.contexts_per_forward):
                    kept = batch.kept[: wanted - taken["tokens"]].cpu()
                    taken["tokens"] += kept.shape[0]
                    progress.update(kept.shape[0])
                    yield kept
                    if taken["tokens"] >= wanted:
                        taken["cut"] = True  # the rest of the piece's documents stay unused
                        return

            try:
                if not shards and val_tokens:
                    writer.write(held_out_activations(datamodule, val_tokens), "val")
                writer.write(rows(), "train")
            except BaseException:
                writer.discard()
                raise
            exhausted = len(piece_texts) < piece_documents
            pieces.append({"first_document": len(pieces) * piece_documents, "documents": len(piece_texts),
                           "tokens": taken["tokens"], "complete": not taken["cut"]})
            shards += writer.shards
            written += taken["tokens"]
            write_shard_index(directory, d_in, dtype, shards, metadata, pieces=pieces, text_identity=recorded,
                              **layout)
    finally:
        progress.close()
    if not shards:
        raise TextSourceError(f"the text source {datamodule.hparams.text!r} has no training documents past the "
                         f"{len(pieces) * piece_documents:,} already cached")
    if written < n_tokens:
        print(f"note: the training split of {datamodule.hparams.text!r} ran out: the cache holds all of it, "
              f"{written:,} activations (asked for {n_tokens:,})", file=sys.stderr)
    return ShardIndex.load(directory)


__all__ = ["PIECE_DOCUMENTS", "cache_metadata", "held_out_activations", "pieces_to_resume", "write_activation_cache"]
