"""Activation caches on disk: safetensors shards plus an ``index.json`` (no Lightning imports).

The index records ``d_in``, dtype, per-shard token counts and SHA-256 checksums, and free-form metadata (model,
hook point, text source). Reading shuffles across shards: each epoch visits the shards in a seeded order,
``shards_in_memory`` at a time, and shuffles the tokens of that group together.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from canon_pl.errors import CanonError
from canon_pl.io.atomic import atomic_path, atomic_write_json, sha256_file
from canon_pl.io.document import DocumentKind
from canon_pl.io.validate import STRUCTURAL_ERRORS, malformed_as, regular_file

INDEX_FILE = "index.json"
TENSOR_KEY = "activations"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ShardError(CanonError, ValueError):
    """An activation cache that is missing, empty, corrupt or inconsistent with its index."""


CACHE_INDEX = DocumentKind("canon_pl.activation_cache", 1, "activation-cache index", ShardError,
                           "point at a folder written by `canon-pl cache`", unstamped_is_v0=True)
"""``index.json``: version 1 stamps format and version; an index without them (older canon-pl, or one written by
hand in the same layout) is read as version 0."""


@dataclass
class ShardIndex:
    """Contents of ``index.json``: shards ``[{file, n_tokens, sha256}]`` of ``[n_tokens, d_in]`` activations."""

    directory: Path
    d_in: int
    dtype: str
    shards: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)
    text_identity: dict[str, Any] | None = None
    """The text the activations were captured from (:func:`canon_pl.lm.text_identity.text_identity`); ``None`` for
    a cache written before it was recorded or made from tensors."""

    @property
    def n_tokens(self) -> int:
        return sum(int(s["n_tokens"]) for s in self.shards)

    def split_ids(self, split: str) -> list[int]:
        """Shard numbers of ``split`` (``train`` or ``val``). A cache written by ``canon-pl cache`` marks its
        held-out shards (``"split": "val"``, activations of held-out documents); an older or hand-made cache without
        marks holds out its last shard when it has several, and has no held-out part otherwise."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if any("split" in entry for entry in self.shards):
            return [i for i, entry in enumerate(self.shards) if entry.get("split", "train") == split]
        n = len(self.shards)
        if split == "val":
            return [n - 1] if n > 1 else []
        return list(range(n - 1)) if n > 1 else list(range(n))

    def split_tokens(self, split: str) -> int:
        return sum(int(self.shards[i]["n_tokens"]) for i in self.split_ids(split))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ShardIndex:
        directory = Path(directory)
        path = directory / INDEX_FILE
        if not path.is_file():
            raise ShardError(f"no activation cache at {directory}: {INDEX_FILE} not found (write one with write_activation_shards)")
        raw = CACHE_INDEX.read(path)
        with malformed_as(ShardError, path, "rebuild the cache"):
            index = cls(directory, int(raw["d_in"]), str(raw["dtype"]), list(raw["shards"]), dict(raw.get("metadata", {})))
            identity = raw.get("text_identity")
            index.text_identity = dict(identity) if identity is not None else None
        if index.d_in <= 0 or index.dtype not in DTYPES or not all(
                isinstance(s, dict) and isinstance(s.get("file"), str) and Path(s["file"]).name == s["file"]
                and s.get("split", "train") in ("train", "val")
                and isinstance(s.get("n_tokens"), int) and s["n_tokens"] >= 0
                and isinstance(s.get("sha256", ""), (str, type(None))) for s in index.shards):
            raise ShardError(f"{path} is malformed: d_in, dtype or a shard entry ({{file, n_tokens, sha256}}) is "
                             f"invalid; rebuild the cache")
        if index.n_tokens == 0:
            raise ShardError(f"activation cache {directory} is empty (0 tokens): rebuild it from a non-empty text source")
        return index

    def read_shard(self, i: int, verify: bool = True) -> Tensor:
        """Shard ``i`` as ``[n_tokens, d_in]`` float32, checked against the index."""
        entry = self.shards[i]
        path = self.directory / entry["file"]
        if not path.exists():
            raise ShardError(f"shard {path} listed in {INDEX_FILE} is missing")
        regular_file(path, ShardError, "rebuild the cache")
        if verify and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            raise ShardError(f"shard {path} does not match its checksum in {INDEX_FILE}: it is corrupt; rebuild the cache")
        try:
            acts = load_file(str(path))[TENSOR_KEY]
        except (SafetensorError, OSError, *STRUCTURAL_ERRORS) as err:
            raise ShardError(f"shard {path} is unreadable ({err}); rebuild the cache") from err
        if acts.shape != (int(entry["n_tokens"]), self.d_in):
            raise ShardError(f"shard {path} has shape {tuple(acts.shape)}, index says ({entry['n_tokens']}, {self.d_in})")
        return acts.float()


class ShardWriter:
    """Writes ``[batch, d_in]`` tensors into ``directory`` as safetensors shards of ``tokens_per_shard`` rows, each
    named by this writer (``shard_<random>_<n>.safetensors``), so shards already in the folder stay whole; the
    entries of what it wrote accumulate in :attr:`shards` until :func:`write_shard_index` lists them."""

    def __init__(self, directory: str | os.PathLike, tokens_per_shard: int, dtype: str,
                 first_number: int = 0, d_in: int | None = None, **marks: Any) -> None:
        if dtype not in DTYPES:
            raise ShardError(f"dtype {dtype!r} not supported; choose one of {sorted(DTYPES)}")
        self.directory, self.tokens_per_shard, self.dtype = Path(directory), tokens_per_shard, dtype
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = f"shard_{secrets.token_hex(4)}_"
        self.number, self.d_in, self.marks = first_number, d_in, marks
        self.shards: list[dict[str, Any]] = []

    def _flush(self, rows: Tensor, split: str | None) -> None:
        name = f"{self.prefix}{self.number:05d}.safetensors"
        self.number += 1
        with atomic_path(self.directory / name) as tmp:
            save_file({TENSOR_KEY: rows.to(DTYPES[self.dtype]).contiguous().cpu()}, str(tmp))
            digest = sha256_file(tmp)
        self.shards.append({"file": name, "n_tokens": int(rows.shape[0]), "sha256": digest,
                            **({"split": split} if split else {}), **self.marks})

    def write(self, stream: Iterable[Tensor], split: str | None) -> None:
        """All of ``stream`` into shards marked ``split`` (none for ``None``); the last shard may be shorter."""
        pending: list[Tensor] = []
        n_pending = 0
        for batch in stream:
            if batch.dim() != 2:
                raise ShardError(f"activation batches must be [batch, d_in], got shape {tuple(batch.shape)}")
            if self.d_in is None:
                self.d_in = int(batch.shape[1])
            elif batch.shape[1] != self.d_in:
                raise ShardError(f"activation width changed from {self.d_in} to {batch.shape[1]} while writing the cache")
            pending.append(batch.detach())
            n_pending += batch.shape[0]
            while n_pending >= self.tokens_per_shard:
                rows = torch.cat(pending)
                self._flush(rows[:self.tokens_per_shard], split)
                pending, n_pending = [rows[self.tokens_per_shard:]], rows.shape[0] - self.tokens_per_shard
        if n_pending:
            self._flush(torch.cat(pending), split)

    def discard(self) -> None:
        """Remove every shard this writer wrote (a failed or interrupted write leaves the folder as it was)."""
        for entry in self.shards:
            (self.directory / entry["file"]).unlink(missing_ok=True)
        self.shards = []


def write_shard_index(directory: str | os.PathLike, d_in: int, dtype: str, shards: list[dict[str, Any]],
                      metadata: dict[str, Any] | None = None, **extra: Any) -> ShardIndex:
    """Write ``index.json`` listing ``shards`` (atomically: a reader sees the old index or this one), then remove the
    shards of the folder it does not list (an older cache's, or an interrupted write's). ``extra`` keys are stored
    beside the index's own (a cache written in pieces keeps its pieces there)."""
    directory = Path(directory)
    index = ShardIndex(directory, d_in, dtype, shards, dict(metadata or {}))
    atomic_write_json(directory / INDEX_FILE, CACHE_INDEX.stamp({
        "d_in": d_in, "dtype": dtype, "shards": shards, "metadata": index.metadata, "n_tokens": index.n_tokens,
        **extra}))
    kept = {entry["file"] for entry in shards}
    for old in directory.glob("shard_*.safetensors"):
        if old.name not in kept:
            old.unlink()
    return index


def write_activation_shards(
    batches: Iterable[Tensor],
    directory: str | os.PathLike,
    tokens_per_shard: int = 65_536,
    dtype: str = "float16",
    metadata: dict[str, Any] | None = None,
    val_batches: Iterable[Tensor] | None = None,
) -> ShardIndex:
    """Write ``[batch, d_in]`` tensors as shards of ``tokens_per_shard`` rows; the index is written last.

    ``val_batches`` (held-out activations) go into shards of their own marked ``"split": "val"`` after the training
    shards; with them every shard is marked, so the index says which tokens are held out. An older cache in the same
    folder stays whole (its index still points at its own shards) until the new index replaces it.
    """
    writer = ShardWriter(directory, tokens_per_shard, dtype)
    try:
        writer.write(batches, "train" if val_batches is not None else None)
        if val_batches is not None:
            writer.write(val_batches, "val")
        if writer.d_in is None or not writer.shards:
            raise ShardError("no activations to write: the source yielded nothing")
        return write_shard_index(directory, writer.d_in, dtype, writer.shards, metadata)
    except BaseException:
        writer.discard()
        raise


def iterate_shard_batches(
    index: ShardIndex,
    shard_ids: list[int],
    batch_size: int,
    seed: int = 0,
    shards_in_memory: int = 4,
    start_batch: int = 0,
    epochs: int | None = None,
) -> Iterator[Tensor]:
    """Shuffled ``[batch_size, d_in]`` batches over ``shard_ids``, forever (or ``epochs`` times).

    Batch number ``b`` is a pure function of (index, seed, b): ``start_batch`` skips ahead without reading the
    skipped groups. Each group of shards yields ``n_tokens // batch_size`` batches; its remainder is dropped.
    """
    if not shard_ids:
        raise ShardError("no shards to read")
    batches_seen = 0
    epoch = 0
    while epochs is None or epoch < epochs:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = [shard_ids[i] for i in torch.randperm(len(shard_ids), generator=g).tolist()]
        for start in range(0, len(order), shards_in_memory):
            group = order[start:start + shards_in_memory]
            n_batches = sum(int(index.shards[i]["n_tokens"]) for i in group) // batch_size
            if batches_seen + n_batches <= start_batch:
                batches_seen += n_batches
                continue
            pool = torch.cat([index.read_shard(i) for i in group])
            perm = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + start))
            for b in range(n_batches):
                if batches_seen >= start_batch:
                    yield pool[perm[b * batch_size:(b + 1) * batch_size]]
                batches_seen += 1
        epoch += 1
        if batches_seen == 0:
            raise ShardError(f"the cache holds fewer tokens than one batch of {batch_size}; lower batch_size")
