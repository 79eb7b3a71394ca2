"""Small builders shared by the Lightning tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from canon_pl.sae import BatchTopKSettings
from canon_pl.training.schedule import OptimizerSettings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL_SAE = dict(d_in=48, d_sae=192, sae=BatchTopKSettings(k=3, aux_k=32, dead_tokens_threshold=20_000),
                 optimizer=OptimizerSettings(lr=3e-3))
SMALL_DATA = dict(d_in=48, n_features=96, active_per_token=3.0, batch_size=1024, val_batches=2, seed=0)


def make_trainer(root: Path, max_steps: int, every_n_steps: int | None = None, **kwargs) -> L.Trainer:
    callbacks = list(kwargs.pop("callbacks", []))
    if every_n_steps:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every_n_steps, save_top_k=-1,
                                         save_last=True))
    return L.Trainer(
        default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=bool(every_n_steps),
        callbacks=callbacks, num_sanity_val_steps=0, **kwargs,
    )


def run_cli(*args: str, cwd: Path, script: str = "lightning") -> subprocess.CompletedProcess:
    """Run an installed console script (``lightning`` or ``canon-pl``) as a researcher would."""
    return subprocess.run([str(BIN / script), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def run_here(*args: str, capsys: pytest.CaptureFixture) -> subprocess.CompletedProcess:
    """``canon-pl <args>`` in this process (a fresh process costs seconds of imports; use :func:`run_cli` where the
    command's own process matters): its exit code and what it printed, as :func:`run_cli` returns them."""
    from canon_pl.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse and LightningCLI leave on a usage error or --help
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
    said = capsys.readouterr()
    return subprocess.CompletedProcess(["canon-pl", *args], code, said.out, said.err)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, options: str, why_skipped: str = "") -> Iterator[Path]:
    """A real tmpfs mounted at ``mount`` with ``options`` (e.g. ``size=192k`` or ``ro``) for the test's duration;
    the test is skipped where this machine allows no mounting (needs root)."""
    mount.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here ({result.stderr.decode().strip()}){why_skipped}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def own_k(architecture: str, k: int) -> dict[str, int]:
    """``{"k": k}`` for an architecture whose settings have a ``k`` (the TopK family), else ``{}``: a ``k`` given to
    a ReLU, JumpReLU or gated SAE is refused, not ignored."""
    from dataclasses import fields

    from canon_pl.sae import SETTINGS_CLASSES

    return {"k": k} if "k" in {f.name for f in fields(SETTINGS_CLASSES[architecture])} else {}
