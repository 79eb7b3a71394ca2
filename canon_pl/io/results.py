"""Analysis results on disk: a JSON summary plus a safetensors file of arrays, written atomically (arrays first).

Used by the stitching and meta-SAE analyses; each is a :class:`~canon_pl.io.document.DocumentKind` (its format,
version and error type).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import Tensor

from canon_pl.io.atomic import atomic_paths, sha256_file
from canon_pl.io.document import DocumentKind
from canon_pl.io.validate import STRUCTURAL_ERRORS, read_consistent


def write_results(directory: str | os.PathLike, name: str, summary: dict[str, Any], arrays: dict[str, Tensor],
                  kind: DocumentKind) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (the summary, pointing at the arrays), renamed into place
    together once both are written; returns the JSON."""
    directory = Path(directory)
    with atomic_paths(directory / f"{name}.safetensors", directory / f"{name}.json",
                      digest_key="arrays_sha256") as (arrays_tmp, summary_tmp):
        save_file({k: v.detach().cpu().contiguous() for k, v in arrays.items()}, str(arrays_tmp),
                  metadata={"format": kind.format})
        document = kind.stamp({**summary, "arrays": f"{name}.safetensors", "arrays_sha256": sha256_file(arrays_tmp)})
        summary_tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return directory / f"{name}.json"


def read_results(path: str | os.PathLike, kind: DocumentKind, arrays: bool = False) -> dict[str, Any]:
    """The summary in ``path``; with ``arrays=True`` its arrays replace ``summary["arrays"]``. Anything unreadable,
    foreign, newer or missing raises ``kind.error`` naming the file."""
    path = Path(path)
    error = kind.error

    def read_summary() -> dict[str, Any]:
        summary = kind.read(path)
        name = summary.get("arrays")
        if not isinstance(name, str) or Path(name).name != name:
            raise error(f"{path} is malformed: \"arrays\" must name a file next to it; {kind.rebuild}")
        return summary

    if not arrays:
        return read_summary()
    summary, data = read_consistent(read_summary, lambda s: path.parent / s["arrays"], "arrays_sha256", error,
                                    fix=kind.rebuild)
    try:
        summary["arrays"] = load_safetensors_bytes(data)
    except (SafetensorError, *STRUCTURAL_ERRORS) as err:
        raise error(f"the arrays of {path} are corrupt ({err}); {kind.rebuild}") from err
    return summary
