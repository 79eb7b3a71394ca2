"""Every loader meets random, truncated and malformed bytes: each case ends in canon-pl's own error naming the file,
or loads (a flipped byte the format tolerates), never in a crash, a hang or an unhandled exception.

The cases are drawn from a fixed seed: a bounded number per file (truncations, random bytes, byte flips and, for
JSON, structurally valid documents with a value replaced by a wrong type)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from canon_pl.data.shards import ShardError, ShardIndex, write_activation_shards
from canon_pl.io import CheckpointError, load_family, read_family_manifest
from canon_pl.meta import MetaSAEError, read_meta_analysis
from canon_pl.sae import BatchTopKSettings
from canon_pl.stats import LatentStatistics, StatsError
from canon_pl.stitching import StitchingError
from canon_pl.viewer.latents import latent_view
from canon_pl.viewer.stitching import load_pair
from tests.viewer_data import build_analysed_run

CASES_PER_FILE = 24
WRONG_VALUES: list[Any] = [None, -1, 0, 10**12, 1.5, float("nan"), "x", "", [], {}, [1, "a"], {"a": None}, True]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every kind of file canon-pl writes: a family of exports, a Lightning checkpoint, stitching results, statistics,
    a meta-SAE analysis and an activation cache."""
    from canon_pl.training import SAEModule, SyntheticActivationDataModule
    from tests.helpers import SMALL_DATA, make_trainer

    root = build_analysed_run(tmp_path_factory.mktemp("pristine"))["root"]
    trainer = make_trainer(root / "run", max_steps=2, every_n_steps=2)
    trainer.fit(SAEModule(d_in=48, d_sae=96, sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**SMALL_DATA))
    foreign_formats(root / "foreign")
    index = write_activation_shards([torch.randn(64, 24) for _ in range(3)], root / "cache", tokens_per_shard=100)
    (root / "cache" / index.shards[0]["file"]).rename(root / "cache" / "first.safetensors")
    index.shards[0]["file"] = "first.safetensors"  # a fixed name for the cases below
    (root / "cache" / "index.json").write_text(json.dumps({"d_in": 24, "dtype": index.dtype, "shards": index.shards}))
    return root


def foreign_formats(root: Path) -> None:
    """One small SAE in each other library's layout (as tests/test_formats.py builds them)."""
    from tests.test_formats import (
        saelens_tensors,
        write_dictionary_learning,
        write_saelens,
        write_sparsify,
    )

    write_saelens(root / "saelens", {"architecture": "jumprelu"}, saelens_tensors(threshold=True))
    (root / "gemma").mkdir(parents=True)
    np.savez(root / "gemma" / "params.npz", **{k: v.numpy() for k, v in saelens_tensors(threshold=True).items()})
    t = saelens_tensors()
    write_sparsify(root / "sparsify", {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
                                       "W_dec": t["W_dec"], "b_dec": t["b_dec"]})
    write_dictionary_learning(root / "dl", {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
                                            "decoder.weight": t["W_dec"].T.contiguous(), "b_dec": t["b_dec"],
                                            "k": torch.tensor(4), "threshold": torch.tensor(0.5)}, "BatchTopKSAE")


def load_foreign(folder: str) -> Callable[[Path], object]:
    def load(root: Path) -> object:
        from canon_pl import load_sae

        return load_sae(root / "foreign" / folder)

    return load


def load_checkpoint(root: Path) -> object:
    from canon_pl import load_sae

    return load_sae(root / "run" / "ckpt" / "last.ckpt")


def load_member(root: Path) -> object:
    from canon_pl import load_sae

    return load_sae(root / "fam", width=16)


def load_whole_family(root: Path) -> object:
    read_family_manifest(root / "fam")
    return load_family(root / "fam")


def load_stitching(root: Path) -> object:
    return load_pair(root / "fam" / "stitching" / "8_16.json")


def load_statistics(root: Path) -> object:
    stats = LatentStatistics.open(root / "fam" / "stats")
    return [latent_view(stats, member, 1) for member in stats.members]


def load_meta(root: Path) -> object:
    return read_meta_analysis(root / "meta", arrays=True)["decomposition"].users_of(0)


def load_meta_statistics(root: Path) -> object:
    stats = LatentStatistics.open(root / "meta" / "stats")
    return stats.latent(stats.members[0], 0)


def load_cache(root: Path) -> object:
    index = ShardIndex.load(root / "cache")
    return [index.read_shard(i) for i in range(len(index.shards))]


# (loader, the files it reads relative to the root, the errors that count as a clear answer)
LOADERS: dict[str, tuple[Callable[[Path], object], list[str], tuple[type[Exception], ...]]] = {
    "checkpoint": (load_checkpoint, ["run/ckpt/last.ckpt"], (CheckpointError,)),
    "export": (load_member, ["fam/16/cfg.json", "fam/16/sae.safetensors", "fam/family.json"], (CheckpointError,)),
    "family": (load_whole_family, ["fam/family.json", "fam/8/cfg.json"], (CheckpointError,)),
    "stitching": (load_stitching, ["fam/stitching/8_16.json", "fam/stitching/8_16.safetensors"], (StitchingError,)),
    "statistics": (load_statistics, ["fam/stats/stats.json", "fam/stats/16.safetensors",
                                     "fam/stats/contexts.safetensors", "fam/stats/tokens.json"], (StatsError,)),
    "meta": (load_meta, ["meta/analysis.json", "meta/analysis.safetensors"], (MetaSAEError,)),
    "meta statistics": (load_meta_statistics, ["meta/stats/stats.json", "meta/stats/meta.safetensors"], (StatsError,)),
    "cache": (load_cache, ["cache/index.json", "cache/first.safetensors"], (ShardError,)),
    "SAELens": (load_foreign("saelens"), ["foreign/saelens/cfg.json", "foreign/saelens/sae_weights.safetensors"],
                (CheckpointError,)),
    "Gemma Scope": (load_foreign("gemma"), ["foreign/gemma/params.npz"], (CheckpointError,)),
    "sparsify": (load_foreign("sparsify"), ["foreign/sparsify/cfg.json", "foreign/sparsify/sae.safetensors"],
                 (CheckpointError,)),
    "dictionary_learning": (load_foreign("dl"), ["foreign/dl/ae.pt", "foreign/dl/config.json"], (CheckpointError,)),
}


def json_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key / index path inside a JSON document."""
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += json_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node[:4]):
            paths += json_paths(value, prefix + (i,))
    return paths


def mutations(data: bytes, is_json: bool, rng: random.Random) -> list[tuple[str, bytes]]:
    cases = []
    for _ in range(CASES_PER_FILE // 4):
        cut = rng.randrange(0, max(len(data), 1))
        cases.append((f"truncated to {cut} bytes", data[:cut]))
        cases.append(("random bytes", rng.randbytes(rng.choice([0, 1, 8, 64, 4096]))))
        flipped = bytearray(data)
        for _ in range(rng.choice([1, 4, 32])):
            if flipped:
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        cases.append(("bytes flipped", bytes(flipped)))
        if is_json:
            doc = json.loads(data)
            path = rng.choice(json_paths(doc) or [()])
            value = rng.choice(WRONG_VALUES)
            if path:
                node = doc
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = value
            else:
                doc = value
            cases.append((f"{'/'.join(map(str, path)) or 'document'} = {value!r}", json.dumps(doc).encode()))
        else:
            cases.append(("empty", b""))
    return cases


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(LOADERS))
def test_every_loader_answers_bad_bytes_with_its_own_clear_error(pristine: Path, tmp_path: Path, name: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # one read: a damaged file is the point here, not a writer between its renames (tests/reliability/
    # test_kill_between_renames.py has those), whose waits took most of this test's time
    monkeypatch.setattr("canon_pl.io.validate.CONSISTENT_READ_ATTEMPTS", 1)
    loader, files, errors = LOADERS[name]
    rng = random.Random(f"fuzz {name}")
    failures = []
    n = 0
    for relative in files:
        original = (pristine / relative).read_bytes()
        for what, data in mutations(original, relative.endswith(".json"), rng):
            n += 1
            case = tmp_path / f"case{n}"
            shutil.copytree(pristine, case, ignore=shutil.ignore_patterns("logs", "*.log"))
            (case / relative).write_bytes(data)
            try:
                loader(case)
            except errors as err:
                if str(case) not in str(err) and relative.split("/")[-1] not in str(err):
                    failures.append(f"{relative}, {what}: the error does not name the file: {err}")
            except Exception as err:  # noqa: BLE001 - the point of the test: nothing else may escape
                failures.append(f"{relative}, {what}: {type(err).__name__}: {err}")
            shutil.rmtree(case)
    assert not failures, f"{len(failures)} of {n} cases escaped as other errors:\n" + "\n".join(failures[:25])
