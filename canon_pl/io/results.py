"""Analysis results on disk: a JSON summary plus a safetensors file of arrays, written atomically (arrays first).

Used by the stitching and meta-SAE analyses; each names its ``format`` and its own error type.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from canon_pl.io.atomic import atomic_path, atomic_write_json
from canon_pl.io.validate import STRUCTURAL_ERRORS, read_json


def write_results(directory: str | os.PathLike, name: str, summary: dict[str, Any], arrays: dict[str, Tensor],
                  format_name: str) -> Path:
    """Write ``<name>.safetensors`` then ``<name>.json`` (the summary, pointing at the arrays); returns the JSON."""
    directory = Path(directory)
    with atomic_path(directory / f"{name}.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in arrays.items()}, str(tmp),
                  metadata={"format": format_name})
    atomic_write_json(directory / f"{name}.json", {**summary, "arrays": f"{name}.safetensors"})
    return directory / f"{name}.json"


def read_results(path: str | os.PathLike, format_name: str, what: str, error: type[Exception],
                 arrays: bool = False) -> dict[str, Any]:
    """The summary in ``path``; with ``arrays=True`` its arrays replace ``summary["arrays"]``. Anything unreadable,
    foreign or missing raises ``error`` naming the file (``what`` describes it: "stitching results file")."""
    path = Path(path)
    summary = read_json(path, error, what)
    if not isinstance(summary, dict) or summary.get("format") != format_name:
        raise error(f"{path} is not a canon-pl {what} (no \"format\": \"{format_name}\")")
    if arrays:
        name = summary.get("arrays")
        if not isinstance(name, str) or Path(name).name != name:
            raise error(f"{path} is malformed: \"arrays\" must name a file next to it; re-run the analysis")
        try:
            summary["arrays"] = load_file(str(path.parent / name))
        except (OSError, SafetensorError, *STRUCTURAL_ERRORS) as err:
            raise error(f"the arrays of {path} are missing or corrupt ({err}); re-run the analysis") from err
    return summary
