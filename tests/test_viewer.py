"""The viewer opens on real runs and on an empty folder, without a browser (Streamlit AppTest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from canon_pl.sae import BatchTopKSettings, SAEConfig, build_sae
from canon_pl.training import (
    SAEExportCallback,
    SAEModule,
    SyntheticActivationDataModule,
)
from canon_pl.viewer import find_runs
from tests.helpers import SMALL_DATA, make_trainer
from tests.viewer_data import build_analysed_run, open_viewer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning.pytorch.loggers import CSVLogger

    root = tmp_path_factory.mktemp("checkpoints")
    run = root / "toy"
    trainer = make_trainer(run, max_steps=30, val_check_interval=30, log_every_n_steps=5,
                           callbacks=[SAEExportCallback()])
    trainer.loggers = [CSVLogger(save_dir=run, name="logs")]
    trainer.fit(SAEModule(d_in=48, d_sae=96, sae=BatchTopKSettings(k=3)), SyntheticActivationDataModule(**SMALL_DATA))
    (root / "broken").mkdir()
    (root / "broken" / "cfg.json").write_text("{not json")
    return root


def test_runs_are_found_with_their_validation_metrics(checkpoints: Path) -> None:
    (run,) = find_runs(checkpoints)  # the corrupt folder is skipped, not fatal
    assert run.name == "toy" and run.row()["d_sae"] == 96
    assert "explained_variance" in run.row()


def test_viewer_shows_the_table_and_training_curves(checkpoints: Path) -> None:
    app = open_viewer(checkpoints)
    assert not app.exception
    assert app.dataframe[0].value["run"].tolist() == ["toy"]
    specs = [chart.proto.spec for chart in app.get("vega_lite_chart")]
    assert any("FVU vs width" in spec for spec in specs) and any("FVU vs L0" in spec for spec in specs)
    assert len(specs) >= 5  # the two family charts and the training curves


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
    app = open_page(tmp_path, page="Stitching")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["novel latents (by definition)"] == \
        f"{round(result.summary['classes']['novel_fraction_definition'] * 32):,}"
    assert metrics["novel by cosine (proxy)"] == f"{result.summary['n_novel']:,}"
    assert result.summary["n_reconstruction"] >= 6
    assert len(app.get("vega_lite_chart")) >= 3
    assert len(app.dataframe[0].value) == 32


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_analysed_run(tmp_path_factory.mktemp("analysed"))


def open_page(root: Path, **params: str) -> AppTest:
    app = open_viewer(root, **params)
    assert not app.exception, app.exception
    return app


@pytest.mark.parametrize("page", ["Runs", "Stitching", "Widths", "Latent", "Meta-latent", "Search"])
def test_every_page_renders_on_a_whole_run(analysed: dict, page: str) -> None:
    app = open_page(analysed["root"], page=page, q="PLANTED")
    assert not app.error and app.title[0].value == f"canon-pl · {page}"


@pytest.mark.parametrize("page, command", [("Runs", "lightning fit"), ("Stitching", "canon-pl stitch"),
                                           ("Widths", "canon-pl evaluate"), ("Latent", "canon-pl stats"), ("Meta-latent", "canon-pl meta-sae"),
                                           ("Search", "canon-pl stats")])
def test_every_page_on_an_empty_folder_says_what_creates_its_data(tmp_path: Path, page: str, command: str) -> None:
    app = open_page(tmp_path, page=page)
    assert command in app.info[0].value


def test_stitching_page_counts_equal_the_results_file_and_latents_link_to_their_pages(analysed: dict) -> None:
    app = open_page(analysed["root"], page="Stitching")
    s = analysed["stitching"]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["novel latents (by definition)"] == f"{round(s['classes']['novel_fraction_definition'] * 16):,}"
    assert metrics["novel by cosine (proxy)"] == f"{s['n_novel']:,}"
    table = app.dataframe[0].value
    row = table[table["latent"] == 3].iloc[0]
    assert row["class (cosine proxy)"] == "reconstruction" and row["nearest_small"] == 0
    assert row["page"] == "latent?run=fam&sae=16&latent=3"
    groups = "".join(m.value for m in app.markdown)
    assert 'href="latent?run=fam&amp;sae=8&amp;latent=0"' in groups  # the small latent that was split
    # "novel latents only" keeps the latents the headline counts: novel by the definition, not by the proxy
    app.toggle(key="stitching:novel_only").set_value(True).run()
    shown = app.dataframe[0].value
    assert len(shown) == round(s["classes"]["novel_fraction_definition"] * 16)
    assert set(shown["class (definition)"]) <= {"novel"}


def test_a_deep_link_opens_the_latent_with_its_class_nearest_latents_and_meta_latents(analysed: dict) -> None:
    app = open_page(analysed["root"], page="Latent", run="fam", sae="16", latent="3")
    assert app.sidebar.number_input[0].value == 3
    assert any("fam · 16 · latent 3" in h.value for h in app.subheader)
    top = [m.value for m in app.markdown if "<span" in m.value]
    assert top and all("<b> PLANTED</b>" in snippet for snippet in top[:4])
    assert any("reconstruction" in m.value for m in app.markdown)  # a copy of the small SAE's latent 0
    nearest = app.dataframe[0].value
    assert nearest.iloc[0]["latent"] == 0 and nearest.iloc[0]["cosine"] > 0.99
    assert nearest.iloc[0]["page"] == "latent?run=fam&sae=8&latent=0"
    # the copy fires on exactly its parent's tokens: its co-firing partner in the smaller width, Jaccard 1
    cofiring = [m.value for m in app.markdown if m.value.startswith("**co-firing**")]
    assert len(cofiring) == 1 and "in 8, the next smaller width" in cofiring[0] and "Jaccard 1.00" in cofiring[0]
    assert 'href="latent?run=fam&amp;sae=8&amp;latent=0"' in cofiring[0]
    readable = app.sidebar.dataframe[0].value  # the report's readability rule, best first
    assert list(readable.columns[:3]) == ["latent", "concentration", "frequency"]
    assert readable["concentration"].is_monotonic_decreasing
    expected = [m for m, _ in analysed["decomposition"].of_latent(3)]
    assert app.dataframe[1].value["meta"].tolist() == expected
    assert f'href="meta-latent?meta_run=meta&amp;meta={expected[0]}"' in "".join(
        m.value for m in app.markdown)


def test_meta_latent_page_ranks_its_member_latents_and_links_them(analysed: dict) -> None:
    decomposition = analysed["decomposition"]
    m = int(decomposition.meta_density().argmax())
    app = open_page(analysed["root"], page="Meta-latent", meta_run="meta", meta=str(m))
    members = next(d.value for d in app.dataframe if "latent" in d.value.columns)
    assert members["latent"].tolist() == [b for b, _ in decomposition.users_of(m)]
    assert members["activation"].is_monotonic_decreasing
    assert members["page"].tolist() == [f"latent?run=fam&sae=16&latent={b}" for b in members["latent"]]
    metrics = {x.label: x.value for x in app.metric}
    assert metrics["member latents"] == str(len(members))
    assert metrics["density"] == f"{len(members) / 16:.2%}"
    shared = [x.value for x in app.markdown if x.value.startswith('<a href="latent?run=fam&amp;sae=16')]
    assert len(shared) == min(5, len(members)) and all("<span" in x for x in shared)  # members by top context
    # the base SAE reads blocks.0 of a model whose depth its statistics do not record: no logit lens
    assert not any("promoted tokens" in x.value for x in app.markdown)
    assert any("Promoted tokens (the logit lens) are left out" in c.value for c in app.caption)


def test_the_meta_latent_page_reads_the_fve_against_its_floors_and_the_reports_verdict(tmp_path: Path) -> None:
    import shutil

    from canon_pl.meta import read_meta_analysis
    from canon_pl.study.report import family_frame, family_pairs, run_verdicts

    root = build_analysed_run(tmp_path)["root"]
    family = root / "fam"
    shutil.copytree(root / "meta", family / "meta_sae_16")  # the family's own meta-SAE, on its widest member
    meta = read_meta_analysis(family / "meta_sae_16", arrays=True)
    app = open_page(root, page="Meta-latent", meta_run="fam/meta_sae_16", meta="0")
    floors = next(d.value for d in app.dataframe if "FVE" in d.value.columns).set_index("meta-SAE on")["FVE"]
    assert floors["the base SAE's decoder rows"] == pytest.approx(meta["fve"])
    assert floors["floor: random rows"] == pytest.approx(meta["floors"]["random_rows"])
    verdicts, _ = run_verdicts(family_frame(family), [d["summary"] for d in family_pairs(family)], meta)
    said = next(v for v in verdicts if v.claim.startswith("Latents decompose"))
    assert any(f"{said.claim}: **{said.verdict}** — {said.why}" in m.value for m in app.markdown)
    elsewhere = open_page(root, page="Meta-latent", meta_run="meta", meta="0")  # not a family's: no verdict
    assert any("A meta-SAE of a single export" in c.value for c in elsewhere.caption)


def test_meta_latent_promoted_tokens_show_where_the_base_reads_deep_enough(tmp_path: Path) -> None:
    import json

    root = build_analysed_run(tmp_path)["root"]  # its own run: the viewer caches what it has read of others
    index = root / "fam" / "stats" / "stats.json"
    index.write_text(json.dumps(json.loads(index.read_text()) | {"hook_point": "blocks.0", "n_layers": 1}))  # the last
    app = open_page(root, page="Meta-latent", meta_run="meta", meta="0")
    assert any("promoted tokens" in x.value for x in app.markdown)


def test_search_finds_the_latents_that_fire_on_a_token(analysed: dict) -> None:
    from canon_pl.stats import LatentStatistics
    from canon_pl.viewer.search import search_latents

    stats = LatentStatistics.open(analysed["root"] / "fam" / "stats")
    found = search_latents(stats, "planted")  # case and surrounding spaces ignored
    assert found["top_hits"].is_monotonic_decreasing
    every = found[found["top_hits"] == 4]  # every top example peaks on the planted token
    assert {("8", 0), ("16", 3)} <= set(zip(every["sae"], every["latent"]))
    assert search_latents(stats, "no such token").empty
    assert search_latents(stats, "PLANT").empty and not search_latents(stats, "PLANT", whole=False).empty
    app = open_page(analysed["root"], page="Search", q="PLANTED")
    table = app.dataframe[0].value
    assert {"latent?run=fam&sae=8&latent=0", "latent?run=fam&sae=16&latent=3"} <= set(
        table[table["top_hits"] == 4]["page"])


def test_latent_page_shows_the_planted_token_and_deep_links_open_the_latent(tmp_path: Path) -> None:
    import torch

    from canon_pl.stats import (
        collect_statistics,
        unembedding_directions,
        write_statistics,
    )
    from tests.test_stats import planted_run

    sae, batches, token = planted_run()
    collectors, contexts, _ = collect_statistics({"8": sae}, batches, n_top=4, n_sample=3, window=2)
    unembedded = {"8": unembedding_directions(sae.W_dec.detach(), torch.randn(50, sae.d_in), n=3)}
    strings = {i: f"tok{i}" for i in range(50)} | {token: "PLANTED"}
    write_statistics(tmp_path / "run" / "stats", collectors, torch.cat(contexts), unembedded, {"model_id": "toy"},
                     token_strings=strings)
    app = open_page(tmp_path, page="Latent", sae="8", latent="0")
    top = [m.value for m in app.markdown if "<span" in m.value]
    assert top and all("<b>PLANTED</b>" in snippet for snippet in top[:4])
    app.sidebar.number_input[0].set_value(3).run()
    assert not app.exception and app.query_params["latent"] == "3"


def test_latent_page_shows_its_meta_decomposition(tmp_path: Path) -> None:
    import torch

    from canon_pl.meta import MetaAnalysis, MetaDecomposition, write_meta_analysis
    from canon_pl.stats import (
        collect_statistics,
        unembedding_directions,
        write_statistics,
    )
    from tests.test_stats import planted_run

    sae, batches, _ = planted_run()
    collectors, contexts, _ = collect_statistics({"8": sae}, batches, n_top=2, n_sample=2, window=1)
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
    app = open_page(tmp_path, page="Latent", sae="8", latent="0")
    table = app.main.dataframe[-1].value
    assert table["meta"].tolist() == [3, 1] and table["siblings"].tolist() == [[1], [2]]


def test_latent_page_places_a_family_latent_among_the_other_widths(tmp_path: Path) -> None:
    import torch

    from canon_pl.io import export_sae, write_family_manifest
    from canon_pl.stats import (
        collect_statistics,
        unembedding_directions,
        write_statistics,
    )
    from tests.test_stats import planted_run

    sae, batches, _ = planted_run()  # the 8-latent member; latent 0 copied into a 4-latent member
    small = build_sae(SAEConfig(d_in=sae.d_in, d_sae=4, architecture="relu", hook_point="blocks.0", model_id="toy"))
    with torch.no_grad():
        small.W_dec[2] = sae.W_dec[0]
    family = tmp_path / "fam"
    export_sae(small, family / "4")
    export_sae(sae, family / "8")
    write_family_manifest(family, {4: "4", 8: "8"}, sae.cfg, tokens=0)
    collectors, contexts, _ = collect_statistics({"8": sae}, batches, n_top=2, n_sample=2, window=1)
    write_statistics(family / "stats", collectors, torch.cat(contexts),
                     {"8": unembedding_directions(sae.W_dec.detach(), torch.randn(50, sae.d_in), n=3)}, {})
    app = open_page(tmp_path, page="Latent", sae="8", latent="0")
    nearest = app.dataframe[0].value
    assert nearest.iloc[0]["width"] == 4 and nearest.iloc[0]["latent"] == 2 and nearest.iloc[0]["cosine"] > 0.99
    # no stitching results for 4 -> 8: the page gives the cosine and how to get a class, and classifies nothing
    stated = [m.value for m in app.markdown if "against the 4-latent SAE" in m.value]
    assert stated and "best decoder cosine 1.00" in stated[0] and "canon-pl stitch" in stated[0]
    assert "reconstruction" not in stated[0] and "novel" not in stated[0]


def test_the_sae_box_lists_the_widths_narrowest_first(tmp_path: Path) -> None:
    """Not in the string order of their names, which puts 16 before 8."""
    import torch

    from canon_pl.stats import collect_statistics, unembedding_directions, write_statistics
    from tests.test_stats import planted_run

    sae, batches, _ = planted_run()  # 8 latents
    wide = build_sae(SAEConfig(d_in=sae.d_in, d_sae=16, architecture="relu", hook_point="blocks.0", model_id="toy"))
    collectors, contexts, _ = collect_statistics({"16": wide, "8": sae}, batches, n_top=2, n_sample=2, window=1)
    write_statistics(tmp_path / "fam" / "stats", collectors, torch.cat(contexts),
                     {name: unembedding_directions(m.W_dec.detach(), torch.randn(50, sae.d_in), n=3)
                      for name, m in (("16", wide), ("8", sae))}, {})
    app = open_page(tmp_path, page="Latent")
    box = next(b for b in app.sidebar.selectbox if b.label == "SAE")
    assert box.options == ["8", "16"] and box.value == "8"


@pytest.mark.parametrize("text", ["`code`", "snake_case", "*args", "$x$", ":file:", "<|im_start|>", "    indented",
                                  "a\nb", "[link](x)", "# heading", "it's \"quoted\""])
def test_a_token_is_shown_as_itself_whatever_markdown_or_html_it_contains(text: str) -> None:
    import html

    from canon_pl.viewer.latents import token_html

    shown = token_html(text)
    assert html.unescape(shown).replace("\xa0", " ") == text.replace("\n", "↵")
    assert not set(shown) & set("`*_$:<>[]()|\"'") and "  " not in shown


def test_stitching_charts_draw_every_latent_and_both_ends_of_the_path_from_few_rows() -> None:
    import numpy as np
    import pandas as pd

    from canon_pl.viewer.stitching import cosine_histogram, thin_path

    rng = np.random.default_rng(0)
    cos = rng.uniform(0, 1, 10_000)
    latents = pd.DataFrame({"max_cos": cos, "class": np.where(cos >= 0.7, "reconstruction", "novel")})
    histogram = cosine_histogram(latents)
    assert len(histogram) <= 100
    assert histogram.groupby("class")["count"].sum().to_dict() == latents["class"].value_counts().to_dict()
    path = pd.DataFrame({"point": range(30_001), "fvu": rng.uniform(size=30_001)})
    drawn = thin_path(path)
    assert len(drawn) <= 2_001 and drawn["point"].iloc[0] == 0 and drawn["point"].iloc[-1] == 30_000
    assert thin_path(path.head(10)).equals(path.head(10))


def test_a_meta_sae_inside_a_family_folder_is_not_drawn_as_a_member(tmp_path: Path) -> None:
    from canon_pl.io import export_sae, write_family_manifest
    from canon_pl.viewer.charts import family_table

    cfg = None
    for width in (8, 16):
        sae = build_sae(SAEConfig(d_in=12, d_sae=width, architecture="relu", hook_point="h"))
        export_sae(sae, tmp_path / "fam" / str(width))
        cfg = sae.cfg
    write_family_manifest(tmp_path / "fam", {8: "8", 16: "16"}, cfg, tokens=0)
    export_sae(build_sae(SAEConfig(d_in=12, d_sae=3, architecture="relu")), tmp_path / "fam" / "meta_sae_16")
    rows = {r.name: r.row()["family"] for r in find_runs(tmp_path)}
    assert rows == {"fam/8": "fam", "fam/16": "fam", "fam/meta_sae_16": "fam/meta_sae_16"}
    import pandas as pd

    table = pd.DataFrame([r.row() | {"explained_variance": 0.5} for r in find_runs(tmp_path)])
    assert sorted(family_table(table).groupby("family")["d_sae"].apply(list).to_dict().items()) == [
        ("fam", [8, 16]), ("fam/meta_sae_16", [3])]


def test_the_latent_page_states_the_class_the_stitching_results_decided(analysed: dict) -> None:
    """The class of a latent against the next smaller SAE comes from that pair's results file (its tau, both
    classifications), not from a threshold of the viewer's own."""
    app = open_page(analysed["root"], page="Latent", run="fam", sae="16", latent="3")
    stated = [m.value for m in app.markdown if "against the 8-latent SAE" in m.value]
    assert stated and f"τ = {analysed['stitching']['tau']}" in stated[0]
    assert "reconstruction by definition, reconstruction by cosine" in stated[0]


def test_stored_classes_are_read_as_the_analysis_wrote_them() -> None:
    import torch

    from canon_pl.viewer.stitching import latent_classes

    arrays = {"large_max_cos": torch.tensor([0.9, 0.2]), "large_fire_count": torch.tensor([5, 5]),
              "large_delta_mse": torch.tensor([1.0, -1.0])}
    assert latent_classes({"tau": 0.7}, arrays) == {"cosine": ["reconstruction", "novel"],
                                                    "definition": ["reconstruction", "novel"]}
    stored = {**arrays, "large_novel_cosine": torch.tensor([1, 0], dtype=torch.uint8),
              "large_novel_definition": torch.tensor([0, 0], dtype=torch.uint8)}
    assert latent_classes({"tau": 0.7}, stored) == {"cosine": ["novel", "reconstruction"],
                                                    "definition": ["reconstruction", "reconstruction"]}


def test_every_listed_page_is_one_file_and_every_page_file_is_listed() -> None:
    """The page list is stated once (``PAGES``): adding a page is one file in ``apps/viewer_pages/`` and its title."""
    import ast

    from canon_pl.viewer.links import PAGES, page_module

    pages = Path(__file__).resolve().parents[1] / "apps" / "viewer_pages"
    files = {p.stem for p in pages.glob("*.py")} - {"__init__", "common"}
    assert files == {page_module(page) for page in PAGES}
    for name in files:
        tree = ast.parse((pages / f"{name}.py").read_text())
        assert any(isinstance(node, ast.FunctionDef) and node.name == "render" for node in tree.body), name


def test_every_view_url_names_its_page_and_parameters_back() -> None:
    """A link made by page_url is read back the same (the benchmark and the screenshots open views by URL)."""
    from canon_pl.viewer.links import PAGES, page_url, parse_view

    for page in PAGES:
        assert parse_view(page_url(page, run="fam", latent=3)) == (page, {"run": "fam", "latent": "3"})
        assert parse_view(page_url(page)) == (page, {})
    with pytest.raises(ValueError, match="names no viewer page"):
        parse_view("nowhere?run=fam")


def study_shaped_run(root: Path) -> dict:
    """A family of two widths with L's other seed as the cross-seed control, and beside it the prefixes of a
    Matryoshka SAE as their own family (``matryoshka_prefixes/``, members recording ``training.prefix_of``), each
    stitched: what `make main` leaves, in miniature."""
    import torch

    from canon_pl.io import export_sae, write_family_manifest
    from canon_pl.io.export import PREFIX_OF
    from canon_pl.stitching import analyze_pair, write_stitching_results
    from tests.test_stitching import random_trained_like

    small, large, other = (random_trained_like(w, seed=s) for w, s in ((16, 1), (32, 2), (32, 3)))
    x = torch.randn(400, 32)
    study = analyze_pair(small, large, x, control=other, control_name="32_seed1", granularity=True)
    write_stitching_results(study, root / "fam" / "stitching")
    for folder, sae in (("16", small), ("32", large), ("32_seed1", other)):
        export_sae(sae, root / "fam" / folder)
    write_family_manifest(root / "fam", {16: "16", 32: "32"}, small.cfg, tokens=0,
                          controls={"32_seed1": {"width": 32, "init_seed": 3}})
    prefixes = root / "fam" / "matryoshka_prefixes"
    whole = {"d_sae": 32, "architecture": "batchtopk"}
    for width, sae in ((16, small), (32, large)):
        export_sae(sae, prefixes / str(width), extra={"training": {PREFIX_OF: whole}})
    write_family_manifest(prefixes, {16: "16", 32: "32"}, small.cfg, tokens=0)
    write_stitching_results(analyze_pair(small, large, x), prefixes / "stitching")
    return {"study": study.summary}


def test_the_stitching_page_opens_on_the_study_pair_with_the_definition_and_its_control_first(tmp_path: Path) -> None:
    s = study_shaped_run(tmp_path)["study"]
    app = open_page(tmp_path, page="Stitching")
    assert app.sidebar.selectbox[0].value == "fam · 16 → 32"  # not the prefixes, which sort first by name
    assert app.sidebar.selectbox[0].options == ["fam · 16 → 32", "fam/matryoshka_prefixes · 16 → 32"]
    labels = [m.label for m in app.metric]
    assert labels[:2] == ["novel latents (by definition)", "cross-seed control (by definition)"]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["cross-seed control (by definition)"] == f"{s['control']['novel_fraction_definition']:.1%}"
    assert metrics["per-chunk spread"] == f"± {s['spread']['std']:.1%}"
    assert labels.index("novel by cosine (proxy)") > labels.index("per-chunk spread")  # the proxy comes second
    specs = " ".join(chart.proto.spec for chart in app.get("vega_lite_chart"))
    assert "step along the path" in specs and "decoder_bias" in specs  # the path by step, its kinds told apart
    assert any("steps lie above the worse endpoint" in c.value and "between two seeds of L" in c.value
               for c in app.caption)
    # the pair against its control: the same charts for L against L's other seed, drawn from the stored path
    assert any(h.value.startswith("The control: L against its other seed (32_seed1)") for h in app.subheader)
    assert "stitching path from L to its other seed" in specs
    from canon_pl.viewer.stitching import load_pair

    control = load_pair(tmp_path / "fam" / "stitching" / "16_32.json")["control"]
    mse = control["path"]["mse"]
    assert mse.max() / max(mse.iloc[0], mse.iloc[-1]) - 1 == pytest.approx(s["control"]["path_excess"], rel=1e-5)
    assert control["histogram"]["count"].sum() == 32  # every latent of L's other seed, binned
    # the path at every granularity of grouping, pair and control, as the report draws it
    assert any(h.value == "The path at every granularity of grouping" for h in app.subheader)
    assert "path peak against group granularity" in specs
    # what the report concludes on the family, from the report's own function and rules
    from canon_pl.study.report import family_frame, family_pairs, run_verdicts

    run = tmp_path / "fam"
    verdicts, _ = run_verdicts(family_frame(run), [d["summary"] for d in family_pairs(run)], None)
    said = "".join(m.value for m in app.markdown)
    assert "The report's verdicts on this family" in said
    assert all(f"{v.claim}: **{v.verdict}** — {v.why}" in said for v in verdicts[:3])
    prefixes = open_page(tmp_path, page="Stitching", run="fam/matryoshka_prefixes")  # ?run= picks the run's pair
    assert prefixes.sidebar.selectbox[0].value == "fam/matryoshka_prefixes · 16 → 32"
    assert any("Matryoshka prefixes" in c.value for c in prefixes.caption)
    assert "The report's verdicts on this family" not in "".join(m.value for m in prefixes.markdown)
    # what the Matryoshka verdict rests on: the seeds' share of the prefix against the independent SAE's, and the
    # caveat that the added latents' novelty holds by construction
    from canon_pl.study.verdicts import large_l0, seed_consistency

    shares = next(m.value for m in prefixes.markdown if m.value.startswith("**Seeds share**"))
    assert f"another seed matches — of the 32-latent prefix's latents" in shares  # these prefixes have no control
    assert f"and {seed_consistency(s):.1%} (L0 {large_l0(s):.1f}) of the independently trained SAE's" in shares
    assert "holds by construction and decides nothing" in shares
    stale = open_page(tmp_path, page="Stitching", run="gone")
    assert "no stitching results for run 'gone'" in stale.warning[0].value


def test_the_runs_page_gives_every_member_its_ev_and_rows_at_init_prefixes_included(tmp_path: Path) -> None:
    from canon_pl.stitching import read_stitching_results

    study_shaped_run(tmp_path)
    prefix_pair = read_stitching_results(tmp_path / "fam" / "matryoshka_prefixes" / "stitching" / "16_32.json")
    table = open_page(tmp_path, page="Runs").dataframe[0].value.set_index("run")
    ev = table["EV (stitching tokens)"]  # prefixes log no validation metrics: their EV on the stitching tokens
    assert ev["fam/matryoshka_prefixes/16"] == pytest.approx(1 - prefix_pair["fvu_small"])
    assert ev["fam/matryoshka_prefixes/32"] == pytest.approx(1 - prefix_pair["fvu_large"])
    assert table["rows at init"].isna().all()  # these exports record no init seed: unknown, not zero


def test_the_runs_page_says_how_many_rows_an_sae_left_at_init(tmp_path: Path) -> None:
    import torch

    from canon_pl.io import export_sae
    from canon_pl.sae import initial_sae

    cfg = SAEConfig(d_in=24, d_sae=48, architecture="relu")
    export_sae(initial_sae(cfg, 5), tmp_path / "untrained", extra={"training": {"init_seed": 5}})
    trained = initial_sae(cfg, 5)
    with torch.no_grad():
        trained.W_dec[:12] = -trained.W_dec[:12]  # a quarter of the rows moved away from their initialisation
    export_sae(trained, tmp_path / "quarter", extra={"training": {"init_seed": 5}})
    table = open_page(tmp_path, page="Runs").dataframe[0].value.set_index("run")
    assert table.loc["untrained", "rows at init"] == 1.0 and table.loc["quarter", "rows at init"] == 0.75


def test_the_runs_page_keeps_meta_saes_out_of_the_width_charts(analysed: dict) -> None:
    app = open_page(analysed["root"], page="Runs")
    assert sorted(app.dataframe[0].value["run"]) == ["fam/16", "fam/8"]
    assert app.dataframe[1].value["run"].tolist() == ["meta"]
    assert [h.value for h in app.subheader][:2] == ["SAEs", "Meta-SAEs"]
    specs = " ".join(chart.proto.spec for chart in app.get("vega_lite_chart"))
    assert '"meta"' not in specs
    box = next(b for b in app.sidebar.selectbox if b.label == "run")  # the training chart opens on a token SAE
    assert box.value != "meta" and box.options[-1] == "meta"


def test_the_meta_latent_page_opens_on_the_shallowest_meta_sae(analysed: dict, tmp_path: Path) -> None:
    """A study's own meta-SAE before its Matryoshka prefixes' (nested one folder deeper), not string order."""
    import shutil

    from canon_pl.viewer.meta import find_meta_runs

    shutil.copytree(analysed["root"] / "meta", tmp_path / "run" / "meta_sae_16")
    shutil.copytree(analysed["root"] / "meta", tmp_path / "run" / "matryoshka_prefixes" / "meta_sae_16")
    assert list(find_meta_runs(tmp_path)) == ["run/meta_sae_16", "run/matryoshka_prefixes/meta_sae_16"]


def test_seed_controls_are_bars_at_their_width_not_points_on_the_family_line(tmp_path: Path) -> None:
    from canon_pl.io import export_sae, write_family_manifest
    from tests.test_stitching import random_trained_like

    family = tmp_path / "fam"
    for folder, width, seed in (("8", 8, 1), ("16", 16, 2), ("16_seed1", 16, 3)):
        export_sae(random_trained_like(width, seed=seed), family / folder)
    sae = random_trained_like(8, seed=1)
    write_family_manifest(family, {8: "8", 16: "16"}, sae.cfg, tokens=0,
                          controls={"16_seed1": {"width": 16, "init_seed": 1}})
    runs = {r.name: r for r in find_runs(tmp_path)}
    assert runs["fam/16_seed1"].seed_control and runs["fam/16_seed1"].family == "fam"
    assert not runs["fam/16"].seed_control

    import pandas as pd

    from canon_pl.viewer.charts import family_charts

    ev = {"fam/8": 0.8, "fam/16": 0.9, "fam/16_seed1": 0.85}
    table = pd.DataFrame([r.row() | {"explained_variance": ev[name]} for name, r in runs.items()])
    spec = family_charts(table)[0].to_dict()
    line, bars = spec["layer"]
    datasets = spec["datasets"]
    assert sorted(datasets[line["data"]["name"]][i]["run"] for i in range(2)) == ["fam/16", "fam/8"]
    (bar,) = datasets[bars["data"]["name"]]
    assert bar["d_sae"] == 16 and bar["count"] == 2 and bar["min"] == pytest.approx(0.1) and \
        bar["max"] == pytest.approx(0.15)


def test_a_latent_names_its_seed_partner_with_the_cosine(tmp_path: Path) -> None:
    """The latent page says whether another seed of the same width found the same direction (the cross-seed
    control, latent by latent)."""
    import torch

    from canon_pl import load_sae
    from canon_pl.io import export_sae, write_family_manifest
    from canon_pl.viewer.latents import control_decoders, family_decoders, seed_partners

    root = build_analysed_run(tmp_path)["root"]
    family = root / "fam"
    other = load_sae(family / "16")
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        other.W_dec[5:] = torch.randn_like(other.W_dec[5:])  # latents 0-4 found again by the other seed, the rest not
        other.W_dec.copy_(other.W_dec[order])  # in another order, as another seed would
    export_sae(other, family / "16_seed1")
    write_family_manifest(family, {8: "8", 16: "16"}, load_sae(family / "8").cfg, tokens=0,
                          controls={"16_seed1": {"width": 16, "init_seed": 1}})
    (row,) = seed_partners(family_decoders(family), control_decoders(family), "16", 3).itertuples()
    assert row.control == "16_seed1" and int(order[row.latent]) == 3 and row.cosine == pytest.approx(1.0, abs=1e-5)
    app = open_page(root, page="Latent", run="fam", sae="16", latent="3")
    assert any("its seed partner" in m.value and "the same direction" in m.value for m in app.markdown)


def test_a_stale_link_says_what_it_could_not_find(analysed: dict) -> None:
    app = open_page(analysed["root"], page="Latent", run="family_gone", sae="16", latent="3")
    assert "the link asks for run 'family_gone', which is not in this folder" in app.warning[0].value


def test_a_report_link_opens_the_latent_it_names(analysed: dict) -> None:
    """The report's example decompositions link into the viewer (`canon-pl view` on the run's parent folder); the
    link's view opens that very latent."""
    from canon_pl.study.report import viewer_latent_link
    from canon_pl.viewer.links import LOCAL_VIEWER, parse_view

    root = analysed["root"]
    url = viewer_latent_link(root / "fam", "16", 3)
    assert url.startswith(f"{LOCAL_VIEWER}/latent?")
    page, params = parse_view(url.removeprefix(f"{LOCAL_VIEWER}/"))
    app = open_page(root, page=page, **params)
    assert not app.warning and any("fam · 16 · latent 3" in h.value for h in app.subheader)


def test_a_seed_bar_spans_the_seeds_of_a_width_and_never_its_sparsity_variants() -> None:
    from canon_pl.viewer.widths import find_evaluations, width_charts, width_l0_charts

    def row(name: str, width: int, ev: float, l0: float, seed: bool = False, variant: dict | None = None) -> dict:
        return {"name": name, "width": width, "seed_control": seed, "variant": variant,
                "metrics": {"explained_variance": ev, "l0": l0}}

    table = find_evaluations([("fam", {"rows": [
        row("8", 8, 0.80, 4), row("16", 16, 0.85, 4), row("16_seed1", 16, 0.84, 4, seed=True),
        row("16_k8", 16, 0.95, 8, variant={"k": 8})]})])
    ev = width_charts(table)[0].to_dict()
    line, bars = ev["layer"]
    datasets = ev["datasets"]
    assert [r["name"] for r in datasets[line["data"]["name"]]] == ["8", "16"]  # the variant is no member of the line
    assert [(r["width"], r["min"], r["max"]) for r in datasets[bars["data"]["name"]]] == [(16, 0.84, 0.85)]
    l0 = width_l0_charts(table)[0].to_dict()  # the variant is drawn against L0, beside its width's own point
    assert sorted(r["name"] for r in l0["datasets"][l0["data"]["name"]]) == ["16", "16_k8", "8"]


def test_the_widths_page_draws_each_metric_against_width_with_the_seeds_as_a_bar(tmp_path: Path) -> None:
    from canon_pl.commands.evaluate import evaluate
    from tests.test_evaluate import small_family

    family = small_family(tmp_path)
    assert evaluate(str(family), data=str(tmp_path / "cache"), tokens=256) == 0
    app = open_page(tmp_path, page="Widths")
    table = app.dataframe[0].value
    assert table[["name", "width", "seed_control"]].values.tolist() == [["16", 16, False], ["32", 32, False],
                                                                         ["32_seed1", 32, True]]
    specs = [chart.proto.spec for chart in app.get("vega_lite_chart")]
    assert any("explained variance vs width" in spec for spec in specs)
    assert all("CE score" not in spec for spec in specs)  # evaluated on a cache: no LM figures to draw
    assert len(app.dataframe) == 1  # a cache gives no token labels: no probes to list
    # a family evaluated on text lists the latent that carries each probe, linked to its Latent page
    summary = json.loads((family / "evaluation" / "summary.json").read_text())
    summary["rows"][1]["probing"] = {"code": {"top_k_accuracy": {"1": 0.81, "5": 0.9}, "carrier": {
        "latent": 7, "class": "novel", "seed_partner": {"sae": "32_seed1", "latent": 2, "cosine": 0.93,
                                                        "is_its_best_latent": True}}}}
    (family / "evaluation" / "summary.json").write_text(json.dumps(summary))
    probes = open_page(tmp_path, page="Widths").dataframe[1].value
    assert probes[["SAE", "task", "k=1", "latent", "class", "seed partner"]].values.tolist() == [
        ["32", "code", 0.81, 7, "novel", 2]]
    assert probes["page"].tolist() == ["latent?run=fam&sae=32&latent=7"]
    # one family chosen: the width the report recommends, with its rule and each step, from the report's function
    from canon_pl.study.report import family_pairs
    from canon_pl.study.verdicts import recommended_width

    pairs = [d["summary"] for d in family_pairs(family)] if (family / "stitching").is_dir() else []
    width, why = recommended_width(summary["rows"], summary.get("seed_spread") or {}, pairs)
    said = "".join(m.value for m in open_page(tmp_path, page="Widths", run="fam").markdown)
    assert f"**Recommended width: {width:,}**" in said and why and all(line in said for line in why)
    (family / "evaluation" / "summary.json").write_text("{")  # damaged: named, the page still opens
    damaged = open_page(tmp_path, page="Widths")
    assert "left out" in damaged.warning[0].value and "summary.json" in damaged.warning[0].value
