"""The viewer opens on real runs and on an empty folder, without a browser (Streamlit AppTest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from canon_pl.sae import SAEConfig, build_sae
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
    specs = [chart.proto.spec for chart in app.get("vega_lite_chart")]
    assert any("FVU vs width" in spec for spec in specs) and any("FVU vs L0" in spec for spec in specs)
    assert len(specs) >= 5  # the two family charts and the training curves


def test_viewer_on_an_empty_folder_says_how_to_train(tmp_path: Path) -> None:
    app = AppTest.from_file(APP, default_timeout=60).run()
    app.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not app.exception
    assert "lightning fit" in app.info[0].value


def test_stitching_page_shows_the_pairs_counts_and_path(tmp_path: Path) -> None:
    import torch

    from canon_pl.stitching import analyze_pair, write_stitching_results
    from tests.test_stitching import random_trained_like

    small, large = random_trained_like(16, seed=1), random_trained_like(32, seed=2)
    with torch.no_grad():
        large.W_dec[:6] = small.W_dec[:6]  # some reconstruction latents
    result = analyze_pair(small, large, torch.randn(400, 32))
    write_stitching_results(result, tmp_path / "fam" / "stitching")
    (tmp_path / "fam" / "stitching" / "junk.json").write_text("[1, 2")  # skipped, not fatal
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params["page"] = "Stitching"
    app.run()
    app.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["novel latents"] == f"{result.summary['n_novel']:,}"
    assert metrics["reconstruction latents"] == f"{result.summary['n_reconstruction']:,}"
    assert result.summary["n_reconstruction"] >= 6
    assert len(app.get("vega_lite_chart")) >= 3
    assert len(app.dataframe[0].value) == 32


def test_stitching_page_without_results_says_how_to_make_them(tmp_path: Path) -> None:
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params["page"] = "Stitching"
    app.run()
    app.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not app.exception
    assert "canon-pl stitch" in app.info[0].value


def test_latent_page_shows_the_planted_token_and_deep_links_open_the_latent(tmp_path: Path) -> None:
    import torch

    from canon_pl.stats import collect_statistics, unembedding_directions, write_statistics
    from tests.test_stats import planted_run

    sae, batches, token = planted_run()
    collectors, contexts = collect_statistics({"8": sae}, batches, n_top=4, n_sample=3, window=2)
    unembedded = {"8": unembedding_directions(sae.W_dec.detach(), torch.randn(50, sae.d_in), n=3)}
    strings = {i: f"tok{i}" for i in range(50)} | {token: "PLANTED"}
    write_statistics(tmp_path / "run" / "stats", collectors, torch.cat(contexts), unembedded, {"model_id": "toy"},
                     token_strings=strings)
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params.update({"page": "Latent", "sae": "8", "latent": "0"})
    app.run()
    app.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not app.exception
    top = [m.value for m in app.markdown if "<b>" in m.value]
    assert top and all("<b>PLANTED</b>" in snippet for snippet in top[:4])
    app.sidebar.number_input[0].set_value(3).run()
    assert not app.exception and app.query_params["latent"] == "3"


def test_latent_page_shows_its_meta_decomposition(tmp_path: Path) -> None:
    import torch

    from canon_pl.meta import MetaAnalysis, MetaDecomposition, write_meta_analysis
    from canon_pl.stats import collect_statistics, unembedding_directions, write_statistics
    from tests.test_stats import planted_run

    sae, batches, _ = planted_run()
    collectors, contexts = collect_statistics({"8": sae}, batches, n_top=2, n_sample=2, window=1)
    family = tmp_path / "fam"
    write_statistics(family / "stats", collectors, torch.cat(contexts),
                     {"8": unembedding_directions(sae.W_dec.detach(), torch.randn(50, sae.d_in), n=3)}, {})
    decomposition = MetaDecomposition(torch.tensor([0, 0, 1, 2]), torch.tensor([3, 1, 3, 1]),
                                      torch.tensor([0.6, 0.3, 0.5, 0.2]), n_base=8, n_meta=4)
    summary = {"format": "canon_pl.meta_sae_analysis", "format_version": 1, "n_base": 8, "n_meta": 4,
               "base": {"source": str(family), "width": 8}}
    arrays = {"decomposition_base": decomposition.base, "decomposition_meta": decomposition.meta,
              "decomposition_value": decomposition.value}
    write_meta_analysis(MetaAnalysis(summary, decomposition, arrays), tmp_path / "meta")
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params.update({"page": "Latent", "sae": "8", "latent": "0"})
    app.run()
    app.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not app.exception
    table = app.dataframe[-1].value
    assert table["meta"].tolist() == [3, 1] and table["siblings"].tolist() == [[1], [2]]


def test_latent_page_places_a_family_latent_among_the_other_widths(tmp_path: Path) -> None:
    import torch

    from canon_pl.io import export_sae, write_family_manifest
    from canon_pl.stats import collect_statistics, unembedding_directions, write_statistics
    from tests.test_stats import planted_run

    sae, batches, _ = planted_run()  # the 8-latent member; latent 0 copied into a 4-latent member
    small = build_sae(SAEConfig(d_in=sae.d_in, d_sae=4, architecture="relu", hook_point="blocks.0", model_id="toy"))
    with torch.no_grad():
        small.W_dec[2] = sae.W_dec[0]
    family = tmp_path / "fam"
    export_sae(small, family / "4")
    export_sae(sae, family / "8")
    write_family_manifest(family, {4: "4", 8: "8"}, sae.cfg, tokens=0)
    collectors, contexts = collect_statistics({"8": sae}, batches, n_top=2, n_sample=2, window=1)
    write_statistics(family / "stats", collectors, torch.cat(contexts),
                     {"8": unembedding_directions(sae.W_dec.detach(), torch.randn(50, sae.d_in), n=3)}, {})
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params.update({"page": "Latent", "sae": "8", "latent": "0"})
    app.run()
    app.sidebar.text_input[0].set_value(str(tmp_path)).run()
    assert not app.exception
    nearest = app.dataframe[0].value
    assert nearest.iloc[0]["width"] == 4 and nearest.iloc[0]["latent"] == 2 and nearest.iloc[0]["cosine"] > 0.99
    assert any("reconstruction" in m.value for m in app.markdown)
