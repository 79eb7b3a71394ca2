"""Are the study's numbers identical across two revisions? Runs the study's pipeline on the shortened config the tests
use (``tests/test_pipeline.py``: a 4k-token cache of pydoc-topics, a few steps, every stage: fit, stitch, meta-SAE,
statistics, evaluate, Matryoshka, report) once per revision, each from its own clone with this machine's
environment, and compares every number of every JSON result (stitching, meta-SAE analyses, evaluation, statistics
index, family manifests, exports' configs) and every tensor of every safetensors file (weights, result arrays).

Usage: ``python benchmarks/study_identical.py OLD_REV NEW_REV [--work DIR]``. Prints each file that differs with its
largest difference and ends with ``ratio: <files that differ / files compared>`` (0 = identical).
Keys that record when or how long (dates, wall seconds, durations, versions, digests of files that hold them, paths)
are not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VOLATILE = {"date", "wall_seconds", "seconds", "canon_pl_version", "config_sha256", "weights_sha256", "sha256",
            "created", "elapsed", "fit_time", "path", "root", "source", "files", "fit_config", "cache",
            "tokens_per_second", "throughput", "stages", "eval_id", "datetime_epoch_millis"}
"""Keys that record when, how long, which random id, or a digest of a file that holds such a key."""
REPO = Path(__file__).resolve().parents[1]

RUN = """
import sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd()))
from tests.test_pipeline import tiny_configs
from canon_pl.cli import main
root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
config = tiny_configs(root)
import os
os.chdir(root)
sys.exit(main(["pipeline", "--config", str(config)]))
"""


def run_pipeline(rev: str, work: Path) -> Path:
    clone = work / f"clone_{rev}"
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
    out = work / f"run_{rev}"
    if (out / "checkpoints" / "tiny" / "report.md").is_file():  # already run: compare again
        return out / "checkpoints" / "tiny"
    env = {**os.environ, "PYTHONPATH": str(clone)}
    result = subprocess.run([sys.executable, "-c", RUN, str(out)], cwd=clone, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{rev}: the pipeline failed:\n{result.stderr[-4000:]}")
    return out / "checkpoints" / "tiny"


def numbers_differ(a, b, path: str = "", added: set[str] | None = None,
                   dropped: set[str] | None = None) -> list[tuple[str, float]]:
    """(where, |difference|) of every number or value that differs between two parsed JSON documents; keys only the
    second has go to ``added``, keys of an SAE's config (``sae``, SAEBench's ``sae_cfg_dict``) only the first has to
    ``dropped`` (a setting the architecture does not have, which the one flat config of old wrote for every
    architecture): records, not changed numbers."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key in VOLATILE:
                continue
            if key not in a and added is not None:
                added.add(key)
            elif key not in b and dropped is not None and path.endswith(("/sae", "/sae_cfg_dict")):
                dropped.add(key)
            elif key not in a or key not in b:
                out.append((f"{path}/{key} (only in one)", math.inf))
            else:
                out += numbers_differ(a[key], b[key], f"{path}/{key}", added, dropped)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(f"{path} (lengths {len(a)} vs {len(b)})", math.inf)]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in numbers_differ(x, y, f"{path}[{i}]", added)]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            return []
        return [(path, abs(a - b))]
    return [] if a == b else [(f"{path} ({a!r} vs {b!r})", math.inf)]


def as_read(document: dict) -> dict:
    """An export's ``cfg.json`` as ``canon_pl.io.training_data`` reads it: the model and hook point in ``data`` too
    (exports write them once, in ``sae``, since the provenance was stated once)."""
    sae, data = document.get("sae"), document.get("data")
    if isinstance(sae, dict) and isinstance(data, dict) and data:
        document["data"] = {**data, "model": sae.get("model_id"), "hook_point": sae.get("hook_point")}
    return document


def tensors_differ(a: Path, b: Path) -> list[tuple[str, float]]:
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    out = []
    for key in sorted(set(ta) | set(tb)):
        if key not in ta or key not in tb or ta[key].shape != tb[key].shape:
            out.append((f"{key} (missing or reshaped)", math.inf))
        elif not torch.equal(ta[key], tb[key]):
            diff = (ta[key].double() - tb[key].double()).abs().max() if ta[key].is_floating_point() else math.inf
            out.append((key, float(diff)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--work", type=Path, default=None, help="folder for the clones and runs (default: a temp dir)")
    ns = parser.parse_args()
    work = ns.work or Path(tempfile.mkdtemp(prefix="study_identical_"))
    runs = {rev: run_pipeline(rev, work) for rev in (ns.old, ns.new)}
    old, new = runs[ns.old], runs[ns.new]
    files = sorted(p.relative_to(old) for p in old.rglob("*") if p.suffix in (".json", ".safetensors")
                   and "logs" not in p.parts and p.name != "fit_time.json")
    differ, added, dropped = 0, set(), set()

    def relative(text: str) -> str:  # the two runs' folders, named alike
        return text.replace(str(old.parents[1]), "<run>").replace(str(new.parents[1]), "<run>")

    for rel in files:
        other = new / rel
        if not other.exists():
            print(f"{rel}: missing in {ns.new}")
            differ += 1
            continue
        if rel.suffix == ".json":
            diffs = numbers_differ(as_read(json.loads(relative((old / rel).read_text()))),
                                   as_read(json.loads(relative(other.read_text()))), added=added, dropped=dropped)
        else:
            diffs = tensors_differ(old / rel, other)
        if diffs:
            differ += 1
            where, largest = max(diffs, key=lambda d: d[1])
            print(f"{rel}: {len(diffs)} values differ, the largest by {largest:.3g} at {where}")
    extra = sorted(p.relative_to(new) for p in new.rglob("*") if p.suffix in (".json", ".safetensors")
                   and "logs" not in p.parts and not (old / p.relative_to(new)).exists())
    for rel in extra:
        print(f"{rel}: only in {ns.new}")
    if added:
        print(f"keys only {ns.new} writes (new records, not changed numbers): {', '.join(sorted(added))}")
    if dropped:
        print(f"SAE settings only {ns.old} writes (fields the architecture lacks): {', '.join(sorted(dropped))}")
    print(f"compared {len(files)} files of {ns.old} and {ns.new} ({work}); {differ} differ")
    print(f"ratio: {differ / max(len(files), 1):.3f}")


if __name__ == "__main__":
    main()
