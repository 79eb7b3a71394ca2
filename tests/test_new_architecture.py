"""A researcher adds an SAE architecture in one file of their own and trains it through the command line: no edit to
canon-pl. The file subclasses ``SparseAutoencoder`` (its ``select``) and ``SAESettings`` (its own hyper-parameter);
defining them registers both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli, run_here

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
        return pre * (pre > self.cfg.threshold)
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
    assert cfg["architecture"] == "toy_threshold" and cfg["threshold"] == 0.25 and "options" not in cfg

    check = """
import sys, torch
import toy_threshold
from canon_pl import load_sae
sae = load_sae(sys.argv[1])
pre = sae.pre_activations(torch.randn(128, 16) * 3)
acts = sae.encode(torch.randn(128, 16) * 3)
assert type(sae).__name__ == "ThresholdSAE" and sae.cfg.threshold == 0.25
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
    assert "architecture 'toy_threshold' is not built in and no installed package declares it" in unknown.stderr
    assert "canon_pl.architectures" in unknown.stderr and "trust_code=True" in unknown.stderr


def test_settings_of_one_architecture_refuse_another_ones_hyper_parameters(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sae:`` checks its keys against the architecture it names: a ReLU SAE given ``k`` is refused before any
    work, naming the settings class."""
    monkeypatch.chdir(tmp_path)
    result = run_here("fit", "--config", str(Path(__file__).parents[1] / "configs" / "sae_synthetic.yaml"),
                      "--model.init_args.sae", "ReLUSettings", "--model.init_args.sae.k", "8", capsys=capsys)
    assert result.returncode != 0
    assert "k" in result.stderr and "ReLUSettings" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


GAIN_ARCHITECTURE = '''
"""A ReLU SAE whose latents each learn an output gain: a tensor of its own, in one file."""
from dataclasses import dataclass

import torch
from torch import nn

from canon_pl.sae import SAESettings, SparseAutoencoder


@dataclass(frozen=True)
class GainSettings(SAESettings):
    architecture = "toy_gain"
    gain_l1: float = 1.0
    """Weight of the L1 penalty on the activations."""


class GainSAE(SparseAutoencoder):
    architecture = "toy_gain"
    latent_axes = {**SparseAutoencoder.latent_axes, "gain": 0}

    def init_encoder_state(self):
        super().init_encoder_state()
        self.gain = nn.Parameter(torch.zeros(self.cfg.d_sae))

    def _pre_activations(self, x):
        return torch.relu(torch.addmm(self.encoder_bias(), x, self.W_enc)) * self.gain.exp()

    def select(self, pre, inference):
        return pre

    def sparsity_losses(self, acts):
        return {"l1": self.cfg.gain_l1 * acts.sum(dim=-1).mean() / self.d_in}
'''

GAIN_FAMILY = """
seed_everything: 0
trainer:
  max_steps: 12
  val_check_interval: 12
  check_val_every_n_epoch: null
  num_sanity_val_steps: 0
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: run
  callbacks:
    - class_path: canon_pl.training.SAEExportCallback
model:
  class_path: canon_pl.training.SAEFamilyModule
  init_args:
    d_in: 576
    widths: [64, 128]
    sae:
      class_path: toy_gain.GainSettings
      init_args:
        gain_l1: 0.5
        dead_tokens_threshold: 2000
    optimizer:
      lr: 0.003
data:
  class_path: canon_pl.training.ActivationDataModule
  init_args:
    model: smollm2-135m
    hook_point: model.layers.6
    text: pydoc-topics
    context_length: 128
    contexts_per_forward: 8
    block_contexts: 16
    batch_size: 256
    val_contexts: 4
    seed: 0
"""


def declare_architecture(folder: Path, name: str, module: str) -> None:
    """What ``pip install`` of a package declaring ``name = module`` under ``[project.entry-points."canon_pl.
    architectures"]`` leaves on the path: a dist-info folder with the entry point."""
    info = folder / "toy_architectures-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-architectures\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[canon_pl.architectures]\n{name} = {module}\n")


def test_an_architecture_with_a_tensor_of_its_own_trains_as_a_family_exports_stitches_and_gets_statistics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The whole path a new architecture takes, on the bundled model: nothing in canon-pl names it or its tensor.
    Trained by ``lightning fit`` in a process of its own; stitched and described by the canon-pl commands here, which
    import its module from what the export records."""
    import torch
    from safetensors.torch import load_file

    from canon_pl import load_family
    from canon_pl.cli import main
    from canon_pl.stats import LatentStatistics
    from canon_pl.stitching import read_stitching_results

    (tmp_path / "toy_gain.py").write_text(GAIN_ARCHITECTURE)
    (tmp_path / "family.yaml").write_text(GAIN_FAMILY)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    fit = run_cli("fit", "--config", "family.yaml", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "run"
    # the researcher's package declares its architecture (entry-point group canon_pl.architectures), as an installed
    # package's metadata does: loading finds it there, never through the module name the export records
    declare_architecture(tmp_path, "toy_gain", "toy_gain")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["stitch", str(run), "--data", "pydoc-topics", "--tokens", "512"]) == 0
    assert "64 -> 128" in capsys.readouterr().out
    assert main(["stats", "--run", str(run), "--tokens", "256", "--top", "2", "--samples", "2",
                 "--contexts_per_forward", "4"]) == 0

    family = load_family(run)
    wide = family.saes[128]
    assert type(wide).__name__ == "GainSAE" and set(load_file(str(run / "128" / "sae.safetensors"))) >= {"gain"}
    assert not torch.equal(wide.gain, torch.zeros(128)), "the gain trained"
    summary = read_stitching_results(run / "stitching" / "64_128.json")
    assert summary["n_tokens"] == 512 and 0.0 <= summary["novel_fraction"] <= 1.0
    assert sorted(LatentStatistics.open(run / "stats").members) == ["128", "64"]


def test_loading_a_crafted_export_never_imports_the_module_it_names(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An export edited to name an unknown architecture and a module with an import side effect: load_sae and a
    canon-pl command refuse it with one error naming both ways to allow it, and the module never runs; with the
    trust the user gives (trust_code=True, canon-pl --trust-code), it does."""
    from canon_pl import load_sae
    from canon_pl.io import CheckpointError, export_sae
    from canon_pl.sae import BatchTopKSettings, initial_sae

    marker = tmp_path / "side_effect_ran"
    (tmp_path / "side_effect.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the commands below could import it too
    export = tmp_path / "export"
    export_sae(initial_sae(BatchTopKSettings(k=2).sae_config(8, 16), 0), export)
    cfg = json.loads((export / "cfg.json").read_text())
    cfg["sae"]["architecture"], cfg["architecture_module"] = "crafted", "side_effect"
    (export / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as refused:
        load_sae(export)
    said = str(refused.value)
    assert "'crafted'" in said and "canon_pl.architectures" in said and "trust_code=True" in said, said
    assert "'side_effect'" in said and not marker.exists()
    command = run_cli("stitch", str(export), str(export), "--data", "pydoc-topics", cwd=tmp_path, script="canon-pl")
    assert command.returncode == 2 and "--trust-code" in command.stderr and "Traceback" not in command.stderr, \
        command.stderr[-2000:]
    assert not marker.exists()
    trusted = run_cli("--trust-code", "stitch", str(export), str(export), "--data", "pydoc-topics", cwd=tmp_path,
                      script="canon-pl")
    assert trusted.returncode == 2 and marker.read_text() == "ran"  # imported; it registers nothing called 'crafted'
    marker.unlink()
    with pytest.raises(CheckpointError, match="crafted"):
        load_sae(export, trust_code=True)
    assert marker.read_text() == "ran"
