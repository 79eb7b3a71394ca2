"""The commands researchers type: every config instantiates, `lightning fit` trains, resumes and fails cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from canon_pl import load_sae
from canon_pl.cli.lightning import run_lightning_cli
from canon_pl.training import ActivationDataModule, ActivationShardDataModule, DecoderRowsDataModule
from tests.helpers import REPO, run_cli, run_here

CONFIGS = sorted(p for p in (REPO / "configs").glob("**/*.yaml")  # presets: test_distributed, the logger tests
                 if not p.name.startswith(("pipeline_", "ladder_")) and p.parent.name not in ("trainer", "logger"))
PIPELINES = sorted((REPO / "configs").glob("**/pipeline_*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_instantiates(config: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(["--config", str(config)], run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None
    # ActivationDataModule needs the model loaded, DecoderRowsDataModule a trained base SAE, ActivationShardDataModule
    # the cache an earlier pipeline stage writes: all tested elsewhere
    if not isinstance(cli.datamodule, (ActivationDataModule, DecoderRowsDataModule, ActivationShardDataModule)):
        assert cli.datamodule.d_in == cli.model.hparams.d_in


@pytest.mark.parametrize("config", PIPELINES, ids=[c.name for c in PIPELINES])
def test_every_pipeline_config_names_a_family_config_that_instantiates(config: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    from canon_pl.commands.pipeline import read_pipeline_config

    monkeypatch.chdir(REPO)
    pipeline = read_pipeline_config(config)
    if pipeline["release"]:  # the family is a SAELens release, assembled by name: the registry must know it
        from canon_pl.io.releases import release_ids

        assert release_ids(pipeline["release"]["name"]) and pipeline["widths"] is None
        return
    assert pipeline["widths"] == sorted(pipeline["widths"]) and pipeline["max_steps"] > 0
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(["--config", str(REPO / pipeline["fit_config"])], run=False)
    assert list(cli.model.widths) == pipeline["widths"]


def test_lightning_fit_trains_exports_and_resumes(tmp_path: Path) -> None:
    config = str(REPO / "configs" / "sae_synthetic.yaml")
    first = run_cli("fit", "--config", config, "--trainer.max_steps", "500", "--trainer.val_check_interval", "250",
                    "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "checkpoints" / "sae_synthetic"
    assert (run / "ckpt" / "last.ckpt").is_file()
    sae = load_sae(run)
    assert sae.cfg.d_sae == 256 and bool(sae.threshold_initialized)

    # the state a kill between Lightning removing the old checkpoint and re-linking last.ckpt leaves: the link
    # dangles beside a whole newer checkpoint; the documented resume takes that one (not step 0, not a traceback)
    last = run / "ckpt" / "last.ckpt"
    last.unlink()
    last.symlink_to("epoch=0-step=499.ckpt")
    resumed = run_cli("fit", "--config", config, "--trainer.max_steps", "520", "--trainer.enable_progress_bar", "false",
                      "--ckpt_path", str(run / "ckpt" / "last.ckpt"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the newest whole checkpoint" in resumed.stderr and "step=500.ckpt" in resumed.stderr
    import json

    assert json.loads((run / "cfg.json").read_text())["training"]["global_step"] == 520
    exported = run_cli("export", "--ckpt", str(run / "ckpt" / "last.ckpt"), "--out", str(tmp_path / "exp"),
                       cwd=tmp_path, script="canon-pl")
    assert exported.returncode == 0, exported.stderr
    x = torch.randn(8, 64)
    assert torch.allclose(load_sae(tmp_path / "exp")(x), load_sae(run / "ckpt" / "last.ckpt")(x), atol=1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.init_args.bogus_key", "1"], "bogus_key"),
        (["--model", "canon_pl.training.NoSuchModule"], "NoSuchModule"),
        (["--model.init_args.sae.k", "1000"], "k=1000 must be between 1 and d_sae=256"),
        (["--model.init_args.d_in", "32"], "d_in: 64"),
    ],
)
def test_bad_config_gets_one_clear_error_and_writes_nothing(tmp_path: Path, override: list[str], message: str,
                                                           capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # in this process (the console script's own process: the tests above and below)
    result = run_here("fit", "--config", str(REPO / "configs" / "sae_synthetic.yaml"), *override, capsys=capsys)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints" / "sae_synthetic" / "ckpt").exists()
    assert not (tmp_path / "checkpoints" / "sae_synthetic" / "sae.safetensors").exists()


def test_bad_hook_point_on_the_real_model_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_here("fit", "--config", str(REPO / "configs" / "sae_smollm2.yaml"),
                      "--data.init_args.hook_point", "model.layers.40", "--data.init_args.text", "pydoc-topics",
                      capsys=capsys)
    assert result.returncode == 2
    assert "hook point 'model.layers.40' not found; the model has layers 0-29" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints" / "sae_smollm2" / "ckpt").exists()


def test_readme_set_up_commands_are_the_ones_ci_and_make_run() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make main" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
    for target in ("main", "test"):
        dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
    assert "constraints-cpu.txt" in (REPO / "Makefile").read_text()
    assert "torch==2.13.0" in (REPO / "constraints-cpu.txt").read_text()


def test_help_lists_every_subcommand_with_what_it_does(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``canon-pl --help`` is where a newcomer starts: the Lightning subcommands and canon-pl's own, each with its
    summary, and each of them answers ``--help`` itself."""
    from canon_pl.cli import COMMANDS, LIGHTNING_COMMANDS

    result = run_cli("--help", cwd=tmp_path, script="canon-pl")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(listed) == {*LIGHTNING_COMMANDS, *COMMANDS} == {"fit", "validate", "export", "cache", "synth",
                                                              "calibrate", "stitch", "meta-sae", "stats", "evaluate",
                                                              "family", "pipeline", "ladder", "view"}
    assert all(len(line.split()) > 3 for line in listed.values()), "every command has a summary"
    for name in ("fit", "stitch", "pipeline"):  # in this process: the console script's own is the one above
        own = run_here(name, "--help", capsys=capsys)
        assert own.returncode == 0 and "usage:" in own.stdout, own.stderr
    # Lightning's test and predict need steps the SAE modules do not have: refused by name, not a traceback
    refused = run_cli("test", "--config", str(REPO / "configs" / "sae_synthetic.yaml"), cwd=tmp_path,
                      script="canon-pl")
    assert refused.returncode == 2 and "no test step" in refused.stderr and "Traceback" not in refused.stderr


def test_every_command_takes_its_options_from_a_config_file_that_flags_override(tmp_path: Path) -> None:
    """``canon-pl export --config export.yaml``: the file's keys are the flags' names; a flag beside it wins; a key
    the command does not have is refused by name before any work."""
    (tmp_path / "export.yaml").write_text("ckpt: from_file.ckpt\nout: exported\n")
    from_file = run_cli("export", "--config", "export.yaml", cwd=tmp_path, script="canon-pl")
    assert from_file.returncode == 2 and "from_file.ckpt" in from_file.stderr, from_file.stderr
    overridden = run_cli("export", "--config", "export.yaml", "--ckpt", "from_flag.ckpt", cwd=tmp_path,
                         script="canon-pl")
    assert overridden.returncode == 2 and "from_flag.ckpt" in overridden.stderr, overridden.stderr
    (tmp_path / "bad.yaml").write_text("ckpt: a.ckpt\nchekpoint: b\n")
    bad = run_cli("export", "--config", "bad.yaml", cwd=tmp_path, script="canon-pl")
    assert bad.returncode != 0 and "'chekpoint' is not accepted" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "exported").exists()


def test_the_overview_and_every_commands_help_start_without_importing_torch_or_lightning() -> None:
    """``canon-pl --help`` and ``canon-pl <command> --help`` answer at once: neither they nor ``import canon_pl``
    import torch or Lightning (a command imports them inside its function; a name such as ``canon_pl.load_sae``
    imports what it needs on first use)."""
    check = ("import sys, contextlib, io, canon_pl\n"
             "from canon_pl.cli import COMMANDS, main\n"
             "for argv in [['--help'], *([name, '--help'] for name in COMMANDS)]:\n"
             "    with contextlib.redirect_stdout(io.StringIO()) as shown:\n"
             "        try:\n"
             "            main(argv)\n"
             "        except SystemExit:\n"
             "            pass\n"
             "    assert 'usage: canon-pl' in shown.getvalue(), (argv, shown.getvalue()[:500])\n"
             "    heavy = [m for m in ('torch', 'lightning', 'transformers', 'streamlit') if m in sys.modules]\n"
             "    assert not heavy, (argv, heavy)\n"
             "from canon_pl import load_sae\n"
             "assert 'torch' in sys.modules and callable(load_sae)\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_lightning_command_shadows_nothing_of_lightning() -> None:
    """``lightning fit --config ...`` is canon-pl's entry point (the README's first command); it must not hide a
    console script of Lightning's own. Lightning 2.x installs only ``fabric``: this fails if a Lightning release
    starts shipping ``lightning``, so the choice is made again then."""
    from importlib.metadata import distribution

    scripts = {entry.name: entry.value for entry in distribution("lightning").entry_points
               if entry.group == "console_scripts"}
    assert "lightning" not in scripts, scripts
    ours = {entry.name: entry.value for entry in distribution("canon-pl").entry_points
            if entry.group == "console_scripts"}
    assert ours == {"canon-pl": "canon_pl.cli:main", "lightning": "canon_pl.cli:main"}


def test_every_command_takes_flags_spelt_like_lightning_and_the_pipeline_yaml(tmp_path: Path) -> None:
    """One spelling works everywhere: ``canon-pl stitch --ce_points 3`` as ``canon-pl fit --trainer.max_steps 3`` and
    the pipeline YAML's ``ce_points: 3``; the dashed ``--ce-points`` is accepted too and means the same."""
    import inspect

    from canon_pl.cli import COMMANDS, command_module
    from canon_pl.cli.parse import command_parser

    for name in COMMANDS:
        function = getattr(command_module(name), name.replace("-", "_"))
        parser = command_parser(function, f"canon-pl {name}")
        flags = {flag for action in parser._actions for flag in action.option_strings}
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or parameter.name == "sources":
                continue
            own = f"--{parameter.name}" if parameter.default is not True else f"--no_{parameter.name}"
            assert own in flags, f"canon-pl {name} lacks {own}"
            assert "--" + own[2:].replace("_", "-") in flags, f"canon-pl {name} lacks the dashed {own}"
    stitch = getattr(command_module("stitch"), "stitch")
    parser = command_parser(stitch, "canon-pl stitch")
    underscored = parser.parse_args(["a", "--data", "d", "--ce_points", "3"])
    dashed = parser.parse_args(["a", "--data", "d", "--ce-points", "3"])
    assert vars(underscored) == vars(dashed) and underscored.ce_points == 3
    help_text = run_cli("stitch", "--help", cwd=tmp_path, script="canon-pl").stdout
    assert "--ce_points" in help_text


def scalars_in_event_files(folder: Path) -> dict[str, list[float]]:
    """Every scalar TensorBoard would show for the event files below ``folder``: {tag: values in step order}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[float]] = {}
    for events in folder.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found[tag] = [event.value for event in accumulator.Scalars(tag)]
    return found


def test_the_tensorboard_preset_records_every_metric_the_csv_log_has(tmp_path: Path) -> None:
    """``--config configs/logger/tensorboard.yaml`` after a training config: the event files in the run folder hold
    every metric of the CSV log, with the same values."""
    import csv

    run = tmp_path / "run"
    result = run_cli("fit", "--config", str(REPO / "configs" / "sae_synthetic.yaml"), "--config",
                     str(REPO / "configs" / "logger" / "tensorboard.yaml"), "--trainer.default_root_dir", str(run),
                     "--trainer.max_steps", "20", "--trainer.val_check_interval", "10",
                     "--trainer.log_every_n_steps", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = scalars_in_event_files(run / "tensorboard")
    with open(next((run / "logs").rglob("metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    logged = {key for row in rows for key, value in row.items() if value and key not in ("step", "epoch")}
    assert {"train/loss", "train/fvu", "val/explained_variance", "val/l0"} <= logged
    assert logged <= set(scalars), f"missing in TensorBoard: {sorted(logged - set(scalars))}"
    val_ev = [float(row["val/explained_variance"]) for row in rows if row.get("val/explained_variance")]
    assert scalars["val/explained_variance"] == pytest.approx(val_ev, rel=1e-6)
    assert not (tmp_path / "checkpoints").exists()  # nothing written outside the run folder
    assert list((run / "ckpt").glob("*.ckpt")) and (run / "cfg.json").is_file()


def test_the_wandb_preset_logs_offline_into_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'canon-pl[trackers]')")
    run = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_cli("fit", "--config", str(REPO / "configs" / "sae_synthetic.yaml"), "--config",
                     str(REPO / "configs" / "logger" / "wandb.yaml"), "--trainer.default_root_dir", str(run),
                     "--trainer.max_steps", "10", "--trainer.val_check_interval", "10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), sorted(p.name for p in run.rglob("*"))[:20]
    assert list((run / "logs").rglob("metrics.csv"))
