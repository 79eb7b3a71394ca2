"""Faults while writing or training: a full disk (simulated ENOSPC, and a real full tmpfs where this machine allows
mounting one), a NaN in the activations, weights that diverge. Each stops with an error that names the problem, and
nothing written before is lost or altered."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from canon_pl import load_sae
from canon_pl.data.shards import write_activation_shards
from canon_pl.io import export_sae, write_family_manifest
from canon_pl.meta import MetaDecomposition
from canon_pl.sae import BatchTopKSettings, SAEConfig, build_sae
from canon_pl.stats import collect_statistics, unembedding_directions, write_statistics
from canon_pl.stats.files import write_meta_statistics
from canon_pl.stitching import analyze_pair, write_stitching_results
from tests.helpers import BIN, REPO, mounted_tmpfs
from tests.test_stats import planted_run


def relu_sae(d_sae: int, seed: int, d_in: int = 24) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_sae(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="relu", hook_point="blocks.0", model_id="toy"))


def write_export(folder: Path, seed: int) -> None:
    export_sae(relu_sae(16, seed), folder)


def write_family(folder: Path, seed: int) -> None:
    write_family_manifest(folder, {8: "8", 16: f"16-{seed}"}, relu_sae(8, seed).cfg, tokens=seed)


def write_stitching(folder: Path, seed: int) -> None:
    write_stitching_results(analyze_pair(relu_sae(8, seed), relu_sae(16, seed + 1), torch.randn(64, 24)), folder)


def write_stats(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)  # the same set for a seed in every process (the kill test compares across processes)
    sae, batches, _ = planted_run()
    collectors, contexts, _ = collect_statistics({"8": sae, "x": relu_sae(4, seed)}, batches[:seed], n_top=2,
                                              n_sample=2, window=1)
    unembed = torch.randn(50, 24)
    write_statistics(folder, collectors, torch.cat(contexts),
                     {n: unembedding_directions(c.sae.W_dec.detach(), unembed, n=2) for n, c in collectors.items()},
                     {"seed": seed}, token_strings={i: f"t{i}" for i in range(50)})


def write_meta_stats(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    decomposition = MetaDecomposition(torch.tensor([0, 1, 2]), torch.tensor([0, 1, seed % 2]),
                                      torch.tensor([0.5, 0.4, 0.3]), n_base=3, n_meta=2)
    write_meta_statistics(folder, decomposition, unembedding_directions(torch.randn(2, 24), torch.randn(50, 24), n=2),
                          {"seed": seed}, token_strings={1: "a"})


def write_cache(folder: Path, seed: int) -> None:
    write_activation_shards([torch.full((32, 24), float(seed))] * 3, folder, tokens_per_shard=40)


WRITERS: dict[str, Callable[[Path, int], None]] = {
    "export": write_export, "family manifest": write_family, "stitching results": write_stitching,
    "statistics": write_stats, "meta statistics": write_meta_stats, "activation cache": write_cache,
}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_disk_full_while_rewriting_leaves_the_previous_output_as_it_was(tmp_path: Path, writer: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write = WRITERS[writer]
    write(tmp_path / "out", 1)
    before = folder_bytes(tmp_path / "out")
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:  # where a full disk or quota surfaces on most filesystems: at fsync
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on device") as caught:
        write(tmp_path / "out", 2)
    assert caught.value.errno == errno.ENOSPC and str(tmp_path / "out") in str(caught.value)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert folder_bytes(tmp_path / "out") == before  # every file as it was, no temporary file left behind
    write(tmp_path / "out", 2)  # and once there is room, the same call succeeds
    assert folder_bytes(tmp_path / "out") != before


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    """A real 192 KiB tmpfs (needs root and mount rights: skipped elsewhere)."""
    with mounted_tmpfs(tmp_path / "small", "size=192k", "; the simulated ENOSPC test covers the same path") as mount:
        yield mount


def test_an_export_that_fills_a_real_filesystem_keeps_the_previous_export(tiny_filesystem: Path) -> None:
    small = relu_sae(64, seed=0)
    export_sae(small, tiny_filesystem / "sae")
    before = folder_bytes(tiny_filesystem / "sae")
    with pytest.raises(OSError) as caught:
        export_sae(relu_sae(4096, seed=1), tiny_filesystem / "sae")  # ~800 KB of weights: does not fit
    assert caught.value.errno == errno.ENOSPC
    assert folder_bytes(tiny_filesystem / "sae") == before
    x = torch.randn(4, 24)
    torch.testing.assert_close(load_sae(tiny_filesystem / "sae")(x), small(x))


def test_a_full_disk_while_checkpointing_leaves_only_whole_checkpoints(tmp_path: Path, tiny_filesystem: Path) -> None:
    """Checkpoints every 2 steps into a 192 KiB filesystem: training stops with ENOSPC at the one that does not fit,
    and every ``.ckpt`` left there is whole (Lightning alone stages each in the system's temporary folder and copies
    it across, leaving a truncated file under a checkpoint's name)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from canon_pl.io.checkpoint import safe_torch_load
    from canon_pl.training import SAEModule, SyntheticActivationDataModule
    from tests.helpers import SMALL_DATA

    checkpoints = ModelCheckpoint(dirpath=tiny_filesystem / "ckpt", every_n_train_steps=2, save_top_k=-1, save_last=True)
    trainer = L.Trainer(default_root_dir=tmp_path / "run", max_steps=40, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoints],
                        limit_val_batches=0, num_sanity_val_steps=0)
    with pytest.raises(OSError) as caught:
        trainer.fit(SAEModule(d_in=48, d_sae=96,
                              sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**SMALL_DATA))
    assert caught.value.errno == errno.ENOSPC, caught.value
    left = sorted(p.name for p in (tiny_filesystem / "ckpt").iterdir())
    assert left and not [name for name in left if name.endswith(".tmp")], left
    for name in left:
        assert safe_torch_load(tiny_filesystem / "ckpt" / name)["global_step"] > 0, name


def fit(root: Path, data: dict, callbacks: list[dict]) -> subprocess.CompletedProcess:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 10, "val_check_interval": 10,
                    "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "logger": False,
                    "enable_progress_bar": False, "default_root_dir": str(root),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "save_last": True, "save_top_k": -1,
                                                 "every_n_train_steps": 2}}, *callbacks]},
        "model": {"class_path": "canon_pl.training.SAEModule", "init_args": {"d_in": 24, "d_sae": 48, "sae": {"k": 3}}},
        "data": data,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(json.dumps(config))
    return subprocess.run([str(BIN / "lightning"), "fit", "--config", str(root / "config.yaml")], cwd=root,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})


def assert_good_checkpoints_kept(ckpt: Path, before_step: int) -> None:
    """Every checkpoint on disk loads, has finite weights and was written before the fault."""
    files = sorted(ckpt.glob("*.ckpt"))
    assert files and (ckpt / "last.ckpt") in files
    for path in files:
        state = torch.load(path, weights_only=True)
        assert state["global_step"] < before_step
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
        load_sae(path)


def test_a_nan_in_the_activations_stops_at_its_batch_and_keeps_the_checkpoints(tmp_path: Path) -> None:
    good = torch.randn(64, 24)
    bad = good.clone()
    bad[5, 3] = float("nan")
    write_activation_shards([good, good, good, bad, good], tmp_path / "cache", tokens_per_shard=64)
    data = {"class_path": "canon_pl.training.ActivationShardDataModule",
            "init_args": {"path": str(tmp_path / "cache"), "batch_size": 32, "shards_in_memory": 1}}
    result = fit(tmp_path / "run", data, [])
    assert result.returncode != 0
    found = re.search(r"training batch (\d+) has NaN/Inf activations in 1 of 32 tokens", result.stderr)
    assert found, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert_good_checkpoints_kept(tmp_path / "run" / "ckpt", before_step=int(found.group(1)) + 1)


def test_diverged_weights_are_never_checkpointed(tmp_path: Path) -> None:
    data = {"class_path": "canon_pl.training.SyntheticActivationDataModule",
            "init_args": {"d_in": 24, "n_features": 48, "batch_size": 64, "val_batches": 1, "seed": 0}}
    result = fit(tmp_path / "run", data, [{"class_path": "tests.reliability.faults.PoisonAtStep",
                                           "init_args": {"step": 4}}])
    assert result.returncode != 0
    assert "refusing to write a checkpoint at step 4: members.48.W_enc has NaN/Inf values" in result.stderr, \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert_good_checkpoints_kept(tmp_path / "run" / "ckpt", before_step=4)


def test_a_second_live_run_into_the_same_folder_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path: Path) -> None:
    import socket

    from canon_pl.io.lock import LOCK_FILE, RunFolderLockedError
    from canon_pl.training import SAEModule, SyntheticActivationDataModule
    from tests.helpers import make_trainer

    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # another live process "training" into the folder
    try:
        (run / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": 0}))
        with pytest.raises(RunFolderLockedError, match=f"{re.escape(str(run))} is in use by process {other.pid}"):
            make_trainer(run, max_steps=2, every_n_steps=1).fit(SAEModule(d_in=16, d_sae=32,
                                                                          sae=BatchTopKSettings(k=4)),
                                                                SyntheticActivationDataModule(d_in=16, n_features=32))
        assert not (run / "ckpt").exists()  # refused before anything was written
    finally:
        other.kill()
        other.wait()
    # that process is gone now: its lock is stale and the next run takes it over, then releases it
    make_trainer(run, max_steps=2, every_n_steps=1).fit(SAEModule(d_in=16, d_sae=32, sae=BatchTopKSettings(k=4)),
                                                        SyntheticActivationDataModule(d_in=16, n_features=32))
    assert (run / "ckpt" / "last.ckpt").is_file() and not (run / LOCK_FILE).exists()


def test_a_second_cache_writer_into_the_same_folder_is_refused_and_leaves_the_first_ones_shards(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `canon-pl cache` writers into one folder once both exited 0 and left an index whose shards the other had
    deleted: the folder has one writer, like a run folder."""
    import socket

    from canon_pl.cli import main
    from canon_pl.io.lock import LOCK_FILE

    out = tmp_path / "cache"
    out.mkdir()
    (out / "shard_00000.safetensors").write_bytes(b"the first writer's shard")
    other = subprocess.Popen(["sleep", "60"])  # the first writer, still writing
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": 0}))
        monkeypatch.chdir(REPO)
        code = main(["cache", "--config", "configs/sae_smollm2.yaml", "--out", str(out), "--tokens", "10"])
    finally:
        other.kill()
        other.wait()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"is in use by process {other.pid}" in err and "two cache writers in one folder" in err
    assert (out / "shard_00000.safetensors").read_bytes() == b"the first writer's shard"
