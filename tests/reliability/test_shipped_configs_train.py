"""The README's first training command and every shipped config that reads the bundled model live train from a
fresh clone for a couple of steps, with their loggers on: `make sae` once stopped before its first step
(Lightning refused the module's and the DataModule's hparams: the module adopted the data's hook point but logged
``None``), unnoticed because every other test trained from a cache."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from canon_pl import load_sae
from tests.helpers import REPO, run_cli

# Two steps and no validation (the hparams conflict stopped the fit before its first step; validating three widths
# at three hook points with their stitching callback would cost a minute here, and runs in the multi-hook tests).
TINY_LIVE = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "1000", "--trainer.log_every_n_steps", "1",
             "--data.init_args.text", "pydoc-topics", "--data.init_args.block_contexts", "16",
             "--data.init_args.contexts_per_forward", "8", "--data.init_args.val_contexts", "4",
             "--data.init_args.batch_size", "256"]


@pytest.mark.parametrize("config", ["sae_smollm2.yaml", "family_smollm2_hooks.yaml"])
def test_a_live_model_config_trains_with_its_logger_as_shipped(config: str, tmp_path: Path) -> None:
    shipped = yaml.safe_load((REPO / "configs" / config).read_text())
    assert shipped["trainer"].get("logger"), "the shipped config logs (the conflict only showed with a logger)"
    assert "hook_point" not in shipped["model"]["init_args"]  # stated once, under data: the module adopts it
    run = tmp_path / "run"
    result = run_cli("fit", "--config", str(REPO / "configs" / config), "--trainer.default_root_dir", str(run),
                     *TINY_LIVE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Error while merging hparams" not in result.stderr
    exports = [p.parent for p in run.rglob("cfg.json")]
    assert exports, sorted(str(p) for p in run.rglob("*"))[:20]
    for export in exports:
        assert load_sae(export).cfg.hook_point.startswith("model.layers.")  # the data's, recorded in every export
    metrics = next(run.rglob("metrics.csv"))
    with open(metrics) as handle:
        rows = list(csv.DictReader(handle))
    assert rows and any(row.get("step") == "1" for row in rows)
    hparams = next(run.rglob("hparams.yaml")).read_text()
    assert "hook_point: null" not in hparams


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2,048-token activation cache of pydoc-topics from the bundled model, captured as the README's `make main`
    captures its own (`canon-pl cache` on the shipped capture config)."""
    root = tmp_path_factory.mktemp("cache")
    capture = yaml.safe_load((REPO / "configs" / "sae_smollm2.yaml").read_text())
    capture["data"]["init_args"].update({"text": "pydoc-topics", "batch_size": 256, "block_contexts": 16,
                                         "contexts_per_forward": 8})
    (root / "capture.yaml").write_text(yaml.safe_dump(capture))
    result = run_cli("cache", "--config", str(root / "capture.yaml"), "--out", str(root / "cache"), "--tokens",
                     "2048", "--val_tokens", "512", cwd=root, script="canon-pl")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "cache"


@pytest.mark.parametrize("config", ["family_smollm2_relu.yaml"])
def test_a_cache_config_trains_as_shipped(config: str, small_cache: Path, tmp_path: Path) -> None:
    """The study's ReLU + L1 arm trains for two steps on a cache as shipped, its callbacks and logger on; only the
    cache's path, the batch and the step counts are shrunk, and no validation runs in two steps (the stitching
    callback's analysis of three widths would take minutes here; it runs in tests/test_pipeline.py, where
    `family_smollm2.yaml` trains shrunk alike)."""
    run = tmp_path / "run"
    result = run_cli("fit", "--config", str(REPO / "configs" / config), "--trainer.default_root_dir", str(run),
                     "--trainer.max_steps", "2", "--trainer.val_check_interval", "1000", "--trainer.log_every_n_steps",
                     "1", "--data.init_args.path", str(small_cache), "--data.init_args.batch_size", "256",
                     "--data.init_args.shards_in_memory", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exports = sorted(p.parent for p in tmp_path.rglob("cfg.json"))
    assert len(exports) >= 3, [str(p) for p in tmp_path.rglob("*")][:30]  # every width of the family, exported
    assert all(load_sae(e).cfg.hook_point == "model.layers.6" for e in exports)
