"""A family of widths on one stream: members train as they would alone, and export a manifest later tools read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from canon_pl import CheckpointError, load_family, load_sae
from canon_pl.io import initial_decoder
from canon_pl.data import write_activation_shards
from canon_pl.sae import BatchTopKSettings, ReLUSettings, SAEConfigError
from canon_pl.stitching import read_stitching_results
from canon_pl.training import (
    OptimizerSettings,
    SAEExportCallback,
    SAEFamilyModule,
    SAEModule,
    StitchingCallback,
    SyntheticActivationDataModule,
)
from tests.helpers import SMALL_DATA, make_trainer, run_cli

FAMILY = dict(d_in=48, sae=BatchTopKSettings(k=3, aux_k=16, dead_tokens_threshold=5_000),
              optimizer=OptimizerSettings(lr=3e-3), init_seed=7)


@pytest.fixture(scope="module")
def family_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SAEFamilyModule, Path]:
    root = tmp_path_factory.mktemp("family")
    module = SAEFamilyModule(widths=[48, 96, 192], base_width=48, **FAMILY)
    trainer = make_trainer(root, max_steps=150, val_check_interval=150,
                           callbacks=[SAEExportCallback(), StitchingCallback(max_tokens=1536)])
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


def test_stitching_callback_analyses_each_adjacent_pair_inside_fit(family_run) -> None:
    family, root = family_run
    metrics = family.trainer.callback_metrics
    data = SyntheticActivationDataModule(**SMALL_DATA)
    x = torch.cat(list(data.val_dataloader()))[:1536]
    loaded = load_family(root)
    for small, large in ((48, 96), (96, 192)):
        summary = read_stitching_results(root / "stitching" / f"{small}_{large}.json")
        assert summary["n_tokens"] == 1536 and summary["global_step"] == 150
        assert float(metrics[f"stitch/{small}_{large}/novel_fraction"]) == pytest.approx(summary["novel_fraction"])
        for key, width in (("mse_small", small), ("mse_large", large)):  # the path's ends are the exports' MSE
            with torch.no_grad():
                expected = torch.nn.functional.mse_loss(loaded.saes[width](x), x)
            assert summary[key] == pytest.approx(float(expected), rel=1e-4)
        assert summary["path"]["n_latents"][0] == small and summary["path"]["n_latents"][-1] == large


def test_stitch_command_on_a_family_and_on_a_pair(family_run, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import run_here

    _, root = family_run
    monkeypatch.chdir(tmp_path)  # the console script's own process twice, then its refusals in this one
    data = SyntheticActivationDataModule(**SMALL_DATA)
    # a cache whose held-out part is the validation stream: the analysis reads that part only
    write_activation_shards([torch.randn(1024, 48)], tmp_path / "cache", tokens_per_shard=1024, dtype="float32",
                            val_batches=data.val_dataloader())
    result = run_cli("stitch", str(root), "--data", str(tmp_path / "cache"), "--tokens", "1500",
                     "--out", str(tmp_path / "fam"), cwd=tmp_path, script="canon-pl")
    assert result.returncode == 0, result.stderr
    assert "48 -> 96" in result.stdout and "96 -> 192" in result.stdout
    summary = read_stitching_results(tmp_path / "fam" / "96_192.json", arrays=True)
    assert summary["n_tokens"] == 1500 and summary["arrays"]["large_delta_mse"].shape == (192,)
    # a pair given the wrong way round is swapped with a notice; the results are the same pair's
    result = run_cli("stitch", str(root / "192"), str(root / "96"), "--data", str(tmp_path / "cache"),
                     "--tokens", "1500", cwd=tmp_path, script="canon-pl")  # its notice is a warning: own process
    assert result.returncode == 0 and "swapping them" in result.stderr
    again = read_stitching_results(tmp_path / "stitching" / "96_192.json")
    assert again["novel_fraction"] == summary["novel_fraction"] and again["swapped"]
    # activations of the wrong width: one clear error, nothing written
    write_activation_shards([torch.randn(64, 40)], tmp_path / "bad", dtype="float32")
    result = run_here("stitch", str(root), "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "none"),
                      capsys=capsys)
    assert result.returncode == 2 and "d_in=40" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "none").exists()
    result = run_here("stitch", str(root / "48"), "--data", str(tmp_path / "cache"), capsys=capsys)
    assert result.returncode == 2 and "not a family folder" in result.stderr


def test_a_family_checkpoint_with_seed_controls_loads_each_width(tmp_path: Path) -> None:
    from canon_pl import load_sae

    module = SAEFamilyModule(widths=[48, 96], control_seeds=[1], **FAMILY)
    make_trainer(tmp_path, max_steps=2, every_n_steps=2).fit(module, SyntheticActivationDataModule(**SMALL_DATA))
    for width in (48, 96):
        sae = load_sae(tmp_path / "ckpt" / "last.ckpt", width=width)
        assert sae.d_sae == width


def test_the_stitching_callback_follows_a_relu_family_too(tmp_path: Path) -> None:
    """ReLU latents need no inference threshold: the callback analyses them at every validation (it once skipped
    them, waiting for a threshold that never comes)."""
    relu = {**FAMILY, "sae": ReLUSettings(aux_k=16, dead_tokens_threshold=5_000, l1_coefficient=1.0, l1_warmup_steps=5)}
    module = SAEFamilyModule(widths=[48, 96], control_seeds=[1], **relu)
    trainer = make_trainer(tmp_path, max_steps=10, val_check_interval=10,
                           callbacks=[StitchingCallback(max_tokens=512)])
    trainer.fit(module, SyntheticActivationDataModule(**SMALL_DATA))
    summary = read_stitching_results(tmp_path / "stitching" / "48_96.json")
    assert summary["control"] is not None and summary["global_step"] == 10
    # during training the control gives what the course over training draws (its novel fractions, consistency);
    # its path, replicate and spread are the stitch command's (or full_controls=True)
    control = summary["control"]
    assert control["novel_fraction_definition"] is not None and control["consistency"]["n_smaller"] == 96
    assert "path_excess" not in control and "replicate" not in control
    full = SAEFamilyModule(widths=[48, 96], control_seeds=[1], **relu)
    make_trainer(tmp_path / "full", max_steps=10, val_check_interval=10,
                 callbacks=[StitchingCallback(max_tokens=512, full_controls=True)]).fit(
        full, SyntheticActivationDataModule(**SMALL_DATA))
    control = read_stitching_results(tmp_path / "full" / "stitching" / "48_96.json")["control"]
    assert control["path_excess"] is not None and control["replicate"] is not None


def test_sparsity_variants_train_each_width_at_another_k_beside_the_family(tmp_path: Path) -> None:
    """Width × L0: a variant is the same width from the same initialisation at another k, on the same batches; it
    is recorded apart from the seed controls, which stitching keeps using, and evaluate lists it as a variant."""
    from canon_pl.commands.evaluate import evaluate
    from canon_pl.study.evaluate import saes_of
    from canon_pl.metrics.summary import SUMMARY

    module = SAEFamilyModule(widths=[48, 96], control_seeds=[1], sparsity_variants=[{"k": 1}, {"k": 8}], **FAMILY)
    assert list(module.member_specs) == ["48", "96", "96_seed1", "48_k1", "96_k1", "48_k8", "96_k8"]
    assert torch.equal(module.members["96_k8"].W_dec, module.members["96"].W_dec)  # the same initialisation
    trainer = make_trainer(tmp_path, max_steps=30, val_check_interval=30,
                           callbacks=[SAEExportCallback(), StitchingCallback(max_tokens=512)])
    trainer.fit(module, SyntheticActivationDataModule(**SMALL_DATA))
    manifest = json.loads((tmp_path / "family.json").read_text())
    assert manifest["controls"] == {"96_seed1": {"width": 96, "init_seed": 1}}
    assert manifest["variants"] == {"48_k1": {"width": 48, "k": 1}, "48_k8": {"width": 48, "k": 8},
                                    "96_k1": {"width": 96, "k": 1}, "96_k8": {"width": 96, "k": 8}}
    assert load_sae(tmp_path / "96_k8").cfg.k == 8 and load_sae(tmp_path / "96").cfg.k == 3
    assert read_stitching_results(tmp_path / "stitching" / "48_96.json")["control"]["name"] == "96_seed1"
    assert [(e.folder.name, e.variant) for e in saes_of(tmp_path)] == [
        ("48", None), ("48_k1", {"k": 1}), ("48_k8", {"k": 8}), ("96", None), ("96_seed1", None),
        ("96_k1", {"k": 1}), ("96_k8", {"k": 8})]
    cache = tmp_path / "cache"
    data = SyntheticActivationDataModule(**SMALL_DATA)
    data.setup("fit")
    x = torch.cat([batch for batch in data.val_dataloader()])
    write_activation_shards([x[:512]], cache, tokens_per_shard=512, dtype="float32", val_batches=[x[512:]])
    assert evaluate(str(tmp_path), data=str(cache), tokens=256) == 0
    summary = SUMMARY.read(tmp_path / "evaluation" / "summary.json")
    l0 = {r["name"]: r["metrics"]["l0"] for r in summary["rows"]}
    assert l0["96_k1"] < l0["96"] < l0["96_k8"]  # the sparsity setting moved L0, at one width
    assert summary["seed_spread"]["96"]["l0"] == pytest.approx(abs(l0["96"] - l0["96_seed1"]))  # variants apart
    with pytest.raises(SAEConfigError, match="has no setting bogus"):
        SAEFamilyModule(widths=[48], sparsity_variants=[{"bogus": 1}], **FAMILY)
    with pytest.raises(SAEConfigError, match="repeats the family's own settings"):
        SAEFamilyModule(widths=[48], sparsity_variants=[{"k": 3}], **FAMILY)


MATRYOSHKA_CONFIG = """
seed_everything: 0
trainer:
  max_steps: 40
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: run
  callbacks:
    - class_path: canon_pl.training.SAEExportCallback
model:
  class_path: canon_pl.training.SAEModule
  init_args:
    d_in: 16
    d_sae: 64
    sae:
      class_path: canon_pl.sae.MatryoshkaBatchTopKSettings
      init_args:
        k: 4
        prefix_fractions: [0.25, 0.5]
        aux_k: 8
    optimizer:
      lr: 0.003
data:
  class_path: canon_pl.training.SyntheticActivationDataModule
  init_args:
    d_in: 16
    n_features: 48
    batch_size: 256
"""


def test_a_matryoshka_sae_trains_through_the_cli_and_its_prefixes_load_as_a_family(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.helpers import run_cli, run_here

    (tmp_path / "matryoshka.yaml").write_text(MATRYOSHKA_CONFIG)
    trained = run_cli("fit", "--config", "matryoshka.yaml", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    nested = load_sae(tmp_path / "run")
    assert nested.cfg.architecture == "matryoshka_batchtopk" and nested.prefix_sizes == [16, 32, 64]
    made = run_cli("family", "--from", str(tmp_path / "run"), "--prefixes", "--out", str(tmp_path / "fam"),
                   cwd=tmp_path, script="canon-pl")
    assert made.returncode == 0, made.stderr
    family = load_family(tmp_path / "fam")
    assert family.widths == [16, 32, 64]
    x = torch.randn(32, 16).abs()
    acts = nested.encode(x, inference=True)
    for m in family.widths:
        member = load_sae(tmp_path / "fam", width=m)
        assert torch.equal(member.encode(x, inference=True), acts[:, :m])
    whole = initial_decoder(tmp_path / "run")  # each prefix's start is its rows of the whole SAE's: moved/stuck reads
    assert whole is not None and torch.equal(initial_decoder(tmp_path / "fam" / "16"), whole[:16])
    # the refusals in this process (the console script ran above)
    refused = run_here("family", "--from", str(tmp_path / "fam" / "16"), "--prefixes", "--out", str(tmp_path / "x"),
                       capsys=capsys)
    assert refused.returncode == 2 and "one Matryoshka SAE" in refused.stderr
    same_seed = run_here("family", "--from", str(tmp_path / "run"), "--prefixes", "--prefix_controls",
                         str(tmp_path / "run"), "--out", str(tmp_path / "y"), capsys=capsys)
    assert same_seed.returncode == 2 and "init seed 0 is already taken" in same_seed.stderr
    not_nested = run_here("family", "--from", str(tmp_path / "run"), "--prefixes", "--prefix_controls",
                          str(tmp_path / "fam" / "16"), "--out", str(tmp_path / "z"), capsys=capsys)
    assert not_nested.returncode == 2 and "not the same Matryoshka SAE" in not_nested.stderr
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()  # refused before anything is written
