"""Meta-SAEs (docs/design.md 1.3): trained with the token-SAE core on decoder rows, they recover planted meta-directions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from canon_pl import load_sae
from canon_pl.io import export_sae
from canon_pl.meta import (
    MetaSAEError,
    analyze_meta_sae,
    decoder_rows,
    decompose,
    fit_meta_sae,
    random_unit_rows,
    read_meta_analysis,
    write_meta_analysis,
)
from canon_pl.sae import SAEConfig, build_sae
from canon_pl.stitching import decoder_cosine_matrix
from canon_pl.training import (
    DecoderRowsDataModule,
    MetaSAEAnalysisCallback,
    MetaSAEModule,
    OptimizerSettings,
    SAEExportCallback,
)
from canon_pl.training.meta import META_SAE_SETTINGS
from tests.helpers import make_trainer, run_cli, run_here

D_IN, N_META, N_BASE = 48, 24, 1536


def planted_base(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """An exported base SAE whose decoder rows are each a normalised non-negative mix of 2-4 of ``N_META`` planted
    unit directions."""
    g = torch.Generator().manual_seed(100)
    meta = F.normalize(torch.randn(N_META, D_IN, generator=g), dim=-1)
    coef = torch.zeros(N_BASE, N_META)
    for i in range(N_BASE):
        chosen = torch.randperm(N_META, generator=g)[: int(torch.randint(2, 5, (1,), generator=g))]
        coef[i, chosen] = 0.5 + torch.rand(len(chosen), generator=g)
    base = build_sae(SAEConfig(d_in=D_IN, d_sae=N_BASE, architecture="batchtopk", k=8, hook_point="blocks.0"))
    with torch.no_grad():
        base.W_dec.copy_(F.normalize(coef @ meta, dim=-1))
        base.threshold.fill_(0.1)
        base.threshold_initialized.fill_(True)
    export_sae(base, tmp_path / "base")
    return tmp_path / "base", meta


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("meta")
    base_path, planted = planted_base(root)
    data = DecoderRowsDataModule(str(base_path), batch_size=1024, seed=0)
    module = MetaSAEModule(d_in=D_IN, d_sae=32,
                           sae=dataclasses.replace(META_SAE_SETTINGS, k=3, dead_tokens_threshold=20_000),
                           optimizer=OptimizerSettings(lr=3e-3))
    trainer = make_trainer(root / "run", max_steps=400, val_check_interval=400, callbacks=[
        SAEExportCallback(), MetaSAEAnalysisCallback(baseline_steps=100)])
    trainer.fit(module, data)
    return module, data, planted, root / "run"


def test_meta_sae_recovers_planted_meta_directions_at_l0_k(meta_run) -> None:
    module, data, planted, _ = meta_run
    meta = module.sae.eval()
    recovered = decoder_cosine_matrix(planted, meta.W_dec.detach()).max(dim=1).values > 0.9
    assert recovered.float().mean() >= 0.9
    decomposition, rows_hat = decompose(meta, data.rows)
    assert decomposition.meta_per_latent().float().mean() == pytest.approx(3.0, rel=0.25)
    assert F.mse_loss(rows_hat, data.rows) < 0.1 * data.rows.var(dim=0).sum() / D_IN


def test_analysis_is_written_after_fit_and_round_trips(meta_run) -> None:
    module, data, _, run = meta_run
    summary = read_meta_analysis(run, arrays=True)
    assert summary["n_base"] == N_BASE and summary["n_meta"] == 32 and summary["k"] == 3
    decomposition, _ = decompose(module.sae.eval(), data.rows)
    for name in ("base", "meta", "value"):
        assert torch.equal(getattr(summary["decomposition"], name), getattr(decomposition, name))
    assert summary["decomposition"].of_latent(0) == decomposition.of_latent(0)
    assert summary["fve"] > 0.8
    # a meta-SAE that learned the planted structure beats fixed random directions with a refitted encoder
    assert summary["baselines"]["random"] < summary["fve"]
    assert (run / "sae.safetensors").is_file()  # the meta-SAE's own export sits next to it


def test_base_reconstruction_with_the_meta_decoder_is_compared(meta_run, tmp_path: Path) -> None:
    module, data, _, _ = meta_run
    x = torch.randn(512, D_IN)
    analysis = analyze_meta_sae(module.sae.eval(), data.base, activations=x, baseline_steps=0)
    rec = analysis.summary["base_reconstruction"]
    assert rec["original"]["mse"] > 0 and rec["meta_decoder"]["mse"] != rec["original"]["mse"]
    assert "baselines" not in analysis.summary
    path = write_meta_analysis(analysis, tmp_path)
    assert read_meta_analysis(path)["base_reconstruction"] == rec
    (tmp_path / "analysis.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(MetaSAEError, match="analysis.safetensors is corrupt"):
        read_meta_analysis(path, arrays=True)


def test_a_meta_sae_wider_than_its_base_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base_path, _ = planted_base(tmp_path)
    module = MetaSAEModule(d_in=D_IN, d_sae=N_BASE, sae=dataclasses.replace(META_SAE_SETTINGS, k=3))
    with pytest.raises(MetaSAEError, match=f"{N_BASE} latents but the base SAE has only {N_BASE} decoder rows"):
        make_trainer(tmp_path / "run", max_steps=1).fit(module, DecoderRowsDataModule(str(base_path)))
    result = run_here("meta-sae", "--sae", str(base_path), "--d-sae", "5000", "--out", str(tmp_path / "x"),
                      capsys=capsys)
    assert result.returncode == 2 and "narrower than its base" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_meta_sae_command_trains_exports_and_analyses(tmp_path: Path) -> None:
    base_path, _ = planted_base(tmp_path)
    result = run_cli("meta-sae", "--sae", str(base_path), "--steps", "30", "--batch-size", "512", "--k", "3",
                     "--baseline-steps", "5", "--out", str(tmp_path / "meta"), cwd=tmp_path, script="canon-pl")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_meta_analysis(tmp_path / "meta")
    assert summary["n_meta"] == round(N_BASE / 21) and set(summary["baselines"]) == {"random"}
    assert summary["encoder_bias"] is True and (tmp_path / "meta" / "cfg.json").is_file()


def test_the_authors_meta_sae_has_no_encoder_bias_and_its_floors_are_trained_the_same_way(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    base_path, _ = planted_base(tmp_path)
    monkeypatch.chdir(tmp_path)  # in this process (the console script's own: the test above)
    result = run_here("meta-sae", "--sae", str(base_path), "--steps", "30", "--batch-size", "512", "--k", "3",
                      "--no-encoder-bias", "--b-dec-init", "zeros", "--baseline-steps", "0", "--floor-steps", "5",
                      "--out", str(tmp_path / "meta"), capsys=capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_meta_analysis(tmp_path / "meta")
    assert summary["encoder_bias"] is False and set(summary["floors"]) >= {"random_rows"}
    meta = load_sae(tmp_path / "meta")
    assert not meta.cfg.encoder_bias and torch.count_nonzero(meta.b_enc) == 0
    rows = random_unit_rows(300, D_IN)
    fitted = fit_meta_sae(rows, 20, 3, steps=3, batch_size=64, encoder_bias=False, b_dec_init="zeros")
    assert torch.count_nonzero(fitted.b_enc) == 0


def test_decoder_rows_are_unit_norm_and_batches_replay_exactly(tmp_path: Path) -> None:
    base_path, _ = planted_base(tmp_path)
    data = DecoderRowsDataModule(str(base_path), batch_size=64, seed=3)
    torch.testing.assert_close(data.rows.norm(dim=-1), torch.ones(N_BASE))
    first = [b for _, b in zip(range(3), data.train_batches(0))]
    resumed = next(data.train_batches(2))
    assert resumed[0] == 3 and torch.equal(resumed[1], first[2][1])
    assert decoder_rows(data.base).shape == (N_BASE, D_IN)


def test_meta_sae_config_trains_through_lightning_cli(tmp_path: Path) -> None:
    """The shipped config, pointed at a small base: LightningCLI instantiates MetaSAEModule with only its own
    arguments, and the run still trains, checkpoints and exports a loadable meta-SAE."""
    from canon_pl import load_sae
    from tests.helpers import REPO

    base = build_sae(SAEConfig(d_in=576, d_sae=600, architecture="batchtopk", k=8))
    export_sae(base, tmp_path / "base")
    config = yaml.safe_load((REPO / "configs" / "meta_sae_smollm2.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("MetaSAEAnalysisCallback"):  # no Python docs or LM needed here
            callback["init_args"].update(data=None, ce=False, baseline_steps=0)
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("fit", "--config", str(tmp_path / "meta.yaml"), "--data.init_args.base_sae", str(tmp_path / "base"),
                     "--data.init_args.width", "null", "--data.init_args.batch_size", "256",
                     "--model.init_args.d_sae", "32", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "checkpoints" / "meta_sae_smollm2"
    meta = load_sae(run / "ckpt" / "last.ckpt")
    assert meta.d_sae == 32 and meta.cfg.k == 4 and meta.cfg.architecture == "batchtopk"
    assert load_sae(run).d_sae == 32 and read_meta_analysis(run)["n_meta"] == 32


def test_meta_latents_are_compared_with_the_smaller_saes_of_the_family(meta_run, tmp_path: Path) -> None:
    """A smaller SAE whose latents are the planted meta-directions: the meta-SAE's latents find them (cosine near 1),
    and the smaller-SAE baseline is fitted."""
    from canon_pl.io import write_family_manifest

    module, data, planted, _ = meta_run
    small = build_sae(SAEConfig(d_in=D_IN, d_sae=N_META, architecture="batchtopk", k=3, hook_point="blocks.0"))
    with torch.no_grad():
        small.W_dec.copy_(planted)
    export_sae(small, tmp_path / "fam" / str(N_META))
    export_sae(data.base, tmp_path / "fam" / str(N_BASE))
    write_family_manifest(tmp_path / "fam", {N_META: str(N_META), N_BASE: str(N_BASE)}, data.base.cfg, tokens=0)
    family_data = DecoderRowsDataModule(str(tmp_path / "fam"), width=N_BASE)
    smaller = family_data.smaller_saes()
    assert list(smaller) == [N_META]
    analysis = analyze_meta_sae(module.sae.eval(), family_data.base, smaller, baseline_steps=50)
    nearest = analysis.summary["nearest_in_smaller"][str(N_META)]
    assert nearest["median"] > 0.9 and nearest["above_0.7"] > 0.7
    assert analysis.arrays[f"nearest_index_{N_META}"].shape == (32,)
    assert set(analysis.summary["baselines"]) == {"random", f"smaller_{N_META}"}
    assert analysis.summary["baselines"][f"smaller_{N_META}"] > analysis.summary["baselines"]["random"]
