"""Latent-statistics files: ``<run>/stats/stats.json`` (index), ``contexts.safetensors`` (the token contexts) and one
``<member>.safetensors`` per SAE. One latent is read by slicing the safetensors file, never loading it whole."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from canon_pl.errors import CanonError
from canon_pl.io.atomic import atomic_paths, previous_path, sha256_file
from canon_pl.io.document import DocumentKind
from canon_pl.io.validate import STRUCTURAL_ERRORS, consistent_read_waits, expect, read_json, regular_file
from canon_pl.meta import MetaDecomposition
from canon_pl.stats.collect import HIST_EDGES, LatentStatsCollector

FORMAT_NAME = "canon_pl.latent_stats"
FORMAT_VERSION = 1
INDEX_FILE = "stats.json"
CONTEXTS_FILE = "contexts.safetensors"
TOKENS_FILE = "tokens.json"


class StatsError(CanonError, ValueError):
    """Statistics that cannot be computed or read as asked (wrong model or hook point, corrupt or foreign files)."""


STATS_INDEX = DocumentKind(FORMAT_NAME, FORMAT_VERSION, "statistics index", StatsError)
"""A statistics folder's ``stats.json``."""
REBUILD = "rebuild the set with `canon-pl stats --run <its run folder>`"
"""What every error about a damaged, missing or foreign file of a statistics set tells the user to do."""


def _write_set(directory: Path, files: dict[str, Any]) -> Path:
    """Write ``{file name: tensors (a .safetensors) or a JSON document}`` into ``directory``, the index
    (:data:`INDEX_FILE`, the last entry) recording every other file's SHA-256 under ``sha256``: all to temporary files
    first, then renamed into place in order, the index last. A failure leaves the previous set as it was; after a kill
    between two renames :meth:`LatentStatistics.open` reads the previous set whole. Returns the index."""
    names = list(files)
    assert names[-1] == INDEX_FILE, "the index is written last"
    with atomic_paths(*(directory / name for name in names)) as temps:
        digests = {}
        for name, tmp in zip(names[:-1], temps):
            if name.endswith(".safetensors"):
                save_file({k: v.detach().cpu().contiguous() for k, v in files[name].items()}, str(tmp),
                          metadata={"format": FORMAT_NAME})
            else:
                tmp.write_text(json.dumps(files[name], indent=2, sort_keys=True) + "\n")
            digests[name] = sha256_file(tmp)
        temps[-1].write_text(json.dumps({**files[INDEX_FILE], "sha256": digests}, indent=2, sort_keys=True) + "\n")
    return directory / INDEX_FILE


def _matches(path: Path, digest: str) -> bool:
    """Whether ``path`` is a regular file with SHA-256 ``digest`` (one a writer removes meanwhile does not)."""
    try:
        return sha256_file(regular_file(path, StatsError, REBUILD)) == digest
    except (OSError, StatsError):
        return False


def _files_of_set(directory: Path, index: dict[str, Any]) -> tuple[dict[str, Path], str | None]:
    """``({file name: the file to read}, None)`` when every file of the set matches the SHA-256 ``index`` records,
    the previous copy a killed writer left (:func:`canon_pl.io.atomic.previous_path`) standing in for a file that
    does not; else ``({}, the first file matching neither)``. Files of an index that records no checksums (written
    before they were) are read as they are."""
    files = {}
    for name, digest in (index.get("sha256") or {}).items():
        path = directory / name
        if not path.exists():
            return {}, name
        regular_file(path, StatsError, REBUILD)  # a FIFO or a link out of a confined folder is said as such
        for candidate in (path, previous_path(path)):
            if _matches(candidate, digest):
                files[name] = candidate
                break
        else:
            return {}, name
    return files, None


def write_statistics(directory: str | os.PathLike, collectors: dict[str, LatentStatsCollector], contexts: Tensor,
                     unembedded: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]], meta: dict[str, Any],
                     token_strings: dict[int, str] | None = None,
                     cofiring: dict[tuple[str, str], tuple[str, Tensor, Tensor]] | None = None) -> Path:
    """Write every member's arrays, the contexts, the text of every token id they mention (``tokens.json``, so a
    viewer needs no tokenizer), then the index (last, so a reader never sees a partial set). ``cofiring``:
    ``{(member, kind): (other SAE, partner [d_sae], jaccard [d_sae])}``, each member's best co-firing partners in
    another SAE (``kind`` ``smaller``: the next smaller width; ``seed``: its width's seed control)."""
    files: dict[str, Any] = {CONTEXTS_FILE: {"tokens": contexts.to(torch.int32)},
                             TOKENS_FILE: {str(k): v for k, v in (token_strings or {}).items()}}
    members = {}
    for name, c in collectors.items():
        promoted, promoted_v, suppressed, suppressed_v = unembedded[name]
        files[f"{name}.safetensors"] = {
            "fire_count": c.fire_count, "histogram": c.histogram.to(torch.int32),
            "top_values": c.top.scores.clamp_min(0.0), "top_ids": c.top.ids, "top_windows": c.top.payload,
            "sample_values": c.sample.payload[..., 0], "sample_ids": c.sample.ids,
            "promoted_tokens": promoted, "promoted_logits": promoted_v,
            "suppressed_tokens": suppressed, "suppressed_logits": suppressed_v,
        }
        members[name] = {"file": f"{name}.safetensors", "d_sae": c.sae.d_sae, "n_tokens": c.n_tokens}
        for (member, kind), (other, partner, jaccard) in (cofiring or {}).items():
            if member == name:
                files[f"{name}.safetensors"].update({f"cofiring_{kind}_partner": partner.to(torch.int32),
                                                     f"cofiring_{kind}_jaccard": jaccard.float()})
                members[name].setdefault("cofiring", {})[kind] = other
    files[INDEX_FILE] = STATS_INDEX.stamp({"members": members, "window": next(iter(collectors.values())).window,
                                           "histogram_log10_edges": HIST_EDGES.tolist(), **meta})
    return _write_set(Path(directory), files)


def write_meta_statistics(directory: str | os.PathLike, decomposition: MetaDecomposition,
                          unembedded: tuple[Tensor, Tensor, Tensor, Tensor], meta: dict[str, Any],
                          n_members: int = 20, token_strings: dict[int, str] | None = None) -> Path:
    """A meta-SAE's statistics as member ``meta``: for each meta-latent its ``n_members`` base latents with the
    largest activations (``member_latents`` / ``member_values``, -1 / 0 padded), how many use it, and its promoted and
    suppressed tokens (their text in ``tokens.json``)."""
    n = decomposition.n_meta
    members = torch.full((n, n_members), -1, dtype=torch.long)
    values = torch.zeros(n, n_members)
    for m in range(n):
        users = decomposition.users_of(m)[:n_members]
        if users:
            members[m, :len(users)] = torch.tensor([u for u, _ in users])
            values[m, :len(users)] = torch.tensor([v for _, v in users])
    promoted, promoted_v, suppressed, suppressed_v = unembedded
    return _write_set(Path(directory), {
        TOKENS_FILE: {str(k): v for k, v in (token_strings or {}).items()},
        "meta.safetensors": {"member_latents": members, "member_values": values,
                             "fire_count": torch.bincount(decomposition.meta, minlength=n),
                             "promoted_tokens": promoted, "promoted_logits": promoted_v,
                             "suppressed_tokens": suppressed, "suppressed_logits": suppressed_v},
        INDEX_FILE: STATS_INDEX.stamp({
            "kind": "meta_sae", "members": {"meta": {"file": "meta.safetensors", "d_sae": n,
                                                     "n_tokens": decomposition.n_base}}, **meta}),
    })


@dataclass
class LatentStatistics:
    """Reads a stats folder lazily: ``latent(member, j)`` touches only row ``j`` of each array."""

    directory: Path
    index: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    """The checked file to read for each file name of the set (a killed writer's previous copy may stand in)."""
    _contexts: Tensor | None = field(default=None, repr=False)
    _token_strings: dict[int, str] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, directory: str | os.PathLike, verify: bool = True, attempts: int | None = None) -> LatentStatistics:
        """Read and check the index and (``verify``) every file of the set against the checksums it records: a
        folder that mixes two ``canon-pl stats`` runs (one killed between its renames) is refused, never read.
        ``verify=False`` reads the index alone (a listing that shows what a folder holds, not its arrays)."""
        directory = Path(directory)
        for _ in consistent_read_waits(attempts):  # a writer between two renames finishes
            index = cls._read_index(directory)
            files, mismatched = _files_of_set(directory, index) if verify else ({}, None)
            if mismatched is None:
                return cls(directory, index, files)
        raise StatsError(f"{directory / mismatched} does not match the checksum its index {INDEX_FILE} records: the "
                         f"folder mixes files of two canon-pl stats runs (one was stopped while writing) or a file "
                         f"was damaged; {REBUILD}")

    @staticmethod
    def _read_index(directory: Path) -> dict[str, Any]:
        path = directory / INDEX_FILE
        index = STATS_INDEX.read(path, " (run canon-pl stats)")
        members = index.get("members")
        expect(isinstance(members, dict) and all(
            isinstance(m, dict) and isinstance(m.get("file"), str) and m["file"] and "/" not in m["file"]
            and all(isinstance(m.get(k), int) and m[k] >= 0 for k in ("d_sae", "n_tokens"))
            for m in members.values()), StatsError,
            f"{path} is malformed: \"members\" must map each SAE to its file, d_sae and n_tokens; {REBUILD}")
        expect(all(isinstance(m.get("cofiring", {}), dict) and all(
            kind in ("smaller", "seed") and isinstance(other, str) for kind, other in m.get("cofiring", {}).items())
            for m in members.values()), StatsError,
            f"{path} is malformed: a member's \"cofiring\" must map smaller / seed to another member's name; {REBUILD}")
        expect(isinstance(index.get("window", 0), int) and index.get("window", 0) >= 0, StatsError,
               f"{path} is malformed: \"window\" is not a non-negative integer; {REBUILD}")
        digests = index.get("sha256", {})
        expect(isinstance(digests, dict) and all(isinstance(k, str) and k and "/" not in k and isinstance(v, str)
                                                 for k, v in digests.items()), StatsError,
               f"{path} is malformed: \"sha256\" must map each file of the folder to its checksum; {REBUILD}")
        return index

    @property
    def members(self) -> list[str]:
        return list(self.index["members"])

    def _slice(self, member: str, key: str, j: int | None = None) -> Tensor:
        if member not in self.index["members"]:
            raise StatsError(f"no statistics for {member!r}; the folder has {self.members}")
        path = regular_file(self._file(self.index["members"][member]["file"]), StatsError, REBUILD)
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_slice(key)[j] if j is not None else f.get_tensor(key)
        except (OSError, SafetensorError, *STRUCTURAL_ERRORS) as err:
            raise StatsError(f"{path} is missing or corrupt ({err}); {REBUILD}") from err

    def _file(self, name: str) -> Path:
        return self.files.get(name, self.directory / name)

    def array(self, member: str, key: str) -> Tensor:
        """One whole array of a member, e.g. ``promoted_tokens`` ``[d_sae, n]`` (for searches across latents)."""
        return self._slice(member, key)

    def frequencies(self, member: str) -> Tensor:
        """``[d_sae]`` fraction of counted tokens on which each latent fires."""
        return self._slice(member, "fire_count").float() / max(self.index["members"][member]["n_tokens"], 1)

    def contexts(self) -> Tensor:
        """``[n_ctx, seq]`` the token contexts; example ids are ``context * seq + position`` (read once)."""
        if self._contexts is None:
            self._contexts = self._read_contexts()
        return self._contexts

    def _read_contexts(self) -> Tensor:
        path = regular_file(self._file(CONTEXTS_FILE), StatsError, REBUILD)
        try:
            with safe_open(str(path), framework="pt") as f:
                tokens = f.get_tensor("tokens")
        except (OSError, SafetensorError, *STRUCTURAL_ERRORS) as err:
            raise StatsError(f"{path} is missing or corrupt ({err}); {REBUILD}") from err
        expect(tokens.dim() == 2 and not tokens.dtype.is_floating_point, StatsError,
               f"{path} is malformed: tokens {tuple(tokens.shape)} {tokens.dtype}, expected [contexts, seq] integers")
        return tokens

    def token_strings(self) -> dict[int, str]:
        """Text of the token ids in the contexts and token lists (empty when the files were written without it;
        read once)."""
        if self._token_strings is None:
            self._token_strings = self._read_token_strings()
        return self._token_strings

    def _read_token_strings(self) -> dict[int, str]:
        path = self._file(TOKENS_FILE)
        if not path.exists():
            return {}  # written before token strings were stored: ids are shown instead
        raw = read_json(path, StatsError, f"token-strings file ({REBUILD})")
        expect(isinstance(raw, dict) and all(isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(v, str)
                                             for k, v in raw.items()), StatsError,
               f"{path} is malformed: expected {{token id: text}}; {REBUILD}")
        return {int(k): v for k, v in raw.items()}

    def cofiring(self, member: str, j: int) -> list[dict[str, Any]]:
        """Latent ``j``'s best co-firing partners: ``{kind, other, latent, jaccard}`` per partner SAE the statistics
        recorded (``smaller``: the next smaller width; ``seed``: its width's seed control); empty when none was."""
        found = []
        for kind, other in sorted((self.index["members"][member].get("cofiring") or {}).items()):
            partner = int(self._slice(member, f"cofiring_{kind}_partner", j))
            jaccard = float(self._slice(member, f"cofiring_{kind}_jaccard", j))
            found.append({"kind": kind, "other": other, "latent": None if partner < 0 else partner,
                          "jaccard": jaccard})
        return found

    def latent(self, member: str, j: int) -> dict[str, Tensor]:
        """Everything about latent ``j``: top values / ids / windows, sample values / ids, histogram, promoted and
        suppressed tokens with their logits (for a meta-SAE: its member latents and values instead of examples)."""
        if self.index.get("kind") == "meta_sae":
            keys = ("member_latents", "member_values", "promoted_tokens", "promoted_logits", "suppressed_tokens",
                    "suppressed_logits", "fire_count")
        else:
            keys = ("top_values", "top_ids", "top_windows", "sample_values", "sample_ids", "histogram",
                    "promoted_tokens", "promoted_logits", "suppressed_tokens", "suppressed_logits", "fire_count")
        return {key: self._slice(member, key, j) for key in keys}
