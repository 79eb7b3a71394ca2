"""A converted copy of a bundled GGUF model, so that only the first load pays for the conversion.

transformers reads a GGUF file by parsing its metadata and vocabulary with numpy (about 25 s for SmolLM2-135M on two
CPU cores) and de-quantising it; the result cannot be ``save_pretrained`` as it stands (it is marked quantised). The
first load of a bundled model therefore writes the de-quantised weights (safetensors), config and tokenizer to
``<cache>/models/<name>-<dtype>-<key>/``, where ``key`` names the GGUF file's name, size and modification time (a
new package version gets a new folder), and later loads read that folder (about 3 s in a fresh process against
about 19 s; the same logits and token ids, tested). The folder appears whole or not at all (written aside, then
renamed); one that cannot be read is set aside and the GGUF file is read again. ``<cache>`` is ``$CANON_PL_CACHE``,
else ``$XDG_CACHE_HOME/canon-pl``, else ``~/.cache/canon-pl``; ``CANON_PL_CACHE=off`` turns the copy off.
SmolLM2-135M in float32 takes 517 MB.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

COMPLETE = "canon_pl_converted.txt"
"""Written last inside a converted folder: its presence says the copy is whole."""


def cache_root() -> Path | None:
    """Where converted models go (``None``: ``CANON_PL_CACHE=off``)."""
    given = os.environ.get("CANON_PL_CACHE", "")
    if given.lower() == "off":
        return None
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "canon-pl"


def converted_folder(name: str, gguf: Path, dtype: str) -> Path | None:
    """The folder of ``gguf``'s converted copy (whether or not it exists yet); ``None`` when copies are off."""
    root = cache_root()
    if root is None:
        return None
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return root / "models" / f"{name}-{dtype}-{key}"


def is_complete(folder: Path | None) -> bool:
    return folder is not None and (folder / COMPLETE).is_file()


def write_converted(model: Any, tokenizer: Any, folder: Path, source: str) -> None:
    """Save ``model`` (de-quantised transformers model) and ``tokenizer`` to ``folder``, whole or not at all; a
    folder another process finished first is kept. A cache that cannot be written is said on stderr, not raised."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as err:
        print(f"note: cannot keep a converted copy of {source} in {folder.parent} ({err}); every load reads the GGUF "
              f"file (set CANON_PL_CACHE to a writable folder)", file=sys.stderr)
        return
    try:
        model.hf_quantizer = None  # the weights are de-quantised already: save them as plain tensors
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE).write_text(f"converted from {source}\n")
        try:
            staging.rename(folder)
        except OSError:  # another process wrote it first: theirs is whole too
            pass
    except OSError as err:
        print(f"note: could not write the converted copy of {source} to {folder} ({err})", file=sys.stderr)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def set_aside(folder: Path, why: BaseException) -> None:
    """Remove a converted folder that could not be read (the GGUF file is read instead)."""
    print(f"note: the converted model at {folder} could not be read ({str(why).splitlines()[0]}); reading the "
          f"GGUF file again and rewriting it", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["COMPLETE", "cache_root", "converted_folder", "is_complete", "set_aside", "write_converted"]
