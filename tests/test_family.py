"""A family of widths on one stream: members train as they would alone, and export a manifest later tools read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from canon_pl import CheckpointError, load_family, load_sae
from canon_pl.sae import SAEConfigError
from canon_pl.training import SAEExportCallback, SAEFamilyModule, SAEModule, SyntheticActivationDataModule
from tests.helpers import SMALL_DATA, make_trainer

FAMILY = dict(d_in=48, k=3, lr=3e-3, aux_k=16, dead_tokens_threshold=5_000, init_seed=7)


@pytest.fixture(scope="module")
def family_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SAEFamilyModule, Path]:
    root = tmp_path_factory.mktemp("family")
    module = SAEFamilyModule(widths=[48, 96, 192], base_width=48, **FAMILY)
    trainer = make_trainer(root, max_steps=150, val_check_interval=150, callbacks=[SAEExportCallback()])
    trainer.fit(module, SyntheticActivationDataModule(**SMALL_DATA))
    return module, root


def test_members_equal_separate_training_with_the_same_seed_and_data(family_run, tmp_path: Path) -> None:
    family, _ = family_run
    alone = SAEModule(d_sae=96, **FAMILY)
    make_trainer(tmp_path, max_steps=150).fit(alone, SyntheticActivationDataModule(**SMALL_DATA))
    member = family.members["96"]
    for name, value in alone.sae.state_dict().items():
        assert torch.allclose(value.float(), member.state_dict()[name].float(), atol=1e-5), name


def test_family_exports_each_width_and_a_manifest(family_run) -> None:
    family, root = family_run
    manifest = json.loads((root / "family.json").read_text())
    assert manifest["widths"] == [48, 96, 192] and manifest["tokens"] == 150 * SMALL_DATA["batch_size"]
    loaded = load_family(root)
    assert loaded.widths == [48, 96, 192]
    x = torch.randn(16, 48)
    family.eval()
    for width, sae in loaded.saes.items():
        assert sae.d_sae == width
        assert torch.allclose(sae(x), family.reconstruct(x, width), atol=1e-5)
    assert torch.allclose(load_sae(root, width=96)(x), loaded.saes[96](x))
    with pytest.raises(CheckpointError, match=r"family of widths \[48, 96, 192\]"):
        load_sae(root)


def test_family_logs_metrics_per_width(family_run) -> None:
    family, _ = family_run
    metrics = family.trainer.callback_metrics
    for width in (48, 96, 192):
        assert f"{width}/train/fvu" in metrics and f"{width}/val/explained_variance" in metrics
        assert metrics[f"{width}/val/explained_variance"] > 0.3  # every member learned


def test_family_checkpoint_member_loads_by_width(family_run, tmp_path: Path) -> None:
    family, _ = family_run
    path = tmp_path / "family.ckpt"
    family.trainer.save_checkpoint(path)
    x = torch.randn(8, 48)
    assert torch.allclose(load_sae(path, width=192)(x), family.reconstruct(x, 192), atol=1e-5)
    with pytest.raises(CheckpointError, match="pass width"):
        load_sae(path)


def test_viewer_lists_family_members_with_their_metrics(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from canon_pl.viewer import find_runs

    run = tmp_path / "fam"
    trainer = make_trainer(run, max_steps=10, val_check_interval=10, log_every_n_steps=5,
                           callbacks=[SAEExportCallback()])
    trainer.loggers = [CSVLogger(save_dir=run, name="logs")]
    trainer.fit(SAEFamilyModule(widths=[48, 144], **FAMILY), SyntheticActivationDataModule(**SMALL_DATA))
    found = find_runs(tmp_path)
    assert [r.name for r in found] == ["fam/48", "fam/144"]  # width order, not string order
    assert "val/explained_variance" in found[1].final_metrics


@pytest.mark.parametrize("widths, base, message", [
    ([96, 48], None, "strictly increasing"),
    ([48, 100], 48, r"\[100\] are not multiples of base_width=48"),
])
def test_bad_family_widths_get_a_clear_error(widths: list[int], base: int | None, message: str) -> None:
    with pytest.raises(SAEConfigError, match=message):
        SAEFamilyModule(widths=widths, base_width=base, **FAMILY)
