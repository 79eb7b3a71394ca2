"""Training on several processes equals training on one: `lightning fit` with the `ddp_cpu_sim` and `fsdp_cpu_sim`
presets (2 CPU processes over gloo) against one process on the same global batches, resume under DDP, and the
collectives behind it (global BatchTopK, dead counters, per-rank data shards) run in spawned process groups."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from canon_pl.lm.text import iter_documents
from tests.helpers import BIN, REPO

STEPS = 16
PER_RANK_BATCH = 256
FAMILY = {"class_path": "canon_pl.training.SAEFamilyModule",
          "init_args": {"d_in": 32, "widths": [64, 128], "sae": {"k": 3, "aux_k": 16, "dead_tokens_threshold": 1024},
                        "optimizer": {"lr": 3e-3}}}


def fit(root: Path, batch_size: int, preset: str | None, *extra: str, ckpt_path: Path | None = None,
        max_steps: int = STEPS) -> subprocess.CompletedProcess:
    """`lightning fit` of a two-width BatchTopK family on synthetic data; ``batch_size`` is per rank."""
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "val_check_interval": 8,
                    "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "default_root_dir": str(root),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root), "name": "logs"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "save_top_k": -1,
                                                 "every_n_train_steps": 8}},
                                  {"class_path": "canon_pl.training.SAEExportCallback"},
                                  {"class_path": "canon_pl.training.StitchingCallback", "init_args": {"ce_points": 0}},
                                  {"class_path": "canon_pl.training.RankAgreementCheck",
                                   "init_args": {"every_n_steps": 4}}]},
        "model": FAMILY,
        "data": {"class_path": "canon_pl.training.SyntheticActivationDataModule",
                 "init_args": {"d_in": 32, "n_features": 64, "active_per_token": 3.0, "batch_size": batch_size,
                               "val_batches": 2, "seed": 0}},
    }
    return launch(root, config, preset, *extra, ckpt_path=ckpt_path)


def launch(root: Path, config: dict, preset: str | None, *extra: str, ckpt_path: Path | None = None,
           timeout: int = 600) -> subprocess.CompletedProcess:
    """`lightning fit --config <config> [--config configs/trainer/<preset>.yaml]` in ``root``, as a researcher runs it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    args = [str(BIN / "lightning"), "fit", "--config", str(root / "config.yaml")]
    if preset:
        args += ["--config", str(REPO / "configs" / "trainer" / f"{preset}.yaml")]
    args += list(extra)
    if ckpt_path is not None:
        args += ["--ckpt_path", str(ckpt_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_PORT": str(_free_port())}
    return subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return {f"{w}/{k}": v for w in ("64", "128") for k, v in load_file(root / w / "sae.safetensors").items()}


def _last_validation(root: Path) -> dict[str, float]:
    import csv

    rows = list(csv.DictReader((root / "logs" / "version_0" / "metrics.csv").open()))
    val = [r for r in rows if r.get("128/val/fvu")]
    return {k: float(v) for k, v in val[-1].items() if "/val/" in k and v}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("distributed")
    roots = {"single": base / "single", "ddp": base / "ddp", "fsdp": base / "fsdp"}
    _ok(fit(roots["single"], 2 * PER_RANK_BATCH, None))
    _ok(fit(roots["ddp"], PER_RANK_BATCH, "ddp_cpu_sim"))
    _ok(fit(roots["fsdp"], PER_RANK_BATCH, "fsdp_cpu_sim"))
    return roots


def test_ddp_training_equals_one_process_on_the_same_global_batches(runs: dict[str, Path]) -> None:
    single, ddp = _weights(runs["single"]), _weights(runs["ddp"])
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=2e-5, rtol=1e-4, msg=name)
    # BatchTopK's inference threshold is the k-th largest activation of the global batch, not of a rank's half.
    assert float(ddp["128/threshold"]) == pytest.approx(float(single["128/threshold"]), rel=1e-4)
    # Validation metrics are reduced over the ranks' halves of each validation batch.
    single_val, ddp_val = _last_validation(runs["single"]), _last_validation(runs["ddp"])
    assert set(ddp_val) == set(single_val)
    for key in single_val:
        assert ddp_val[key] == pytest.approx(single_val[key], rel=1e-3, abs=1e-4), key
    tokens = [json.loads((r / "128" / "cfg.json").read_text())["training"]["tokens"] for r in (runs["single"], runs["ddp"])]
    assert tokens == [STEPS * 2 * PER_RANK_BATCH] * 2


def test_fsdp_shards_the_sae_and_exports_the_same_single_file(runs: dict[str, Path]) -> None:
    fsdp, ddp = _weights(runs["fsdp"]), _weights(runs["ddp"])
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], atol=1e-6, rtol=1e-5, msg=name)
    from canon_pl import load_sae

    # The stitching callback analyses gathered copies of the sharded members on rank 0.
    from canon_pl.stitching import read_stitching_results

    stitched = [read_stitching_results(runs[r] / "stitching" / "64_128.json") for r in ("ddp", "fsdp")]
    assert stitched[0]["global_step"] == STEPS
    for key in ("n_novel", "n_reconstruction", "fvu_small", "fvu_large"):
        assert stitched[0][key] == pytest.approx(stitched[1][key], rel=1e-5), key
    ckpt = sorted((runs["fsdp"] / "ckpt").glob("*.ckpt"))[-1]  # one file, gathered on rank 0
    sae = load_sae(ckpt, width=128)
    assert sae.d_sae == 128 and torch.isfinite(sae.W_dec).all()


def test_ddp_resumes_each_rank_at_its_own_stream_position(runs: dict[str, Path], tmp_path: Path) -> None:
    first = sorted((runs["ddp"] / "ckpt").glob("*step=8*.ckpt"))[0]
    state = torch.load(first, weights_only=True, map_location="cpu")
    stream = next(v for k, v in state.items() if k.endswith("SyntheticActivationDataModule"))
    assert stream["world_size"] == 2 and stream["positions"] == [8, 8]
    _ok(fit(tmp_path / "resumed", PER_RANK_BATCH, "ddp_cpu_sim", ckpt_path=first))
    resumed, uninterrupted = _weights(tmp_path / "resumed"), _weights(runs["ddp"])
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=0, rtol=0, msg=name)


def test_resuming_a_ddp_checkpoint_on_another_number_of_ranks_names_the_fix(runs: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    first = sorted((runs["ddp"] / "ckpt").glob("*step=8*.ckpt"))[0]
    result = fit(tmp_path / "one", PER_RANK_BATCH, None, ckpt_path=first)
    assert result.returncode == 2
    assert "written by 2 rank(s)" in result.stderr and "same number of devices" in result.stderr


# --------------------------------------------------------------------------------------------- process groups
def _in_process_group(rank: int, world_size: int, port: int, checks: list[str], out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        out[rank] = {check: CHECKS[check](rank, world_size) for check in checks}
    finally:
        dist.destroy_process_group()


def spawn(checks: list[str], world_size: int = 2) -> dict[int, dict[str, object]]:
    """Run each ``CHECKS[check](rank, world_size)`` in turn in one group of ``world_size`` processes; their return
    values by rank and check."""
    out = mp.Manager().dict()
    mp.spawn(_in_process_group, args=(world_size, _free_port(), checks, out), nprocs=world_size)
    return dict(out)


def _global_top_k(rank: int, world_size: int) -> list[bool]:
    from canon_pl.distributed import global_kth_largest

    results = []
    for trial in range(6):
        g = torch.Generator().manual_seed(trial)
        full = torch.rand(world_size * 300, generator=g)
        if trial % 2:  # one rank holds most of the largest values: the exact fallback must find them
            full[:300] += 1.0
        mine = full[rank * 300:(rank + 1) * 300]
        k = 40 * (trial + 1)
        results.append(float(global_kth_largest(mine, k)) == float(full.topk(k).values.min()))
    return results


def _dead_counters_and_threshold(rank: int, world_size: int) -> dict[str, object]:
    from canon_pl.sae import SAEConfig, build_sae
    from canon_pl.sae.batchtopk import batch_topk

    torch.manual_seed(0)
    sae = build_sae(SAEConfig(d_in=16, d_sae=64, architecture="batchtopk", k=2, aux_k=8, dead_tokens_threshold=64))
    sae.train()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    out = sae.training_forward(x[rank * 32:(rank + 1) * 32])
    reference = batch_topk(sae.pre_activations(x).detach(), 2 * 64)  # one process on the whole batch
    selected = set(zip((out.acts.rows + 32 * rank).tolist(), out.acts.cols.tolist()))
    everyone = [None] * world_size
    dist.all_gather_object(everyone, selected)
    union = set().union(*everyone)
    fired = torch.zeros(64, dtype=torch.bool)
    fired[reference.cols] = True
    return {"same_selection": union == set(zip(reference.rows.tolist(), reference.cols.tolist())),
            "threshold": float(sae.threshold), "reference_threshold": float(reference.values.min()),
            "counters": sae.tokens_since_fired.tolist(), "expected": torch.where(fired, 0, 64).tolist()}


def _shard_cache(rank: int, world_size: int) -> list[int]:
    from canon_pl.training import ActivationShardDataModule

    data = ActivationShardDataModule(os.environ["CANON_TEST_CACHE"], batch_size=10, shards_in_memory=1)
    epoch = torch.cat([batch for _, batch in itertools.islice(data.train_batches(0), 4)])  # 2 shards x 2 batches
    return sorted({int(v) for v in epoch[:, 0].tolist()})  # column 0 holds the shard number


def _metrics_over_unequal_shards(rank: int, world_size: int) -> dict[str, float]:
    from canon_pl.metrics import DeadLatentFraction, FiringDensityHistogram, MeanL0

    acts = torch.zeros(10 if rank == 0 else 3, 4)
    acts[:, rank] = 1.0  # latent 0 fires on rank 0's 10 tokens, latent 1 on rank 1's 3; latents 2, 3 never
    dead, l0, density = DeadLatentFraction(4), MeanL0(), FiringDensityHistogram(4)
    for metric in (dead, l0, density):
        metric.update(acts)
    return {"dead": float(dead.compute()), "l0": float(l0.compute()),
            "densities": [round(v, 4) for v in density.compute().densities.tolist()]}


def _text_contexts(rank: int, world_size: int) -> list[list[int]]:
    from canon_pl.training import ActivationDataModule

    data = ActivationDataModule(text="pydoc-topics", context_length=16, contexts_per_forward=2, block_contexts=4)
    return [c.tolist() for c in itertools.islice(data._contexts("train", 0), 8)]


CHECKS = {"global_top_k": _global_top_k, "dead_counters": _dead_counters_and_threshold, "shard_cache": _shard_cache,
          "metrics": _metrics_over_unequal_shards, "text": _text_contexts}


@pytest.fixture(scope="module")
def collectives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, object]]:
    """Every check of :data:`CHECKS` run in one spawned group of two ranks (each spawn starts two interpreters that
    import torch): ``{check: {rank: result}}``. The shard check reads 5 shards of 20 rows each (shard ``i`` holds
    the value ``i``); the last is held out for validation, so 4 training shards for 2 ranks."""
    from canon_pl.data import write_activation_shards

    cache = tmp_path_factory.mktemp("shards") / "cache"
    rows = torch.cat([torch.full((20, 4), float(i)) for i in range(5)])
    write_activation_shards(iter([rows]), cache, tokens_per_shard=20, dtype="float32")
    os.environ["CANON_TEST_CACHE"] = str(cache)  # the spawned ranks inherit it
    try:
        by_rank = spawn(list(CHECKS))
    finally:
        del os.environ["CANON_TEST_CACHE"]
    return {check: {rank: by_rank[rank][check] for rank in by_rank} for check in CHECKS}


def test_global_k_th_largest_is_exact_even_when_one_rank_holds_the_top(collectives: dict) -> None:
    results = collectives["global_top_k"]
    assert results[0] == results[1] == [True] * 6


def test_batchtopk_selects_over_the_global_batch_and_counts_dead_latents_over_all_ranks(collectives: dict) -> None:
    results = collectives["dead_counters"]
    for rank in (0, 1):
        assert results[rank]["same_selection"]
        assert results[rank]["threshold"] == pytest.approx(results[rank]["reference_threshold"])
        assert results[rank]["counters"] == results[rank]["expected"]  # fired on either rank resets the counter


def test_each_rank_reads_its_own_cache_shards(collectives: dict) -> None:
    results = collectives["shard_cache"]
    assert set(results[0]).isdisjoint(results[1])
    assert set(results[0]) | set(results[1]) <= {0, 1, 2, 3}


def test_text_shards_of_the_ranks_are_disjoint_and_cover_the_split() -> None:
    whole = list(iter_documents("pydoc-topics", "train"))
    parts = [list(iter_documents("pydoc-topics", "train", shard=(r, 3))) for r in range(3)]
    assert sum(len(p) for p in parts) == len(whole)
    assert sorted(sum(parts, [])) == sorted(whole)
    assert parts[1][0] == whole[1] and parts[2][0] == whole[2]


@pytest.mark.parametrize("preset", ["cpu", "gpu", "ddp", "ddp_cpu_sim", "fsdp", "fsdp_cpu_sim"],
                         ids=lambda preset: f"{preset}.yaml")  # an id "gpu" alone would mark the test GPU-only
def test_every_trainer_preset_composes_with_a_training_config(preset: str) -> None:
    """`--config <run>.yaml --config configs/trainer/<preset>.yaml`: the preset sets the trainer, keeps the run's
    callbacks and adds its own (GPU presets are checked with the accelerator switched to the CPU here)."""
    from canon_pl.cli.lightning import run_lightning_cli
    from canon_pl.training import (
        SAEDDPStrategy,
        SAEExportCallback,
        SAEFSDPStrategy,
        SAEThroughputMonitor,
    )

    args = ["--config", str(REPO / "configs" / "sae_synthetic.yaml"),
            "--config", str(REPO / "configs" / "trainer" / f"{preset}.yaml"),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    if preset in ("ddp", "fsdp"):
        args += ["--trainer.strategy.init_args.process_group_backend", "gloo"]
    trainer = run_lightning_cli(args, run=False).trainer
    kinds = {type(c) for c in trainer.callbacks}
    assert SAEExportCallback in kinds
    assert (SAEThroughputMonitor in kinds) == (preset in ("gpu", "ddp", "fsdp"))
    expected = {"ddp": SAEDDPStrategy, "ddp_cpu_sim": SAEDDPStrategy, "fsdp": SAEFSDPStrategy,
                "fsdp_cpu_sim": SAEFSDPStrategy}.get(preset)
    if expected is not None:
        assert isinstance(trainer.strategy, expected)


def test_validation_metrics_reduce_over_ranks_that_saw_different_token_counts(collectives: dict) -> None:
    results = collectives["metrics"]
    assert results[0] == results[1] == {"dead": 0.5, "l0": 1.0, "densities": [round(10 / 13, 4), round(3 / 13, 4), 0, 0]}


def test_each_rank_runs_the_language_model_on_its_own_documents(collectives: dict) -> None:
    contexts = collectives["text"]
    assert len(contexts[0]) == len(contexts[1]) == 8
    assert not {tuple(c) for c in contexts[0]} & {tuple(c) for c in contexts[1]}


def test_ddp_on_the_bundled_language_model_trains_validates_and_exports(tmp_path: Path) -> None:
    """The real stream under `ddp_cpu_sim`: two SmolLM2 forwards on disjoint documents, spliced CE at validation,
    the rank-agreement check every step, rank 0's export, both ranks' buffer positions in the checkpoint."""
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 4, "val_check_interval": 4, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False, "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "logs"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 4}},
                                  {"class_path": "canon_pl.training.SAEExportCallback"},
                                  {"class_path": "canon_pl.training.RankAgreementCheck",
                                   "init_args": {"every_n_steps": 1}}]},
        "model": {"class_path": "canon_pl.training.SAEModule",
                  "init_args": {"d_in": 576, "d_sae": 1152, "sae": {"k": 16, "dead_tokens_threshold": 2000},
                                "optimizer": {"lr": 1e-3},
                                "hook_point": "model.layers.3", "model_id": "smollm2-135m"}},
        "data": {"class_path": "canon_pl.training.ActivationDataModule",
                 "init_args": {"hook_point": "model.layers.3", "text": "pydoc-topics", "context_length": 32,
                               "contexts_per_forward": 8, "block_contexts": 16, "batch_size": 128,
                               "val_contexts": 8}},
    }
    _ok(launch(tmp_path, config, "ddp_cpu_sim"))
    assert json.loads((tmp_path / "cfg.json").read_text())["training"]["tokens"] == 4 * 2 * 128
    import csv

    val = [r for r in csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()) if r.get("val/fvu")]
    assert 0.0 < float(val[-1]["val/ce_recovered"]) < 1.0 and float(val[-1]["val/fvu"]) < 1.0
    state = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=True, map_location="cpu")
    assert state["ActivationDataModule"]["world_size"] == 2


@pytest.mark.gpu
def test_the_gpu_preset_trains_with_tf32_and_logs_the_fraction_of_peak(tmp_path: Path) -> None:
    """On a CUDA machine: `gpu.yaml` trains the family, and SAEThroughputMonitor logs the step's MFU."""
    import csv

    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 20, "log_every_n_steps": 5, "limit_val_batches": 0, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "logs"}},
                    "callbacks": [{"class_path": "canon_pl.training.SAEExportCallback"}]},
        "model": FAMILY,
        "data": {"class_path": "canon_pl.training.SyntheticActivationDataModule",
                 "init_args": {"d_in": 32, "n_features": 64, "batch_size": 1024, "val_batches": 0}},
    }
    _ok(launch(tmp_path, config, "gpu"))
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    mfu = [float(r[key]) for r in rows for key in r if key.endswith("device/mfu") and r[key]]
    assert mfu and all(0.0 < value < 1.0 for value in mfu)


def test_a_meta_sae_trains_under_ddp_and_rank_0_analyses_it_alone(tmp_path: Path) -> None:
    """The analysis after `fit` trains small baseline SAEs on rank 0 only: inside it nothing waits for rank 1."""
    from canon_pl.io import export_sae
    from canon_pl.sae import SAEConfig, build_sae

    export_sae(build_sae(SAEConfig(d_in=32, d_sae=210, architecture="relu")), tmp_path / "base")
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 6, "limit_val_batches": 1, "val_check_interval": 6, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_checkpointing": False,
                    "logger": False, "default_root_dir": str(tmp_path / "meta"),
                    "callbacks": [{"class_path": "canon_pl.training.SAEExportCallback"},
                                  {"class_path": "canon_pl.training.MetaSAEAnalysisCallback",
                                   "init_args": {"baseline_steps": 3}},
                                  {"class_path": "canon_pl.training.RankAgreementCheck",
                                   "init_args": {"every_n_steps": 2}}]},
        "model": {"class_path": "canon_pl.training.MetaSAEModule", "init_args": {"d_in": 32, "d_sae": 10, "sae": {"k": 2}}},
        "data": {"class_path": "canon_pl.training.DecoderRowsDataModule",
                 "init_args": {"base_sae": str(tmp_path / "base"), "batch_size": 64, "val_batch_size": 256}},
    }
    _ok(launch(tmp_path, config, "ddp_cpu_sim", timeout=240))
    assert (tmp_path / "meta" / "sae.safetensors").is_file() and (tmp_path / "meta" / "analysis.json").is_file()


def test_bad_data_on_one_rank_stops_every_rank_with_the_same_clear_error(tmp_path: Path) -> None:
    from canon_pl.data import write_activation_shards

    rows = torch.randn(300, 16)
    rows[120:140] = float("nan")  # in the second training shard, which rank 1 reads
    write_activation_shards(iter([rows]), tmp_path / "cache", tokens_per_shard=100, dtype="float32")
    config = {"seed_everything": 0,
              "trainer": {"max_steps": 5, "limit_val_batches": 0, "enable_progress_bar": False, "logger": False,
                          "enable_checkpointing": False, "default_root_dir": str(tmp_path / "run")},
              "model": {"class_path": "canon_pl.training.SAEModule", "init_args": {"d_in": 16, "d_sae": 32, "sae": {"k": 2}}},
              "data": {"class_path": "canon_pl.training.ActivationShardDataModule",
                       "init_args": {"path": str(tmp_path / "cache"), "batch_size": 50, "shards_in_memory": 1}}}
    result = launch(tmp_path, config, "ddp_cpu_sim", timeout=240)
    assert result.returncode == 2
    message = "training batch 0 on rank 1 has NaN/Inf activations in 9 of 50 tokens"
    assert result.stderr.count(message) == 2, result.stderr[-2000:]  # rank 0 and rank 1 alike
    assert "Connection closed by peer" not in result.stderr
