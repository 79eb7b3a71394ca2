"""Every command and DataModule setting a researcher can get wrong, with the one-line error each must give before
any long work: a table of (input, expected message), run in-process as `canon-pl ...` / `lightning fit ...` would
run it. No case may print a traceback, load the language model or write anything."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import yaml

from canon_pl.cli import main
from canon_pl.errors import CanonError, SettingError
from canon_pl.io import export_sae
from canon_pl.sae import SAEConfig, build_sae
from tests.helpers import mounted_tmpfs

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = str(REPO / "configs" / "sae_synthetic.yaml")


class _Pickled:
    """An object a checkpoint may not hold: unpickling it would call a function."""

    def __reduce__(self):
        return (sorted, ([],))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two exports of one model and hook point, a file where a folder should be, a binary and a Latin-1 text."""
    root = tmp_path_factory.mktemp("bad_inputs")
    for name, width in (("small", 8), ("large", 16)):
        export_sae(build_sae(SAEConfig(d_in=576, d_sae=width, architecture="relu", model_id="smollm2-135m",
                                       hook_point="model.layers.6")), root / name)
    (root / "a_file").write_text("not a folder")
    (root / "binary.txt").write_bytes(b"text\n\x00\x01\x02" * 100)
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 100)
    study = yaml.safe_load((REPO / "configs" / "pipeline_smollm2.yaml").read_text())
    study["matryoshka"] = yaml.safe_load((REPO / "configs" / "pipeline_smollm2_matryoshka.yaml").read_text())["matryoshka"]
    (root / "matryoshka_typo.yaml").write_text(yaml.safe_dump({**study, "matryoshka": {"seeds": [1]}}))
    relu_study = {**study, "fit_config": "configs/family_smollm2_relu.yaml"}
    (root / "matryoshka_relu.yaml").write_text(yaml.safe_dump(relu_study))
    for name, change in (("matryoshka_seed", {"matryoshka": {**study["matryoshka"], "control_seeds": [0]}}),
                         ("matryoshka_args", {"matryoshka": {**study["matryoshka"], "fit_args": ["--trainer.bogus", "1"]}}),
                         ("fit_args", {"fit_args": ["--model.init_args.sae.k", "0"]}),
                         ("cache_tokens", {"cache": {**study["cache"], "tokens": "lots"}}),
                         ("stitch_granularity", {"stitch": {**study["stitch"], "granularity": "yes please"}})):
        (root / f"{name}.yaml").write_text(yaml.safe_dump({**study, **change}))
    (root / "base_cycle.yaml").write_text(yaml.safe_dump({"base": str(root / "base_cycle.yaml")}))
    (root / "results_number.yaml").write_text(yaml.safe_dump({**study, "matryoshka_results": 3}))
    (root / "comparison.json").write_text('{"format": "canon_pl.matryoshka_comparison", "run": "x", "written": "x", '
                                          '"widths": [576], "control_seeds": [], "ev_rows": [], "pair_rows": [], '
                                          '"meta_rows": [], "verdict": {"claim": "edited"}}')
    unmatryoshka = {k: v for k, v in study.items() if k != "matryoshka"}
    (root / "comparison_edited.yaml").write_text(yaml.safe_dump({**unmatryoshka,
                                                                 "matryoshka_results": str(root / "comparison.json")}))
    (root / "garbage.ckpt").write_bytes(b"not a checkpoint" * 10)
    import torch

    torch.save({"state_dict": {}, "hook": _Pickled()}, root / "pickled.ckpt")
    ladder = yaml.safe_load((REPO / "configs" / "ladder_smollm2.yaml").read_text())
    for name, change in (("ladder_rungs", {"rungs": [1500, 750]}), ("ladder_run", {"run": "checkpoints/family_smollm2"}),
                         ("ladder_key", {"rung": [1]}), ("ladder_bases", {"bases": {"widths": [9216, 4608]}}),
                         ("ladder_tau", {"bases": {"widths": [2304], "moved_tau": 1.5}})):
        (root / f"{name}.yaml").write_text(yaml.safe_dump({**ladder, **change}))
    return {"root": str(root), "small": str(root / "small"), "large": str(root / "large"),
            "file": str(root / "a_file"), "binary": str(root / "binary.txt"), "latin1": str(root / "latin1.txt")}


COMMAND_CASES = [
    # output folders, checked before the work that would fill them
    (["export", "--ckpt", "{small}", "--out", "{file}"], "--out {file} is a file, not a folder"),
    (["export", "--ckpt", "{small}", "--out", "{file}/sub"], "lies below the file {file}"),
    (["stitch", "{small}", "{large}", "--data", "x", "--out", "{file}"], "--out {file} is a file"),
    (["family", "--from", "{small}", "{large}", "--out", "{file}"], "--out {file} is a file"),
    (["meta-sae", "--sae", "{large}", "--out", "{file}"], "--out {file} is a file"),
    (["stats", "--run", "{small}", "--out", "{file}"], "--out {file} is a file"),
    (["cache", "--config", "configs/sae_smollm2.yaml", "--out", "{file}", "--tokens", "10"], "--out {file} is a file"),
    (["fit", "--config", SYNTHETIC, "--trainer.default_root_dir", "{file}", "--trainer.max_steps", "2"],
     "trainer.default_root_dir {file} is a file"),
    # numbers
    (["cache", "--config", "configs/sae_smollm2.yaml", "--out", "{root}/c", "--tokens", "0"],
     "--tokens must be a whole number >= 1, got 0"),
    (["stitch", "{small}", "{large}", "--data", "x", "--tokens", "0"], "--tokens must be a whole number >= 1"),
    (["stitch", "{small}", "{large}", "--data", "x", "--tau", "1.5"], "tau must lie strictly between 0 and 1"),
    (["stats", "--run", "{small}", "--tokens=-5"], "--tokens must be a whole number >= 1, got -5"),
    (["stats", "--run", "{small}", "--context-length", "0"], "--context_length must be at least 2"),
    (["stats", "--run", "{small}", "--text", "Skylion007/openwebtext"],
     "is a hub dataset name, but it cannot be read from the hub"),
    (["stats", "--run", "{small}", "--text", "{root}/notes/train.txt"], "matches no files"),
    (["meta-sae", "--sae", "{large}", "--lr=-1e-3"], "--lr must be a positive number, got -0.001"),
    (["meta-sae", "--sae", "{large}", "--lr", "nan"], "Parser key \"lr\": Expected a <class 'float'>. Got value: nan"),
    (["meta-sae", "--sae", "{large}", "--steps", "0"], "--steps must be a whole number >= 1"),
    (["meta-sae", "--sae", "{large}", "--batch_size", "-1"], "--batch_size must be a whole number >= 1"),
    (["meta-sae", "--sae", "{large}", "--sweep-d-sae-per-d-in", "0"], "--sweep_d_sae_per_d_in must be a positive"),
    (["fit", "--config", SYNTHETIC, "--data.init_args.batch_size", "-1"], "batch_size must be a whole number >= 1"),
    (["fit", "--config", SYNTHETIC, "--model.init_args.optimizer.lr", "-0.1"], "optimizer.lr must be a positive number"),
    (["fit", "--config", SYNTHETIC, "--model.init_args.optimizer.decay", "cosine"], "needs optimizer.decay_steps > 0"),
    (["fit", "--config", SYNTHETIC, "--ckpt_path", "{root}/garbage.ckpt"],
     "garbage.ckpt is not a readable PyTorch checkpoint"),
    (["fit", "--config", SYNTHETIC, "--ckpt_path", "{root}/pickled.ckpt"],
     "pickled.ckpt: it contains pickled objects other than tensors"),
    (["fit", "--config", SYNTHETIC, "--ckpt_path", "{root}/missing.ckpt"], "checkpoint {root}/missing.ckpt not found"),
    (["fit", "--config", SYNTHETIC, "--model.init_args.optimizer.betas", "[0.9, 1.5]"],
     "optimizer.betas must be two numbers in [0, 1)"),
    (["fit", "--config", SYNTHETIC, "--model.init_args.b_dec_init", "median"], "b_dec_init must be 'mean' or 'zeros'"),
    (["fit", "--config", SYNTHETIC, "--model.init_args.sae",
      "{{class_path: canon_pl.sae.MatryoshkaBatchTopKSettings, init_args: {{prefix_fractions: [.nan]}}}}"],
     "prefix_fractions must be finite numbers in (0, 1)"),
    (["fit", "--config", SYNTHETIC, "--model.init_args.sae",
      "{{class_path: canon_pl.sae.GatedSettings, init_args: {{l1_coefficient: .inf}}}}"],
     "GatedSettings.l1_coefficient must be a finite number, got inf"),
    (["fit", "--config", "configs/family_smollm2_width_l0.yaml", "--model.init_args.sparsity_variants", "[{{aux_k: x}}]"],
     "BatchTopKSettings.aux_k must be int, got 'x'"),
    (["fit", "--config", SYNTHETIC, "--data.init_args.n_features", "0"], "n_features must be a whole number >= 1"),
    (["fit", "--config", SYNTHETIC, "--model.init_args.d_sae", "100000000000"],
     "GiB of memory: lower model.init_args.widths / d_sae"),

    # devices this machine does not have
    (["stitch", "{small}", "{large}", "--data", "x", "--device", "cuda:7"], "--device cuda:7: this machine has"),
    (["stats", "--run", "{small}", "--device", "cuda:7"], "--device cuda:7: this machine has"),
    (["stats", "--run", "{small}", "--device", "gpu0"], "--device 'gpu0' is not a device name"),
    (["pipeline", "--config", "configs/pipeline_smollm2.yaml", "--device", "cuda:7"], "--device cuda:7"),
    # text that is not text, and a name that is nowhere
    (["stats", "--run", "{small}", "--text", "{binary}"], "{binary} in the text source"),
    (["stats", "--run", "{small}", "--text", "{latin1}"], "is not text: not UTF-8"),
    (["stitch", "{small}", "{large}", "--data", "cache_smollm2_typo"],
     "'cache_smollm2_typo' is not an activation cache (no index.json there) and not a readable text source"),
    # files that are not what they should be
    (["pipeline", "--config", "{file}"], "not a pipeline config"),
    (["pipeline", "--config", "{root}/matryoshka_typo.yaml"], "matryoshka must be a mapping of control_seeds"),
    (["pipeline", "--config", "{root}/base_cycle.yaml"], "leads back to itself"),
    (["pipeline", "--config", "{root}/results_number.yaml"], "matryoshka_results must be a path"),
    (["pipeline", "--config", "{root}/comparison_edited.yaml"], "comparison.json is malformed: its tables"),
    (["pipeline", "--config", "{root}/matryoshka_relu.yaml"], "beside a BatchTopK family; this family's SAEs are"),
    # the pipeline's fit configs are parsed before stage 1, not at the stage (the Matryoshka's is stage 7 of 8)
    (["pipeline", "--config", "{root}/matryoshka_seed.yaml"], "control_seeds [0] must be distinct and differ from"),
    (["pipeline", "--config", "{root}/matryoshka_args.yaml"], "unrecognized arguments: --trainer.bogus 1"),
    (["pipeline", "--config", "{root}/fit_args.yaml"], "k=0 must be between 1 and d_sae=576"),
    (["pipeline", "--config", "{root}/cache_tokens.yaml"], "cache.tokens must be int, got 'lots'"),
    (["pipeline", "--config", "{root}/stitch_granularity.yaml"], "stitch.granularity must be bool, got 'yes please'"),
    (["ladder", "--config", "{file}"], "not a ladder config"),
    (["ladder", "--config", "{root}/ladder_rungs.yaml"], "rungs must be increasing positive step counts"),
    (["ladder", "--config", "{root}/ladder_run.yaml"], "run must be a folder of its own"),
    (["ladder", "--config", "{root}/ladder_key.yaml"], "a ladder config is a mapping with pipeline, run, results"),
    (["ladder", "--config", "{root}/ladder_bases.yaml"], "bases.widths must be increasing positive widths"),
    (["ladder", "--config", "{root}/ladder_tau.yaml"], "bases.moved_tau must lie strictly between 0 and 1"),
    (["ladder", "--config", "configs/ladder_smollm2.yaml", "--only", "0"], "--only must be"),
    (["family", "--from", "{small}", "--prefix_controls", "{large}", "--out", "{root}/f"],
     "--prefix_controls are other seeds of a Matryoshka SAE: give them with --prefixes"),
    (["stitch", "{file}", "--data", "x"], "is not a family folder"),
]


@pytest.mark.parametrize("argv, message", COMMAND_CASES, ids=[" ".join(c[0][:3]) for c in COMMAND_CASES])
def test_a_bad_command_line_gets_one_clear_error_at_once(inputs: dict[str, str], argv: list[str], message: str,
                                                         capsys: pytest.CaptureFixture, monkeypatch) -> None:
    if any("cuda:7" in arg for arg in argv):
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    monkeypatch.chdir(REPO)  # the shipped configs name paths relative to the repository
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a hub that refuses at once, network or not
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = sorted(Path(inputs["root"]).rglob("*"))
    started = time.monotonic()
    code = main([arg.format(**inputs) for arg in argv])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and message.format(**inputs) in lines[0], err[-2000:]
    assert elapsed < 30, f"{elapsed:.0f} s before the error: it must come before any long work"
    assert sorted(Path(inputs["root"]).rglob("*")) == before, "a refused command wrote something"


def test_an_accelerator_this_machine_lacks_is_one_line(inputs: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["meta-sae", "--sae", inputs["large"], "--d-sae", "8", "--k", "2", "--accelerator", "gpu",
                 "--out", inputs["root"] + "/m"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "MisconfigurationException: No supported gpu backend found" in err


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_previous_output(inputs: dict[str, str], tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture,
                                                                              monkeypatch) -> None:
    import errno
    import os

    out = tmp_path / "exp"
    assert main(["export", "--ckpt", inputs["small"], "--out", str(out)]) == 0
    before = (out / "sae.safetensors").read_bytes()
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    capsys.readouterr()
    assert main(["export", "--ckpt", inputs["large"], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"could not write {out}" in err and "No space left on device" in err
    assert (out / "sae.safetensors").read_bytes() == before


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A real read-only filesystem (root ignores permission bits; needs mount rights, skipped elsewhere)."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        yield mount


def test_an_output_on_a_read_only_filesystem_is_refused_before_the_work(inputs: dict[str, str], read_only_folder: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    for argv in (["export", "--ckpt", inputs["small"], "--out", str(read_only_folder / "exp")],
                 ["family", "--from", inputs["small"], inputs["large"], "--out", str(read_only_folder / "fam")],
                 ["meta-sae", "--sae", inputs["large"], "--out", str(read_only_folder / "meta")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and f"{read_only_folder} is not writable" in err, err[-2000:]


def datamodule_cases() -> list[tuple[str, dict, str]]:
    return [
        ("ActivationDataModule", {"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
        ("ActivationDataModule", {"context_length": 1}, "context_length must be a whole number >= 2"),
        ("ActivationDataModule", {"val_every": 1}, "val_every must be a whole number >= 2"),
        ("ActivationDataModule", {"val_contexts": -1}, "val_contexts must be a whole number >= 0"),
        ("ActivationDataModule", {"contexts_per_forward": 0}, "contexts_per_forward must be a whole number >= 1"),
        ("ActivationDataModule", {"contexts_per_forward": 64, "block_contexts": 32}, "block_contexts (32) must be"),
        ("ActivationDataModule", {"outlier_factor": math.nan}, "outlier_factor must be a positive number, got nan"),
        ("ActivationDataModule", {"document_chars": 0}, "document_chars must be a whole number >= 1"),
        ("ActivationShardDataModule", {"path": "nowhere", "batch_size": -1}, "batch_size must be a whole number"),
        ("ActivationShardDataModule", {"path": "nowhere", "shards_in_memory": 0}, "shards_in_memory must be"),
        ("SyntheticActivationDataModule", {"batch_size": 0}, "batch_size must be a whole number >= 1"),
        ("SyntheticActivationDataModule", {"val_batches": -1}, "val_batches must be a whole number >= 0"),
        ("MetaSAEAnalysisCallback", {"tokens": 0}, "tokens must be a whole number >= 1"),
        ("MetaSAEAnalysisCallback", {"floor_steps": -1}, "floor_steps must be a whole number >= 0"),
        ("MetaSAEAnalysisCallback", {"sweep_d_sae_per_d_in": [3, -1]}, "sweep_d_sae_per_d_in must be a positive"),
    ]


@pytest.mark.parametrize("name, settings, message", datamodule_cases(),
                         ids=[f"{c[0]}-{'-'.join(c[1])}" for c in datamodule_cases()])
def test_a_bad_datamodule_setting_is_refused_when_it_is_built(name: str, settings: dict, message: str) -> None:
    import canon_pl.training as training

    with pytest.raises(SettingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        getattr(training, name)(**settings)


def test_the_decoder_rows_datamodule_refuses_a_batch_size_of_zero(inputs: dict[str, str]) -> None:
    from canon_pl.training import DecoderRowsDataModule

    with pytest.raises(SettingError, match="batch_size must be a whole number >= 1, got 0"):
        DecoderRowsDataModule(inputs["large"], batch_size=0)


def test_every_user_error_is_a_canon_error() -> None:
    """The command line shows every canon-pl error as one line: each error class a user can cause derives from
    CanonError (a new one that did not would print a traceback)."""
    import canon_pl.data
    import canon_pl.io
    import canon_pl.lm
    import canon_pl.meta
    import canon_pl.sae
    import canon_pl.stats
    import canon_pl.stitching
    import canon_pl.training
    import canon_pl.training.analysis_data
    import canon_pl.training.datamodules
    from canon_pl.io.lock import RunFolderLockedError
    from canon_pl.viewer.folders import ViewerFolderError

    modules = (canon_pl.data, canon_pl.io, canon_pl.lm, canon_pl.meta, canon_pl.sae, canon_pl.stats,
               canon_pl.stitching, canon_pl.training, canon_pl.training.analysis_data, canon_pl.training.datamodules)
    errors = {obj for module in modules for name, obj in vars(module).items()
              if isinstance(obj, type) and issubclass(obj, Exception) and name.endswith("Error")
              and obj.__module__.startswith("canon_pl")}
    errors |= {RunFolderLockedError, ViewerFolderError}
    assert len(errors) >= 14
    assert not [e.__name__ for e in errors if not issubclass(e, CanonError)]


def test_a_tracker_preset_without_its_package_is_one_line(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                          monkeypatch) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    monkeypatch.chdir(REPO)
    code = main(["fit", "--config", SYNTHETIC, "--config", "configs/logger/wandb.yaml", "--trainer.default_root_dir",
                 str(tmp_path / "run"), "--trainer.max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "needs wandb, which is not installed: pip install 'canon-pl[trackers]'" in err
    assert not (tmp_path / "run").exists()


def test_a_batch_too_large_to_allocate_is_one_line_before_any_step(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    code = main(["fit", "--config", SYNTHETIC, "--data.init_args.batch_size", "10000000000",
                 "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "needs about 28,610.2 GiB" in err and "lower data.init_args.batch_size" in err
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not (tmp_path / "run" / "cfg.json").exists()
