"""Pretrained SAEs by name: SAELens releases (``gpt2-small-res-jb-feature-splitting/blocks.8.hook_resid_pre_768``),
and any Hugging Face repository folder holding SAE files canon-pl reads (sparsify's
``EleutherAI/sae-llama-3-8b-32x/layers.10``, Gemma Scope's ``google/gemma-scope-2b-pt-res/layer_20/width_16k/...``).

Release names come from SAELens's own registry, ``pretrained_saes.yaml`` in the ``sae_lens`` package (read as a
file, never imported: ``pip install 'canon-pl[releases]'``, or ``pip install --no-deps sae-lens`` for the registry
alone). Files are fetched with ``huggingface_hub`` into its cache (``HF_HUB_CACHE`` / ``HF_HOME``), which is read
first; ``HF_HUB_OFFLINE=1``, or a hub that does not answer within seconds, reads only the cache. The files are then
read by canon-pl's own loaders (:func:`canon_pl.io.load_sae`): nothing is unpickled.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from canon_pl.io.validate import CheckpointError

REGISTRY_PACKAGE, REGISTRY_FILE = "sae_lens", "pretrained_saes.yaml"
READ_CONVERSIONS = {None: "saelens", "gemma_2": "gemma_scope", "dictionary_learning_1": "dictionary_learning"}
"""The registry's ``conversion_func`` of a release -> the canon-pl loader that reads its files as they are."""


LOCAL_SUFFIXES = (".ckpt", ".safetensors", ".json", ".npz", ".pt")
"""Names ending so are files on this machine, never looked up as a release."""


class ReleaseError(CheckpointError):
    """A release, SAE id, repository or revision that cannot be found or fetched."""


@dataclass(frozen=True)
class ReleaseSAE:
    """One SAE of a release: where its files are (``repo_id``, ``path`` inside it, ``revision``), the loader that
    reads them (``format``), and what the registry says of it (``model``: the TransformerLens model name, ``extra``:
    its ``config_overrides``, ``l0``, ``variance_explained``, ``neuronpedia``)."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    format: str | None
    revision: str | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    hint: str = ""
    """For a repository name that is not a release: the near release names, said when it cannot be fetched."""

    @property
    def input_norm(self) -> str | None:
        """``center`` when the release's SAEs read a TransformerLens model loaded with ``center_writing_weights``
        (its residual stream has mean 0 over d_model at every position: the Hugging Face model's minus its mean);
        ``None`` otherwise."""
        loaded_with = (self.extra.get("config_overrides") or {}).get("model_from_pretrained_kwargs") or {}
        return "center" if loaded_with.get("center_writing_weights") else None

    @property
    def described(self) -> str:
        """``release/sae_id: repo/path`` for a registry release, ``repo/path`` for a repository folder."""
        where = self.repo_id + (f"/{self.path}" if self.path else "")
        return f"{self.release}/{self.sae_id}: {where}" if self.release != where else where


def registry_path() -> Path:
    """``pretrained_saes.yaml`` of the installed ``sae_lens`` (located without importing it)."""
    spec = importlib.util.find_spec(REGISTRY_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / REGISTRY_FILE).is_file():
            return Path(location) / REGISTRY_FILE
    raise ReleaseError(f"release names are read from SAELens's registry ({REGISTRY_PACKAGE}/{REGISTRY_FILE}), which "
                       f"is not installed: pip install 'canon-pl[releases]' (or pip install --no-deps sae-lens), or "
                       f"pass the SAE's local folder")


@lru_cache(maxsize=4)
def _read_registry(path: str) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as handle:
        registry = yaml.load(handle, Loader=loader)
    if not isinstance(registry, dict):
        raise ReleaseError(f"{path} is not SAELens's release registry (expected a mapping of release names)")
    return registry


def releases() -> dict[str, Any]:
    """The registry: ``{release: {repo_id, model, saes: [{id, path, ...}], ...}}``."""
    return _read_registry(str(registry_path()))


def release_ids(release: str) -> list[str]:
    """The SAE ids of ``release`` in the registry's order (a :class:`ReleaseError` naming near names if unknown)."""
    return [str(entry["id"]) for entry in _release(release)["saes"]]


def _release(release: str) -> dict[str, Any]:
    registry = releases()
    if release not in registry:
        near = difflib.get_close_matches(release, list(registry), n=3, cutoff=0.6)
        raise ReleaseError(f"no SAELens release {release!r} in {registry_path()}"
                           + (f"; did you mean {', '.join(near)}?" if near else "")
                           + " (a newer sae-lens may know it; or pass the SAE's local folder)")
    return registry[release]


def resolve_release(release: str, sae_id: str, revision: str | None = None) -> ReleaseSAE:
    """Where SAE ``sae_id`` of SAELens release ``release`` lives, from the registry alone (no network)."""
    entry = _release(release)
    found = next((s for s in entry["saes"] if str(s["id"]) == sae_id), None)
    if found is None:
        ids = release_ids(release)
        near = difflib.get_close_matches(sae_id, ids, n=3, cutoff=0.5)
        raise ReleaseError(f"release {release!r} has no SAE {sae_id!r}; its ids are {ids[:8]}"
                           + (" ..." if len(ids) > 8 else "") + (f" (closest: {', '.join(near)})" if near else ""))
    conversion = entry.get("conversion_func")
    extra = {key: found[key] for key in ("l0", "variance_explained", "neuronpedia") if key in found}
    if entry.get("config_overrides"):
        extra["config_overrides"] = entry["config_overrides"]
    return ReleaseSAE(release, sae_id, str(entry["repo_id"]), str(found["path"]), READ_CONVERSIONS.get(conversion),
                      revision, entry.get("model"), extra | {"conversion_func": conversion})


def parse_name(name: str, revision: str | None = None) -> ReleaseSAE | None:
    """``release/sae_id`` (a registry release) or ``owner/repo/path`` (a hub repository folder) as a
    :class:`ReleaseSAE`; ``None`` when ``name`` is neither (a local path that does not exist, say)."""
    if name.startswith(("/", ".", "~")) or Path(name.split("/")[0]).exists() or name.endswith(LOCAL_SUFFIXES):
        return None  # a local path (absolute, relative to a folder that is here, or a file name)
    parts = name.split("/")
    try:
        known = parts[0] in releases()
    except ReleaseError:
        known = False
    if known and len(parts) >= 2:
        return resolve_release(parts[0], "/".join(parts[1:]), revision)
    if known:
        raise ReleaseError(f"{name!r} is a release of {len(release_ids(parts[0]))} SAEs: name one as "
                           f"{parts[0]}/<id> (ids: {release_ids(parts[0])[:6]} ...), or assemble them with canon-pl "
                           f"family --from_release {parts[0]}")
    if len(parts) >= 2 and all(parts[:2]):
        try:
            near = difflib.get_close_matches(parts[0], list(releases()), n=2, cutoff=0.8)
        except ReleaseError:
            near = []
        hint = f"; if a SAELens release was meant: {' or '.join(near)}" if near else ""
        return ReleaseSAE(name, "/".join(parts[2:]), f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), None, revision,
                          hint=hint)
    return None


def _offline_reason() -> str | None:
    from canon_pl.lm.loading import hub_unavailable_reason

    return hub_unavailable_reason()


def fetch(sae: ReleaseSAE) -> Path:
    """The local folder of ``sae``'s files: from the Hugging Face cache, downloaded into it when the hub can be
    reached. Errors name the release, the repository and what would point at a local copy."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline_reason()
    cache = os.environ.get("HF_HUB_CACHE") or None  # read now: huggingface_hub reads it once, at import
    at = f" at revision {sae.revision}" if sae.revision else ""
    try:
        snapshot = snapshot_download(sae.repo_id, revision=sae.revision, cache_dir=cache,
                                     allow_patterns=[f"{sae.path}/*"] if sae.path else None,
                                     local_files_only=offline is not None)
    except (LocalEntryNotFoundError, FileNotFoundError) as err:
        raise ReleaseError(
            f"{sae.described}{at} is not in the Hugging Face cache ({cache or 'the default HF_HUB_CACHE'}) and "
            f"{offline or 'could not be downloaded'}; copy the repository there (HF_HUB_CACHE=<cache folder> points "
            f"canon-pl at one) or pass the SAE's local folder{sae.hint}") from err
    except RevisionNotFoundError as err:
        raise ReleaseError(f"{sae.described}: {sae.repo_id} has no revision {sae.revision!r}") from err
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise ReleaseError(f"{sae.described}: no repository {sae.repo_id!r} on the hub (or it is private)"
                           f"{sae.hint}") from err
    folder = Path(snapshot) / sae.path
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ReleaseError(f"{sae.described}{at} holds no files (in {snapshot}); check the SAE id or the revision")
    return folder


__all__ = ["ReleaseError", "ReleaseSAE", "fetch", "parse_name", "registry_path", "release_ids", "releases",
           "resolve_release"]
