"""Readers while a writer rewrites (old or new, never a mix), checkpoints that carry code (refused, not run), and the
viewer as a reader only (it never writes, and it refuses oversized files before reading them)."""

from __future__ import annotations

import hashlib
import pickle
import re
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from canon_pl import load_sae
from canon_pl.io import CheckpointError, export_sae
from canon_pl.sae import BatchTopKSettings, SAEConfig, build_sae
from canon_pl.stitching import (
    StitchingError,
    analyze_pair,
    read_stitching_results,
    write_stitching_results,
)
from tests.helpers import REPO
from tests.viewer_data import build_analysed_run, open_viewer


def relu_sae(d_sae: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_sae(SAEConfig(d_in=16, d_sae=d_sae, architecture="relu"))


def keep_rewriting(write_version, stop: threading.Event) -> None:
    version = 0
    while not stop.is_set():  # 200 rewrites a second: far more often than any training run exports
        write_version(version % 2)
        version += 1
        time.sleep(0.005)


def test_a_reader_sees_the_old_or_the_new_export_never_a_mix(tmp_path: Path) -> None:
    versions = [relu_sae(32, 0), relu_sae(32, 1)]
    x = torch.randn(8, 16)
    outputs = [sae(x) for sae in versions]
    export_sae(versions[0], tmp_path / "sae")
    stop = threading.Event()
    writer = threading.Thread(target=keep_rewriting, args=(lambda v: export_sae(versions[v], tmp_path / "sae"), stop))
    writer.start()
    seen = set()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            y = load_sae(tmp_path / "sae")(x)  # never a CheckpointError: the pair read is consistent
            matches = [i for i, out in enumerate(outputs) if torch.allclose(y, out)]
            assert len(matches) == 1
            seen.add(matches[0])
    finally:
        stop.set()
        writer.join()
    assert seen == {0, 1}  # the writer really was rewriting under the reader


def test_a_reader_sees_the_old_or_the_new_results_never_a_mix(tmp_path: Path) -> None:
    results = [analyze_pair(relu_sae(8, s), relu_sae(16, s + 10), torch.randn(64, 16)) for s in (0, 1)]
    write_stitching_results(results[0], tmp_path)
    stop = threading.Event()
    writer = threading.Thread(target=keep_rewriting, args=(lambda v: write_stitching_results(results[v], tmp_path),
                                                           stop))
    writer.start()
    seen = set()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            read = read_stitching_results(tmp_path / "8_16.json", arrays=True)
            version = [i for i, r in enumerate(results) if torch.equal(read["arrays"]["large_delta_mse"],
                                                                       r.large_delta_mse)]
            assert len(version) == 1 and read["fvu_large"] == results[version[0]].summary["fvu_large"]
            seen.add(version[0])
    finally:
        stop.set()
        writer.join()
    assert seen == {0, 1}


class RunsCode:
    """Unpickling this object would call ``Path.touch`` on the marker: the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path: Path) -> None:
    from canon_pl.cli import main as canon_pl_main

    marker = tmp_path / "exploited"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": RunsCode(marker)}, evil)
    assert b"touch" in zipfile.ZipFile(evil).read(next(n for n in zipfile.ZipFile(evil).namelist()
                                                         if n.endswith("data.pkl")))
    with pytest.raises(CheckpointError, match="refusing to load .*evil.ckpt.*could run code"):
        load_sae(evil)
    assert canon_pl_main(["export", "--ckpt", str(evil), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()
    pickle.loads(pickle.dumps(RunsCode(marker)))  # the payload is live: plain unpickling does run it
    assert marker.exists()


def test_resuming_training_from_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path: Path) -> None:
    """`lightning fit --ckpt_path evil.ckpt`: canon-pl's "refusing to load", not torch's advice to load it unrestricted."""
    from canon_pl.training import SAEModule, SyntheticActivationDataModule
    from tests.helpers import SMALL_DATA, make_trainer

    marker = tmp_path / "exploited"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": RunsCode(marker)}, evil)
    trainer = make_trainer(tmp_path / "run", max_steps=2)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.ckpt.*could run code"):
        trainer.fit(SAEModule(d_in=48, d_sae=96,
                              sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**SMALL_DATA), ckpt_path=evil)
    assert not marker.exists()


def test_no_loader_unpickles_without_weights_only() -> None:
    """Every ``torch.load`` in the package passes ``weights_only=True``, and nothing calls ``pickle.load(s)``."""
    offenders = []
    for path in sorted((REPO / "canon_pl").rglob("*.py")) + [REPO / "apps" / "viewer.py"]:
        text = path.read_text()
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path.name}: {call.group(0)}")
        if re.search(r"pickle\.loads?\(", text):
            offenders.append(f"{path.name}: pickle.load")
    assert not offenders


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_viewer_never_writes_to_the_checkpoints_folder(tmp_path: Path) -> None:
    root = build_analysed_run(tmp_path)["root"]
    before, entries = tree_digest(root), sorted(root.rglob("*"))
    for page, params in [("Runs", {}), ("Stitching", {}), ("Latent", {"run": "fam", "sae": "16", "latent": "3"}),
                         ("Meta-latent", {"meta_run": "meta", "meta": "0"}), ("Search", {"q": "PLANTED"})]:
        app = open_viewer(root, page=page, **params)
        assert not app.exception
    assert tree_digest(root) == before and sorted(root.rglob("*")) == entries


def test_the_viewer_skips_an_oversized_file_without_reading_it(tmp_path: Path) -> None:
    from canon_pl.io.validate import MAX_JSON_BYTES

    root = build_analysed_run(tmp_path)["root"]
    huge = root / "fam" / "stitching" / "1_2.json"
    with open(huge, "wb") as f:  # sparse: claims a size larger than any results file, costs no disk
        f.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(StitchingError, match="more than any"):
        read_stitching_results(huge)
    app = open_viewer(root, page="Stitching")
    assert not app.exception
    assert app.sidebar.selectbox[0].options == ["fam · 8 → 16"]  # the oversized file is not offered


def test_weights_larger_than_their_config_allows_are_refused_before_a_byte_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sae.safetensors grown past what an SAE of its cfg.json's d_in x d_sae can hold (a sparse 64 GiB file here,
    no disk used) is refused by load_sae on its size alone: nothing reads it."""
    from canon_pl import load_sae
    from canon_pl.io import CheckpointError, export_sae
    from canon_pl.sae import SAEConfig, build_sae

    folder = tmp_path / "export"
    export_sae(build_sae(SAEConfig(d_in=16, d_sae=32, architecture="relu")), folder)
    with open(folder / "sae.safetensors", "r+b") as f:
        f.truncate(64 << 30)
    reads, read_bytes = [], Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or read_bytes(self))
    with pytest.raises(CheckpointError, match="more than its index allows") as refused:
        load_sae(folder)
    assert "sae.safetensors is 68,719,476,736 bytes" in str(refused.value) and "re-export the SAE" in str(refused.value)
    assert not [p for p in reads if p.name == "sae.safetensors"]


def test_a_crafted_config_is_refused_before_an_sae_of_its_size_is_allocated(tmp_path: Path, monkeypatch) -> None:
    import json

    import canon_pl.io.export as export_module
    import canon_pl.sae as sae_module
    from canon_pl.io import initial_decoder

    export_sae(build_sae(SAEConfig(d_in=8, d_sae=16, architecture="relu")), tmp_path / "sae",
               extra={"training": {"init_seed": 0}})
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    cfg["sae"]["d_sae"] = 20_000_000  # 640 MB per matrix, from a file of a few hundred bytes
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))

    def no_allocation(*args, **kwargs):
        raise AssertionError("an SAE of the config's size was allocated")

    monkeypatch.setattr(export_module, "build_sae", no_allocation)
    monkeypatch.setattr(sae_module, "initial_sae", no_allocation)
    with pytest.raises(CheckpointError, match=r"d_sae=20000000 but W_enc is \(8, 16\)"):
        load_sae(tmp_path / "sae")
    assert initial_decoder(tmp_path / "sae") is None
