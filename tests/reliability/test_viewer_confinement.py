"""The viewer serves whoever reaches its port: it listens on loopback when started as the README says, reads only
below the folder it was started on, and never follows a symlink out of it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from canon_pl.io import CheckpointError, export_sae, load_family, write_family_manifest
from canon_pl.sae import BatchTopKSettings, SAEConfig, build_sae
from canon_pl.viewer import find_runs, find_stitching_results, read_metrics
from canon_pl.viewer.latents import family_decoders, find_statistics
from canon_pl.viewer.meta import find_meta_runs
from tests.viewer_harness import health, serve_viewer
from tests.helpers import SMALL_DATA, make_trainer
from tests.viewer_data import build_analysed_run, open_viewer


def non_loopback_address() -> str | None:
    """This machine's address on its outward interface (no packet is sent), or ``None`` when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_viewer_started_as_the_readme_says_listens_on_loopback_only(tmp_path: Path) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback interface to try the viewer's port on")
    with serve_viewer(tmp_path) as url:  # `streamlit run apps/viewer.py` from the repository root, no address flag
        assert health(url) == "ok"
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, f"the viewer answers on {address}:{port}, not only loopback"


def test_the_folder_box_chooses_only_below_the_start_up_folder(tmp_path: Path) -> None:
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    export_sae(build_sae(SAEConfig(d_in=12, d_sae=8, architecture="relu")), elsewhere / "secret")
    app = open_viewer(start)
    app.sidebar.text_input[0].set_value(str(elsewhere)).run()
    assert not app.exception
    assert "outside the folder this viewer was started on" in app.error[0].value and "--any-folder" in app.error[0].value
    assert not app.dataframe  # nothing of the other folder was read or shown
    app.sidebar.text_input[0].set_value(str(start / ".." / "elsewhere")).run()
    assert app.error and not app.dataframe  # `..` does not climb out either
    opened = open_viewer(start, "--any-folder")
    opened.sidebar.text_input[0].set_value(str(elsewhere)).run()
    assert not opened.error and opened.dataframe[0].value["run"].tolist() == ["secret"]


def test_a_symlink_out_of_the_folder_is_never_followed(tmp_path: Path) -> None:
    outside = build_analysed_run(tmp_path / "outside")["root"]
    root = tmp_path / "served"
    root.mkdir()
    (root / "fam").symlink_to(outside / "fam", target_is_directory=True)
    (root / "meta").symlink_to(outside / "meta", target_is_directory=True)
    assert find_runs(outside) and find_statistics(outside) and find_stitching_results(outside) and find_meta_runs(outside)
    assert find_runs(root) == [] and find_statistics(root) == {} and find_stitching_results(root) == []
    assert find_meta_runs(root) == {}
    for page in ("Runs", "Stitching", "Latent", "Meta-latent", "Search"):
        app = open_viewer(root, page=page)
        assert not app.exception and app.info and "under" in app.info[0].value, page
    # inside a served family, a member folder that is a link out of it is not loaded either
    family = root / "own"
    family.mkdir()
    (family / "8").symlink_to(outside / "fam" / "8", target_is_directory=True)
    (family / "16").symlink_to(outside / "fam" / "16", target_is_directory=True)
    (family / "family.json").write_bytes((outside / "fam" / "family.json").read_bytes())
    assert family_decoders(outside / "fam") and family_decoders(family) == {}


@pytest.mark.parametrize("folder", ["../elsewhere", "/tmp/elsewhere", "a/b", ".."])
def test_a_family_manifest_naming_a_folder_outside_it_is_refused(tmp_path: Path, folder: str) -> None:
    sae = build_sae(SAEConfig(d_in=12, d_sae=8, architecture="relu", hook_point="h"))
    export_sae(sae, tmp_path / "elsewhere")
    write_family_manifest(tmp_path / "fam", {8: folder}, sae.cfg, tokens=0)
    with pytest.raises(CheckpointError, match="directly inside it"):
        load_family(tmp_path / "fam")


def test_training_curves_after_a_resume_show_the_whole_run(tmp_path: Path) -> None:
    """A run stopped at step 12 and resumed from its step-10 checkpoint logs two segments; the viewer shows both,
    the steps 10-12 trained twice only once (from the resumed segment)."""
    from lightning.pytorch.loggers import CSVLogger

    from canon_pl.training import SAEModule, SyntheticActivationDataModule

    def fit(max_steps: int, ckpt_path: str | None = None) -> None:
        trainer = make_trainer(tmp_path, max_steps=max_steps, every_n_steps=10, log_every_n_steps=1,
                               limit_val_batches=0)
        trainer.loggers = [CSVLogger(save_dir=tmp_path, name="logs")]
        trainer.fit(SAEModule(d_in=48, d_sae=96,
                              sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**SMALL_DATA), ckpt_path=ckpt_path)

    fit(12)
    fit(20, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt"))
    assert sorted(p.parent.name for p in tmp_path.glob("logs/*/metrics.csv")) == ["version_0", "version_1"]
    steps = read_metrics(tmp_path).dropna(subset=["train/fvu"])["step"].tolist()
    assert steps == sorted(set(steps)) and steps[0] <= 1 and steps[-1] >= 18, steps
