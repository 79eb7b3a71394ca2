"""Training through Lightning: what a run produces, how it resumes, and how it fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canon_pl import load_sae
from canon_pl.training import (
    InputShapeError,
    NonFiniteError,
    SAEExportCallback,
    SAEModule,
    SyntheticActivationDataModule,
)
from tests.helpers import SMALL_DATA, SMALL_SAE, make_trainer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SAEModule, SyntheticActivationDataModule, Path]:
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    module = SAEModule(**SMALL_SAE)
    data = SyntheticActivationDataModule(**SMALL_DATA)
    trainer = make_trainer(root, max_steps=1000, callbacks=[SAEExportCallback()], val_check_interval=1000)
    trainer.fit(module, data)
    return module, data, root


def test_sae_recovers_the_true_directions_of_synthetic_data(trained_run) -> None:
    module, data, _ = trained_run
    assert data.source.recovered_fraction(module.sae.W_dec) >= 0.9


def test_inference_threshold_gives_l0_close_to_k(trained_run) -> None:
    module, data, _ = trained_run
    x = data.source.batch(-5, 4096) * module.activation_scale
    l0 = (module.sae.encode(x, inference=True) > 0).sum(dim=1).float().mean().item()
    assert abs(l0 - SMALL_SAE["k"]) / SMALL_SAE["k"] < 0.2


def test_export_reproduces_the_trained_module_on_raw_activations(trained_run) -> None:
    module, data, root = trained_run
    assert (root / "sae.safetensors").is_file() and (root / "cfg.json").is_file()
    sae = load_sae(root)
    x = data.source.batch(-7, 512)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(sae(x), module.reconstruct(x), atol=1e-5)
        assert torch.allclose(sae.encode(x, inference=True),
                              module.sae.encode(x * module.activation_scale, inference=True) / module.activation_scale,
                              atol=1e-5)
    assert abs(float(module.activation_scale) - 1.0) > 0.01  # the fold was not a no-op


def test_validation_logs_explained_variance_and_l0(trained_run, tmp_path: Path) -> None:
    module, data, _ = trained_run
    trainer = make_trainer(tmp_path, max_steps=1)
    (metrics,) = trainer.validate(module, data, verbose=False)
    assert metrics["val/explained_variance"] > 0.8
    assert 0 < metrics["val/l0"] < 2 * SMALL_SAE["k"]
    assert metrics["val/explained_variance"] == pytest.approx(1 - metrics["val/fvu"], abs=1e-6)


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path: Path) -> None:
    kw = dict(SMALL_SAE, d_sae=64)
    torch.manual_seed(1)
    straight = SAEModule(**kw)
    make_trainer(tmp_path / "a", max_steps=12, every_n_steps=6).fit(straight, SyntheticActivationDataModule(**SMALL_DATA))

    torch.manual_seed(2)  # different init: everything must come from the checkpoint
    resumed = SAEModule(**kw)
    data = SyntheticActivationDataModule(**SMALL_DATA)
    ckpt = tmp_path / "a" / "ckpt" / "epoch=0-step=6.ckpt"
    make_trainer(tmp_path / "b", max_steps=12).fit(resumed, data, ckpt_path=ckpt, weights_only=True)
    assert data.train_batches_consumed == 12
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


class _PoisonedData(SyntheticActivationDataModule):
    """Yields a batch that overflows the loss at position ``poison_at``."""

    def __init__(self, poison_at: int, value: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison_at, self.value = poison_at, value

    def train_batches(self, start: int):
        for position, batch in super().train_batches(start):
            if position - 1 == self.poison_at:
                batch = batch.clone()
                batch[0, 0] = self.value
            yield position, batch


@pytest.mark.parametrize("value, message", [(float("nan"), "NaN/Inf activations"), (1e30, "SAE became non-finite at step 5")])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, value: float, message: str) -> None:
    module = SAEModule(**dict(SMALL_SAE, d_sae=64))
    data = _PoisonedData(poison_at=5, value=value, **SMALL_DATA)
    trainer = make_trainer(tmp_path, max_steps=20, every_n_steps=2, callbacks=[SAEExportCallback()])
    with pytest.raises(NonFiniteError, match=message):
        trainer.fit(module, data)
    good = tmp_path / "ckpt" / "last.ckpt"
    sae = load_sae(good)
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    assert torch.load(good, weights_only=True)["global_step"] == 4
    assert not (tmp_path / "sae.safetensors").exists()  # no export from a failed run


def test_d_in_mismatch_fails_before_training(tmp_path: Path) -> None:
    module = SAEModule(**dict(SMALL_SAE, d_in=32))
    with pytest.raises(InputShapeError, match="d_in: 48"):
        make_trainer(tmp_path, max_steps=5, every_n_steps=1).fit(module, SyntheticActivationDataModule(**SMALL_DATA))
    assert not (tmp_path / "ckpt").exists()


def test_relu_sae_warms_its_l1_penalty_up_and_trains_without_auxk(tmp_path: Path) -> None:
    """ReLU + L1 as in the literature: the L1 weight rises linearly over ``l1_warmup_steps`` (latents move before the
    penalty silences them) and AuxK is off unless asked for; the TopK family keeps AuxK at 1/32."""
    module = SAEModule(d_in=16, d_sae=32, architecture="relu", l1_coefficient=2.0, l1_warmup_steps=10)
    assert module.sae.cfg.aux_coefficient == 0.0 and SAEModule(d_in=16, d_sae=32).sae.cfg.aux_coefficient == 1 / 32
    assert module.sparsity_scale() == pytest.approx(0.1)  # step 0 of 10
    x = torch.rand(64, 16)
    early, full = module.sae.training_forward(x, sparsity_scale=0.1), module.sae.training_forward(x)
    torch.testing.assert_close(early.losses["l1"] * 10, full.losses["l1"])
    torch.testing.assert_close(early.losses["mse"], full.losses["mse"])
    make_trainer(tmp_path, max_steps=12).fit(module, SyntheticActivationDataModule(d_in=16, n_features=32))
    assert module.sparsity_scale() == 1.0 and "auxk" not in module.sae.training_forward(x).losses


@pytest.mark.parametrize("bad, message", [({"lr": -1e-3}, "lr must be a positive number"),
                                          ({"lr": float("nan")}, "lr must be a positive number"),
                                          ({"l1_coefficient": float("nan")}, "l1_coefficient must be a finite"),
                                          ({"l1_warmup_steps": -5}, "l1_warmup_steps must be >= 0")])
def test_a_bad_training_setting_is_refused_when_the_module_is_built(bad: dict, message: str) -> None:
    from canon_pl.sae import SAEConfigError

    with pytest.raises(SAEConfigError, match=message):
        SAEModule(d_in=16, d_sae=32, architecture="relu", **bad)


def test_an_sae_without_encoder_bias_keeps_it_at_zero_through_training_and_export(tmp_path: Path) -> None:
    module = SAEModule(d_in=16, d_sae=32, k=4, encoder_bias=False)
    make_trainer(tmp_path, max_steps=5, callbacks=[SAEExportCallback()]).fit(
        module, SyntheticActivationDataModule(d_in=16, n_features=32))
    loaded = load_sae(tmp_path)
    assert not loaded.cfg.encoder_bias and torch.count_nonzero(loaded.b_enc) == 0
    assert "b_enc" not in dict(loaded.named_parameters())
