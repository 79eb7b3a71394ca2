"""A converted copy of a bundled GGUF model, so that only the first load pays for the conversion.

transformers reads a GGUF file by parsing its metadata and vocabulary with numpy (about 25 s for SmolLM2-135M on two
CPU cores) and de-quantising it; the result cannot be ``save_pretrained`` as it stands (it is marked quantised). The
first load of a bundled model therefore writes the de-quantised weights (safetensors), config and tokenizer to
``<cache>/models/<name>-<dtype>-<key>/``, where ``key`` names the GGUF file's name, size and modification time (a
new package version gets a new folder), and later loads read that folder (about 3 s in a fresh process against
about 19 s; the same logits and token ids, tested). The folder appears whole or not at all (written aside, then
renamed), its last file recording the SHA-256 of every other; each load checks them (about half a second for
517 MB) and a copy that does not match (flipped bits, an edited config.json, a copy written before checksums) or
cannot be read is set aside with a note and the GGUF file is read again. A copy that cannot be written (a full disk)
is a note too: the model loaded from the GGUF file is used. ``<cache>`` is ``$CANON_PL_CACHE``,
else ``$XDG_CACHE_HOME/canon-pl``, else ``~/.cache/canon-pl``; ``CANON_PL_CACHE=off`` turns the copy off.
SmolLM2-135M in float32 takes 517 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

COMPLETE = "canon_pl_converted.txt"
"""Written last inside a converted folder: its presence says the copy is whole, its content (JSON: ``source`` and
``sha256``: ``{file: digest}``) what every other file of it must hash to."""


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


def _digests(folder: Path) -> dict[str, str]:
    """``{file name: SHA-256}`` of every file of ``folder`` but :data:`COMPLETE`."""
    from canon_pl.io.atomic import sha256_file

    return {path.name: sha256_file(path) for path in sorted(folder.iterdir())
            if path.name != COMPLETE and path.is_file()}


def copy_problem(folder: Path) -> str | None:
    """Why the complete copy in ``folder`` must not be used (a file that does not match the checksum recorded when it
    was written, one missing or added, a record that is not canon-pl's), or ``None`` when every file matches."""
    try:
        recorded = json.loads((folder / COMPLETE).read_text())["sha256"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return f"{folder / COMPLETE} records no checksums (written by an older canon-pl, or edited)"
    try:
        actual = _digests(folder)
    except OSError as err:
        return f"{folder} could not be read ({err})"
    for name in sorted(set(recorded) | set(actual)):
        if recorded.get(name) != actual.get(name):
            state = "is missing" if name not in actual else "was not written with the copy" \
                if name not in recorded else "does not match the checksum recorded when it was written (damaged or edited)"
            return f"{folder / name} {state}"
    return None


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
        (staging / COMPLETE).write_text(json.dumps({"source": source, "sha256": _digests(staging)}, indent=1) + "\n")
        try:
            staging.rename(folder)
        except OSError:  # another process wrote it first: theirs is whole too
            pass
    except Exception as err:  # noqa: BLE001 - a full disk is an OSError here and a SafetensorError in the weights
        print(f"note: could not write the converted copy of {source} to {folder} ({str(err).splitlines()[0]}); this "
              f"load uses the GGUF file, as the next one will until a copy can be written", file=sys.stderr)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def set_aside(folder: Path, why: BaseException | str) -> None:
    """Remove a converted folder that could not be read or does not match its checksums (the GGUF file is read
    instead)."""
    print(f"note: the converted model at {folder} could not be read ({str(why).splitlines()[0]}); reading the "
          f"GGUF file again and rewriting it", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["COMPLETE", "cache_root", "converted_folder", "copy_problem", "is_complete", "set_aside",
           "write_converted"]
