"""`lightning fit` killed with SIGKILL at a random step and resumed from its last checkpoint ends with the same
weights as an uninterrupted run (token SAE, family, meta-SAE), and the checkpoints written before the kill are intact.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from canon_pl import load_sae
from canon_pl.io import export_sae
from canon_pl.sae import SAEConfig, build_sae
from tests.helpers import BIN, REPO

STEPS = 12
EVERY = 2
SYNTHETIC = {"class_path": "canon_pl.training.SyntheticActivationDataModule",
             "init_args": {"d_in": 32, "n_features": 64, "active_per_token": 3.0, "batch_size": 256,
                           "val_batches": 1, "seed": 0}}
RUNS = {
    "token SAE": ({"class_path": "canon_pl.training.SAEModule",
                   "init_args": {"d_in": 32, "d_sae": 64, "sae": {"k": 3, "aux_k": 16, "dead_tokens_threshold": 512},
                                 "optimizer": {"lr": 3e-3}}}, SYNTHETIC, None),
    "family": ({"class_path": "canon_pl.training.SAEFamilyModule",
                "init_args": {"d_in": 32, "widths": [32, 64, 128],
                              "sae": {"k": 3, "aux_k": 16, "dead_tokens_threshold": 512}}}, SYNTHETIC, 128),
    "meta-SAE": ({"class_path": "canon_pl.training.MetaSAEModule", "init_args": {"d_in": 32, "d_sae": 12, "sae": {"k": 2}}},
                 {"class_path": "canon_pl.training.DecoderRowsDataModule",
                  "init_args": {"base_sae": "BASE", "batch_size": 64, "val_batch_size": 256}}, None),
}


def fit(root: Path, model: dict, data: dict, extra_callbacks: list[dict], ckpt_path: Path | None = None,
        ) -> subprocess.CompletedProcess:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": STEPS, "val_check_interval": STEPS,
                    "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "logger": False,
                    "enable_progress_bar": False, "default_root_dir": str(root),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "save_last": True, "save_top_k": -1,
                                                 "every_n_train_steps": EVERY}}, *extra_callbacks]},
        "model": model, "data": data,
    }
    (root / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    args = [str(BIN / "lightning"), "fit", "--config", str(root / "config.yaml")]
    if ckpt_path is not None:
        args += ["--ckpt_path", str(ckpt_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=600, env=env)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.ckpt"))}


@pytest.mark.parametrize("kind", list(RUNS))
def test_a_run_killed_at_a_random_step_resumes_to_the_same_weights(tmp_path: Path, kind: str) -> None:
    model, data, width = RUNS[kind]
    if data["init_args"].get("base_sae") == "BASE":
        base = build_sae(SAEConfig(d_in=32, d_sae=200, architecture="relu"))
        export_sae(base, tmp_path / "base")
        data = {**data, "init_args": {**data["init_args"], "base_sae": str(tmp_path / "base")}}
    whole = fit(tmp_path / "whole", model, data, [])
    assert whole.returncode == 0, whole.stderr[-3000:]

    die_at = random.Random(kind).randrange(EVERY + 1, STEPS)
    killed = fit(tmp_path / "killed", model, data, [
        {"class_path": "tests.reliability.faults.KillAtStep", "init_args": {"step": die_at}}])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = tmp_path / "killed" / "ckpt"
    before = snapshot(ckpt)
    assert "last.ckpt" in before
    written = load_sae(ckpt / "last.ckpt", width=width)  # the newest checkpoint survived the kill whole
    assert not list(ckpt.glob("*.tmp*")) and not list(ckpt.glob(".*"))

    resumed = fit(tmp_path / "killed", model, data, [], ckpt_path=ckpt / "last.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = snapshot(ckpt)
    assert all(after[name] == content for name, content in before.items() if name != "last.ckpt")
    final = load_sae(ckpt / "last.ckpt", width=width).state_dict()
    reference = load_sae(tmp_path / "whole" / "ckpt" / "last.ckpt", width=width).state_dict()
    assert torch.load(ckpt / "last.ckpt", weights_only=True)["global_step"] == STEPS
    for name, value in reference.items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-6, msg=f"{kind}: {name} differs")
    assert any(not torch.equal(written.state_dict()[n], v) for n, v in reference.items())  # it did train on
