"""Training through Lightning: what a run produces, how it resumes, and how it fails."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from canon_pl import load_sae
from canon_pl.sae import BatchTopKSettings, ReLUSettings
from canon_pl.training import (
    InputShapeError,
    NonFiniteError,
    OptimizerSettings,
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
    assert abs(l0 - SMALL_SAE["sae"].k) / SMALL_SAE["sae"].k < 0.2


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
    assert 0 < metrics["val/l0"] < 2 * SMALL_SAE["sae"].k
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
    module = SAEModule(d_in=16, d_sae=32, sae=ReLUSettings(l1_coefficient=2.0, l1_warmup_steps=10))
    assert module.sae.cfg.aux_coefficient == 0.0 and SAEModule(d_in=16, d_sae=32).sae.cfg.aux_coefficient == 1 / 32
    assert module.sparsity_scale() == pytest.approx(0.1)  # step 0 of 10
    x = torch.rand(64, 16)
    early, full = module.sae.training_forward(x, sparsity_scale=0.1), module.sae.training_forward(x)
    torch.testing.assert_close(early.losses["l1"] * 10, full.losses["l1"])
    torch.testing.assert_close(early.losses["mse"], full.losses["mse"])
    make_trainer(tmp_path, max_steps=12).fit(module, SyntheticActivationDataModule(d_in=16, n_features=32))
    assert module.sparsity_scale() == 1.0 and "auxk" not in module.sae.training_forward(x).losses


@pytest.mark.parametrize("settings, message", [
    (dict(optimizer={"lr": -1e-3}), "optimizer.lr must be a positive number"),
    (dict(optimizer={"lr": float("nan")}), "optimizer.lr must be a positive number"),
    (dict(sae={"architecture": "relu", "l1_coefficient": float("nan")}), "l1_coefficient must be a finite"),
    (dict(sae={"architecture": "relu", "l1_warmup_steps": -5}), "l1_warmup_steps must be a whole number >= 0"),
    (dict(sae={"architecture": "relu", "k": 4}), "ReLUSettings has no setting k"),
    (dict(sae={"architecture": "transcoder"}), "no trainable SAE architecture 'transcoder'"),
])
def test_a_bad_training_setting_is_refused_when_the_module_is_built(settings: dict, message: str) -> None:
    """Settings as a checkpoint or a notebook gives them (plain dicts) are checked as the module is built."""
    from canon_pl.errors import CanonError

    with pytest.raises(CanonError, match=message):
        SAEModule(d_in=16, d_sae=32, **settings)


def test_an_sae_without_encoder_bias_keeps_it_at_zero_through_training_and_export(tmp_path: Path) -> None:
    module = SAEModule(d_in=16, d_sae=32, sae=BatchTopKSettings(k=4, encoder_bias=False))
    make_trainer(tmp_path, max_steps=5, callbacks=[SAEExportCallback()]).fit(
        module, SyntheticActivationDataModule(d_in=16, n_features=32))
    loaded = load_sae(tmp_path)
    assert not loaded.cfg.encoder_bias and torch.count_nonzero(loaded.b_enc) == 0
    assert "b_enc" not in dict(loaded.named_parameters())


def test_the_fit_time_breakdown_accounts_for_every_second_of_the_fit(tmp_path: Path) -> None:
    """`<run>/fit_time.json` splits the fit into data, SAE steps, validation, checkpoint writes and the rest: each
    part non-negative, together the whole fit, and the pipeline shows them under its fit row."""
    from canon_pl.commands.pipeline import stage_table
    from canon_pl.training import FitTimeBreakdown
    from canon_pl.training.timing import PARTS, read_fit_time

    trainer = make_trainer(tmp_path, max_steps=20, every_n_steps=5, val_check_interval=10,
                           check_val_every_n_epoch=None, callbacks=[FitTimeBreakdown()])
    trainer.fit(SAEModule(d_in=48, d_sae=96, sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**SMALL_DATA))
    record = read_fit_time(tmp_path)
    assert record is not None and record["steps"] == 20
    seconds = record["seconds"]
    assert all(seconds[part] >= 0 for part in PARTS)
    assert seconds["sae_steps"] > 0 and seconds["validation"] > 0 and seconds["checkpointing"] > 0
    assert sum(seconds.values()) == pytest.approx(record["total"], abs=0.05)
    table = stage_table({"fit": record["total"], "report": 1.0}, record["total"] + 1.0, record)
    assert "of which (share of the fit)" in table and "checkpoint writes" in table and "SAE steps" in table


class RecordLearningRate(L.Callback):
    """The learning rate each optimizer step uses, by global step; stops the run at ``stop_at`` if given."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.rates: dict[int, float] = {}
        self.stop_at = stop_at

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.rates[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True


SCHEDULE = dict(optimizer=OptimizerSettings(lr=1e-3, warmup_steps=4, decay="cosine", decay_steps=6, final_fraction=0.1))


def test_the_learning_rate_warms_up_then_decays_as_the_formula_says(tmp_path: Path) -> None:
    record = RecordLearningRate()
    make_trainer(tmp_path, max_steps=20, callbacks=[record]).fit(SAEModule(d_in=48, d_sae=96, **SCHEDULE,
                                                                           sae=BatchTopKSettings(k=3)),
                                                                 SyntheticActivationDataModule(**SMALL_DATA))
    expected = {0: 0.25e-3, 1: 0.5e-3, 3: 1e-3, 10: 1e-3, 13: 1e-3, 19: 1e-4,
                16: 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 6))}  # step 16: half-way down the cosine
    assert sorted(record.rates) == list(range(20))
    for step, rate in expected.items():
        assert record.rates[step] == pytest.approx(rate, rel=1e-6), step
    linear = RecordLearningRate()
    make_trainer(tmp_path / "linear", max_steps=10, callbacks=[linear]).fit(
        SAEModule(d_in=48, d_sae=96,
                  sae=BatchTopKSettings(k=3),
                  optimizer=OptimizerSettings(lr=1e-3, decay="linear", decay_steps=5, final_fraction=0.0)),
        SyntheticActivationDataModule(**SMALL_DATA))
    assert [round(linear.rates[s] / 1e-3, 6) for s in range(10)] == [1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0.0]


def test_a_resumed_run_continues_the_schedule_at_the_step_it_stopped(tmp_path: Path) -> None:
    whole, first, resumed = RecordLearningRate(), RecordLearningRate(stop_at=12), RecordLearningRate()
    data = dict(SMALL_DATA)
    make_trainer(tmp_path / "whole", max_steps=20, callbacks=[whole]).fit(
        SAEModule(d_in=48, d_sae=96, **SCHEDULE, sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**data))
    make_trainer(tmp_path, max_steps=20, every_n_steps=10, callbacks=[first]).fit(
        SAEModule(d_in=48, d_sae=96, **SCHEDULE, sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**data))
    make_trainer(tmp_path, max_steps=20, callbacks=[resumed]).fit(
        SAEModule(d_in=48, d_sae=96, **SCHEDULE, sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**data),
        ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt"))
    assert sorted(resumed.rates) == list(range(10, 20))
    assert resumed.rates == {step: whole.rates[step] for step in range(10, 20)}


@pytest.mark.parametrize("bad, message", [
    ({"decay": "cosine"}, "optimizer.decay 'cosine' needs optimizer.decay_steps > 0"),
    ({"decay": "exponential", "decay_steps": 5}, "optimizer.decay must be one of constant, linear, cosine"),
    ({"warmup_steps": -1}, "optimizer.warmup_steps must be a whole number >= 0"),
    ({"final_fraction": 2.0, "decay": "linear", "decay_steps": 5}, "optimizer.final_fraction must lie in"),
])
def test_a_bad_schedule_is_refused_when_the_module_is_built(bad: dict, message: str) -> None:
    from canon_pl.errors import SettingError

    with pytest.raises(SettingError, match=message):
        SAEModule(d_in=16, d_sae=32, optimizer=OptimizerSettings(**bad))


def test_a_schedule_longer_than_the_run_is_refused_before_training(tmp_path: Path) -> None:
    from canon_pl.errors import SettingError

    longer = SAEModule(d_in=48, d_sae=96, sae=BatchTopKSettings(k=3),
                       optimizer=OptimizerSettings(warmup_steps=8, decay="linear", decay_steps=8))
    with pytest.raises(SettingError, match=r"optimizer.warmup_steps \(8\) \+ optimizer.decay_steps \(8\) exceed "
                                           r"trainer.max_steps \(10\)"):
        make_trainer(tmp_path, max_steps=10).fit(longer, SyntheticActivationDataModule(**SMALL_DATA))
