"""The viewer opens on real runs and on an empty folder, without a browser (Streamlit AppTest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from canon_pl.training import SAEExportCallback, SAEModule, SyntheticActivationDataModule
from canon_pl.viewer import find_runs
from tests.helpers import SMALL_DATA, make_trainer

APP = str(Path(__file__).resolve().parents[1] / "apps" / "viewer.py")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning.pytorch.loggers import CSVLogger

    root = tmp_path_factory.mktemp("checkpoints")
    run = root / "toy"
    trainer = make_trainer(run, max_steps=30, val_check_interval=30, log_every_n_steps=5,
                           callbacks=[SAEExportCallback()])
    trainer.loggers = [CSVLogger(save_dir=run, name="logs")]
    trainer.fit(SAEModule(d_in=48, d_sae=96, k=3), SyntheticActivationDataModule(**SMALL_DATA))
    (root / "broken").mkdir()
    (root / "broken" / "cfg.json").write_text("{not json")
    return root


def test_runs_are_found_with_their_validation_metrics(checkpoints: Path) -> None:
    (run,) = find_runs(checkpoints)  # the corrupt folder is skipped, not fatal
    assert run.name == "toy" and run.row()["d_sae"] == 96
    assert "explained_variance" in run.row()


def test_viewer_shows_the_table_and_training_curves(checkpoints: Path) -> None:
    app = AppTest.from_file(APP, default_timeout=60).run()
    app.sidebar.text_input[0].set_value(str(checkpoints)).run()
    assert not app.exception
    assert app.dataframe[0].value["run"].tolist() == ["toy"]
    assert len(app.get("vega_lite_chart")) >= 3


def test_viewer_on_an_empty_folder_says_how_to_train(tmp_path: Path) -> None:
    app = AppTest.from_file(APP, default_timeout=60).run()
    app.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not app.exception
    assert "lightning fit" in app.info[0].value
