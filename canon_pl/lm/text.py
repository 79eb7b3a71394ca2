"""Text for activation capture: named offline sources, local files or hub datasets, packed into contexts.

Named sources (no network):
- ``python-docs``: the reST sources of the Python 3.11 documentation from Debian's ``python3.11-doc`` (11 MB of
  English prose, about 2.5M SmolLM2 tokens; ``apt-get install python3.11-doc``);
- ``linux-docs``: the reST sources of the Linux 6.1 kernel documentation from Debian's ``linux-doc-6.1``, without
  its translations (21 MB of English prose, about 5M tokens; ``apt-get install linux-doc-6.1``);
- ``docs``: both of them, one corpus (what a cache of several million unique tokens is captured from);
- ``pydoc-topics``: the documentation topics that ship inside every CPython (``pydoc_data``), about 0.5 MB.
Anything else is a local file, folder or glob (read with ``datasets``' ``text`` builder, one document per file), or
a hub dataset name for users with a network.

Local files must be UTF-8 text: a file that is binary (a NUL byte in its first 8 KiB) or not UTF-8 stops the read
with a :class:`TextSourceError` naming it, so nothing undecodable is ever tokenised; leave it out of the glob or
convert it. A name that is no local path (``wikitext``, or ``owner/name`` such as ``Skylion007/openwebtext``) is a
hub dataset: read from the hub when it can be reached, else from the hub cache on this machine (a snapshot
downloaded earlier), else :func:`check_text_source` says so at once, before any model is loaded.

Documents: a local file is cut into documents of about ``document_chars`` characters at paragraph breaks (one
Python-docs page is ~24 kB and would otherwise be one document, so a held-out set of a few hundred documents needs
pieces), hub rows are documents as they come. Every ``val_every``-th document, counted in the source's own order, is
held out, so the held-out documents are spread over the whole corpus. Each split is then read in a seeded random
order (a whole permutation for a local source, a shuffle buffer of ``SHUFFLE_BUFFER`` documents for a hub
dataset), so training does not see one documentation area after another and any prefix of the held-out split is a
sample of the whole corpus. The order is a pure function of the seed: a resumed stream skips to the same place.
"""

from __future__ import annotations

import codecs
import glob
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from canon_pl.errors import CanonError, find_cause
from canon_pl.io.validate import regular_file

@dataclass(frozen=True)
class NamedText:
    """A text that a Debian package installs: the globs of its files, path parts that leave a file out, and the
    package that brings it."""

    patterns: tuple[str, ...]
    packages: tuple[str, ...]
    excluded_parts: tuple[str, ...] = ()

    def files(self) -> list[str]:
        found = {path for pattern in self.patterns for path in glob.glob(pattern, recursive=True)}
        return sorted(path for path in found if not set(Path(path).parts) & set(self.excluded_parts))

    def __add__(self, other: NamedText) -> NamedText:
        return NamedText(self.patterns + other.patterns, self.packages + other.packages,
                         self.excluded_parts + other.excluded_parts)


PYTHON_DOCS = NamedText(("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt",), ("python3.11-doc",))
LINUX_DOCS = NamedText(("/usr/share/doc/linux-doc-6.1/html/_sources/**/*.rst.txt",), ("linux-doc-6.1",),
                       excluded_parts=("translations",))
NAMED_SOURCES: dict[str, NamedText | None] = {
    "python-docs": PYTHON_DOCS,
    "linux-docs": LINUX_DOCS,
    "docs": PYTHON_DOCS + LINUX_DOCS,
    "pydoc-topics": None,
}
"""Texts by name: files a Debian package installs (``None``: ``pydoc_data``, inside every CPython)."""


HUB_DATASET_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""``owner/name``: a hub dataset's name when no such local path exists (``data/notes.txt`` stays a missing file)."""
LOCAL_FILE_SUFFIXES = frozenset({".txt", ".md", ".rst", ".json", ".jsonl", ".csv", ".parquet", ".gz", ".zst"})

DOCUMENT_CHARS = 2000
"""Default size of the documents a local file is cut into (characters, cut at paragraph breaks)."""
SHUFFLE_BUFFER = 10_000
"""Documents held by the seeded shuffle of a hub dataset's split (a local source is permuted whole)."""


class TextSourceError(CanonError, ValueError):
    """A text source that is missing or empty."""


class ContextLengthError(CanonError, ValueError):
    """A context length the model cannot take."""


def _local_files(source: str) -> list[str] | None:
    if source in NAMED_SOURCES:
        named = NAMED_SOURCES[source]
        if named is None:
            return None
        files = named.files()
        if not files:
            raise TextSourceError(f"text source {source!r} matches no files at {', '.join(named.patterns)} (install "
                                  f"it with: apt-get install {' '.join(named.packages)})")
        return files
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        files = [str(path)]
    else:
        files = sorted(glob.glob(source, recursive=True))
    if not files and is_hub_dataset_name(source):
        return None
    if not files and (any(ch in source for ch in "*/?") or path.suffix):
        raise TextSourceError(f"text source {source!r} matches no files at {source}")
    return files or None


def is_hub_dataset_name(source: str) -> bool:
    """Whether ``source``, which names nothing on this machine, reads as a hub dataset ``owner/name``."""
    return (HUB_DATASET_NAME.fullmatch(source) is not None and Path(source).suffix.lower() not in LOCAL_FILE_SUFFIXES
            and not Path(source).exists())


def cached_hub_snapshot(source: str) -> Path | None:
    """The folder of the hub dataset ``source``'s snapshot in this machine's hub cache (``HF_HUB_CACHE``), or
    ``None`` when it has none. Never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a valid repository name
        return None


def hub_dataset_location(source: str) -> str:
    """Where the hub dataset ``source`` is read from: its name when the hub can be reached, else its cached snapshot
    folder; :class:`TextSourceError` in one line when neither (the hub client would retry for minutes)."""
    from canon_pl.lm.loading import hub_unavailable_reason

    why = hub_unavailable_reason(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if why is None:
        return source
    snapshot = cached_hub_snapshot(source)
    if snapshot is not None:
        return str(snapshot)
    what = ("a hub dataset name" if is_hub_dataset_name(source)
            else f"not a named source ({', '.join(NAMED_SOURCES)}), nor a file, folder or glob on this machine "
                 f"(nothing at {Path(source).resolve()}), so a hub dataset name")
    raise TextSourceError(
        f"text source {source!r} is {what}, but it cannot be read from the hub ({why}) and the hub cache on this "
        f"machine has no copy of it: download it where there is a network (huggingface-cli download {source} "
        f"--repo-type dataset) or give a local path")


HEAD_BYTES = 8192
"""Bytes at the start of each local file checked for NULs and UTF-8 before any file is read whole."""


def _undecodable(path: str, limit: int | None = HEAD_BYTES) -> str | None:
    """Why the first ``limit`` bytes of ``path`` (all of it for ``None``) are not UTF-8 text, or ``None``."""
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit)
    nul = data.find(b"\0")
    if nul >= 0:
        return f"a NUL byte at offset {nul}: a binary file"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=limit is None or len(data) < limit)
    except UnicodeDecodeError as err:
        return f"not UTF-8 (byte {err.start}: {data[err.start:err.start + 1]!r})"
    return None


def _refuse_undecodable(source: str, files: list[str], limit: int | None = HEAD_BYTES) -> None:
    for path in files:
        regular_file(path, TextSourceError, "leave it out of the path or glob")
        why = _undecodable(path, limit)
        if why is not None:
            raise TextSourceError(f"{path} in the text source {source!r} is not text: {why}. Leave it out of the "
                                  f"path or glob, or convert it (iconv -t utf-8)")


def check_text_source(source: str) -> None:
    """Fail at once, with one :class:`TextSourceError`, for a text source that cannot be read: a named or local
    source with no files or a file that is not UTF-8 text at its start, or a name that is not on this machine while
    the hub cannot be reached (the hub client would retry for minutes)."""
    if source == "pydoc-topics":
        return
    files = _local_files(source)
    if files is not None:
        _refuse_undecodable(source, files)
        return
    hub_dataset_location(source)


def split_paragraphs(text: str, document_chars: int) -> Iterator[str]:
    """Consecutive paragraphs of ``text`` grouped into pieces of at least ``document_chars`` characters (the last
    piece may be shorter); a paragraph is never cut."""
    piece: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        piece.append(paragraph)
        size += len(paragraph) + 2
        if size >= document_chars:
            yield "\n\n".join(piece)
            piece, size = [], 0
    if piece:
        yield "\n\n".join(piece)


def shuffled(items: Iterable[str], seed: int, buffer_size: int = SHUFFLE_BUFFER) -> Iterator[str]:
    """``items`` in a seeded random order through a shuffle buffer of ``buffer_size`` (a full permutation when the
    buffer holds them all)."""
    rng = random.Random(seed)
    buffer: list[str] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            j = rng.randrange(len(buffer))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def _stream(source: str, text_column: str, document_chars: int | None = DOCUMENT_CHARS) -> Iterator[str]:
    import datasets

    if source == "pydoc-topics":
        from pydoc_data.topics import topics

        yield from (topics[key] for key in sorted(topics))
        return
    files = _local_files(source)
    if files is not None:
        _refuse_undecodable(source, files)  # the start of every file, before any is read
        dataset = datasets.load_dataset("text", data_files=files, split="train", streaming=True, sample_by="document")
        try:
            for row in dataset:
                if document_chars:
                    yield from split_paragraphs(row["text"], document_chars)
                else:
                    yield row["text"]
        except Exception as err:  # noqa: BLE001 - datasets wraps a decoding error in its own types
            if find_cause(err, lambda e: isinstance(e, UnicodeDecodeError)) is None:
                raise
            _refuse_undecodable(source, files, limit=None)  # names the file whose later bytes are not UTF-8
            raise
        return
    else:
        location = hub_dataset_location(source)  # no hub and no cached copy: say so now, not after minutes of retries
        try:
            dataset = datasets.load_dataset(location, split="train", streaming=True)
        except Exception as err:  # noqa: BLE001 - the hub client raises many types
            raise TextSourceError(
                f"text source {source!r} is not a named source ({', '.join(NAMED_SOURCES)}), a local path, or a "
                f"reachable hub dataset: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err
    for row in dataset:
        text = row.get(text_column)
        if text is None:
            raise TextSourceError(f"text source {source!r} has no column {text_column!r}; columns: {sorted(row)}")
        yield text


def iter_documents(source: str, split: str, val_every: int = 20, text_column: str = "text",
                   shard: tuple[int, int] = (0, 1), order_seed: int | None = 0,
                   document_chars: int | None = DOCUMENT_CHARS) -> Iterator[str]:
    """Documents of ``split`` (``train`` or ``val``): every ``val_every``-th non-empty document (in the source's
    order) is ``val``; the split is then read in the random order of ``order_seed`` (``None``: the source's order).

    ``shard=(r, n)`` keeps the ``r``-th of every ``n`` documents of the split (one rank's disjoint part under DDP).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    part, n_parts = shard
    if not 0 <= part < n_parts:
        raise ValueError(f"shard must be (part, n_parts) with 0 <= part < n_parts, got {shard}")
    if val_every < 2:
        raise ValueError(f"val_every must be at least 2 (every val_every-th document is held out), got {val_every}")
    counted = {"documents": 0}

    def in_split() -> Iterator[str]:
        for text in _stream(source, text_column, document_chars):
            if not text or not text.strip():
                continue
            index = counted["documents"]
            counted["documents"] += 1
            if (index % val_every == 0) == (split == "val"):
                yield text

    local = source == "pydoc-topics" or _local_files(source) is not None
    buffer_size = 1 << 62 if local else SHUFFLE_BUFFER
    documents = in_split() if order_seed is None else shuffled(in_split(), order_seed * 2 + (split == "val"), buffer_size)
    for i, text in enumerate(documents):
        if i % n_parts == part:
            yield text
    if counted["documents"] == 0:
        raise TextSourceError(f"text source {source!r} is empty: it yielded no non-empty document")


TextCursor = tuple[int, int]
"""Where a context starts in a document stream: ``(documents, tokens)``, the number of documents wholly packed
before it and the tokens of the next document (its EOS included) packed before it."""


class ContextPacker:
    """A document stream packed into ``[context_length]`` token tensors: BOS then ``context_length - 1`` tokens of
    the concatenated stream (documents separated by EOS). :attr:`cursor` says where the next context starts, so a
    stream can be reopened there (``start=cursor``) without tokenising the documents before it."""

    def __init__(self, documents: Iterator[str], tokenizer: Any, context_length: int, bos_token_id: int | None,
                 start: TextCursor = (0, 0)) -> None:
        """``documents`` must begin at document ``start[0]`` of the stream (the earlier ones left out); the first
        ``start[1]`` tokens of that document are dropped."""
        self.body = context_length - (1 if bos_token_id is not None else 0)
        if self.body <= 0:
            raise ValueError(f"context_length={context_length} leaves no room for text")
        self.documents, self.tokenizer, self.bos_token_id = documents, tokenizer, bos_token_id
        self.cursor: TextCursor = start
        self._contexts = self._pack()

    def __iter__(self) -> ContextPacker:
        return self

    def __next__(self) -> Tensor:
        return next(self._contexts)

    def _tokens(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return ids + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])

    def _pack(self) -> Iterator[Tensor]:
        first_document, skip = self.cursor
        pending: list[int] = []
        lengths: list[int] = []  # tokens each document in ``pending`` still has there, oldest first
        for index, text in enumerate(self.documents):
            tokens = self._tokens(text)[skip if index == 0 else 0:]
            pending.extend(tokens)
            lengths.append(len(tokens))
            while len(pending) >= self.body:
                chunk, pending = pending[:self.body], pending[self.body:]
                used = self.body
                while lengths and used >= lengths[0]:  # documents this context finished
                    used -= lengths.pop(0)
                    first_document, skip = first_document + 1, 0
                if lengths:
                    lengths[0] -= used
                    skip += used
                self.cursor = (first_document, skip)
                yield torch.tensor(([self.bos_token_id] if self.bos_token_id is not None else []) + chunk,
                                   dtype=torch.long)


def pack_contexts(documents: Iterator[str], tokenizer: Any, context_length: int, bos_token_id: int | None) -> Iterator[Tensor]:
    """Pack a document stream into ``[context_length]`` token tensors (see :class:`ContextPacker`)."""
    return ContextPacker(documents, tokenizer, context_length, bos_token_id)


def document_order_seed(seed: int, shuffle_documents: bool) -> int | None:
    """The ``order_seed`` of a run's documents: its seed when it shuffles them, ``None`` (the source's order) when
    it does not."""
    return int(seed) if shuffle_documents else None


def context_stream(source: str, split: str, tokenizer: Any, context_length: int, start: int = 0,
                   val_every: int = 20, text_column: str = "text", bos_token_id: int | None = None,
                   shard: tuple[int, int] = (0, 1), order_seed: int | None = 0,
                   document_chars: int | None = DOCUMENT_CHARS, cursor: TextCursor | None = None) -> ContextPacker:
    """Contexts of ``split`` (of the documents of ``shard``) from context ``start`` on. With the ``cursor`` of
    context ``start`` (a :attr:`ContextPacker.cursor` read when the stream was there) the earlier documents are
    skipped as text; without it they are tokenised and their contexts dropped."""
    documents = iter_documents(source, split, val_every, text_column, shard, order_seed, document_chars)
    if cursor is not None:
        return ContextPacker(islice(documents, cursor[0], None), tokenizer, context_length, bos_token_id, cursor)
    packer = ContextPacker(documents, tokenizer, context_length, bos_token_id)
    for _ in islice(packer, start):  # tokenised and dropped
        pass
    return packer
