"""Loading and saving SAEs: round trips, and one clear error for every kind of bad file."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from canon_pl import CheckpointError, export_sae, load_sae
from canon_pl.io import atomic_path, atomic_write_json
from canon_pl.sae import SAEConfig, build_sae


@pytest.fixture
def exported(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    sae = build_sae(SAEConfig(d_in=12, d_sae=40, k=3, hook_point="model.layers.3", model_id="toy"))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    sae.threshold.fill_(0.25)
    sae.threshold_initialized.fill_(True)
    return sae, export_sae(sae, tmp_path / "export", activation_scale=2.0)


def test_export_round_trip_takes_raw_activations(exported) -> None:
    sae, directory = exported
    loaded = load_sae(directory)
    x = torch.randn(16, 12) * 5
    assert torch.allclose(loaded(x), sae(x * 2.0) / 2.0, atol=1e-5)
    assert loaded.cfg.hook_point == "model.layers.3" and loaded.cfg.model_id == "toy"
    cfg = json.loads((directory / "cfg.json").read_text())
    assert cfg["canon_pl_version"] and cfg["activation_scale_folded"] == 2.0
    assert torch.allclose(load_sae(directory / "sae.safetensors")(x), loaded(x))


def test_truncated_weights_are_detected(exported) -> None:
    _, directory = exported
    weights = directory / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="checksum"):
        load_sae(directory)


def test_corrupt_weights_without_checksum_are_reported_as_unreadable(exported) -> None:
    _, directory = exported
    cfg = json.loads((directory / "cfg.json").read_text())
    del cfg["weights_sha256"]
    (directory / "cfg.json").write_text(json.dumps(cfg))
    (directory / "sae.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_sae(directory)


def test_unknown_files_are_refused_naming_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 768, "d_sae": 24576}))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"not an SAE canon-pl recognises \(files: \['cfg.json', 'weights.bin'\]"):
        load_sae(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")  # now SAELens files: forcing our format says why not
    with pytest.raises(CheckpointError, match="not a canon-pl export"):
        load_sae(tmp_path, format="canon_pl")


def test_unknown_config_keys_fail_loudly(exported) -> None:
    _, directory = exported
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg["sae"]["jump_relu_bandwidth"] = 0.001
    (directory / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown SAE config keys"):
        load_sae(directory)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _Payload()}, bad)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_sae(bad)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_garbage_ckpt_and_missing_paths_get_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.ckpt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_sae(tmp_path / "broken.ckpt")
    torch.save({"model": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a canon-pl SAEModule checkpoint"):
        load_sae(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sae(tmp_path / "nowhere")


def test_failed_atomic_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "half')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_pickle_module_is_not_used_for_exports(exported) -> None:
    _, directory = exported
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads((directory / "sae.safetensors").read_bytes())
