"""A researcher adds an SAE architecture in one file of their own and trains it through the command line: no edit to
canon-pl. The file subclasses ``SparseAutoencoder`` (its ``select``) and ``SAESettings`` (its own hyper-parameter);
defining them registers both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli

TOY_ARCHITECTURE = '''
"""A threshold SAE: every pre-activation above a fixed threshold survives."""
from dataclasses import dataclass

from canon_pl.sae import SAESettings, SparseAutoencoder


@dataclass(frozen=True)
class ThresholdSettings(SAESettings):
    architecture = "toy_threshold"
    threshold: float = 0.5
    """Pre-activations at or below this are zeroed."""


class ThresholdSAE(SparseAutoencoder):
    architecture = "toy_threshold"

    def select(self, pre, inference):
        return pre * (pre > self.cfg.options["threshold"])
'''

CONFIG = """
seed_everything: 0
trainer:
  max_steps: 30
  logger: false
  enable_checkpointing: false
  default_root_dir: run
  callbacks:
    - class_path: canon_pl.training.SAEExportCallback
model:
  class_path: canon_pl.training.SAEModule
  init_args:
    d_in: 16
    d_sae: 64
    sae:
      class_path: toy_threshold.ThresholdSettings
      init_args:
        threshold: 0.25
    optimizer:
      lr: 0.003
data:
  class_path: canon_pl.training.SyntheticActivationDataModule
  init_args:
    d_in: 16
    n_features: 32
    batch_size: 256
    val_batches: 1
"""


def test_an_architecture_in_one_file_trains_through_the_cli_and_its_export_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toy_threshold.py").write_text(TOY_ARCHITECTURE)
    (tmp_path / "toy.yaml").write_text(CONFIG)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = run_cli("fit", "--config", "toy.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = json.loads((tmp_path / "run" / "cfg.json").read_text())["sae"]
    assert cfg["architecture"] == "toy_threshold" and cfg["options"] == {"threshold": 0.25}

    check = """
import sys, torch
import toy_threshold
from canon_pl import load_sae
sae = load_sae(sys.argv[1])
pre = sae.pre_activations(torch.randn(128, 16) * 3)
acts = sae.encode(torch.randn(128, 16) * 3)
assert type(sae).__name__ == "ThresholdSAE" and sae.cfg.options["threshold"] == 0.25
assert bool(((acts == 0) | (acts > 0.25)).all()), "every surviving activation is above the threshold"
print("loaded")
"""
    loaded = subprocess.run([sys.executable, "-c", check, str(tmp_path / "run")], capture_output=True, text=True,
                            cwd=tmp_path)
    assert loaded.returncode == 0 and "loaded" in loaded.stdout, loaded.stderr[-3000:]

    # Without the defining module the export is refused with the fix, not mis-read as another architecture.
    monkeypatch.delenv("PYTHONPATH")
    unknown = subprocess.run([sys.executable, "-c", "import sys; from canon_pl import load_sae; load_sae(sys.argv[1])",
                              str(tmp_path / "run")], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert unknown.returncode != 0
    assert "unknown SAE architecture 'toy_threshold'" in unknown.stderr
    assert "import the module that defines it" in unknown.stderr


def test_settings_of_one_architecture_refuse_another_ones_hyper_parameters(tmp_path: Path) -> None:
    """``sae:`` checks its keys against the architecture it names: a ReLU SAE given ``k`` is refused before any
    work, naming the settings class."""
    result = run_cli("fit", "--config", str(Path(__file__).parents[1] / "configs" / "sae_synthetic.yaml"),
                     "--model.init_args.sae", "ReLUSettings", "--model.init_args.sae.k", "8", cwd=tmp_path)
    assert result.returncode != 0
    assert "k" in result.stderr and "ReLUSettings" in result.stderr
    assert not (tmp_path / "checkpoints").exists()
