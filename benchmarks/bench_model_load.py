"""Loading the bundled SmolLM2-135M: from its GGUF file each time, against the converted copy later loads read.

Each load runs in a fresh process (what a researcher's next command pays), in one run side by side:
``CANON_PL_CACHE=off`` (transformers parses and de-quantises the GGUF file), the first load with an empty cache
folder (that, plus writing the safetensors copy), and a second load from the copy. Prints the seconds of each, the
copy's size, and ends with ``ratio: <GGUF load seconds / converted-copy load seconds>``.

    python benchmarks/bench_model_load.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

LOAD = ("import time; from canon_pl.lm import load_causal_lm; t = time.perf_counter(); "
        "load_causal_lm('smollm2-135m'); print(time.perf_counter() - t)")


def load_seconds(cache: str) -> float:
    """Seconds of ``load_causal_lm`` in a new process with ``CANON_PL_CACHE=cache`` (after its imports, which every
    command pays either way)."""
    out = subprocess.run([sys.executable, "-c", LOAD], env={**os.environ, "CANON_PL_CACHE": cache},
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        gguf = load_seconds("off")
        first = load_seconds(cache)
        again = load_seconds(cache)
        size = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    print(f"from the GGUF file (CANON_PL_CACHE=off)   {gguf:7.2f} s")
    print(f"first load, writing the converted copy    {first:7.2f} s  (copy: {size / 2**20:.0f} MiB)")
    print(f"later load, from the converted copy       {again:7.2f} s")
    print(f"ratio: {gguf / again:.1f}")


if __name__ == "__main__":
    main()
