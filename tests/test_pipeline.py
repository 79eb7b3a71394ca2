"""`canon-pl pipeline` on a tiny config: every stage's artefact exists, loads and agrees with the report, and a
re-run skips what is done."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from canon_pl import load_sae
from canon_pl.data import ShardIndex
from canon_pl.io import load_family
from canon_pl.meta import read_meta_analysis
from canon_pl.stats import LatentStatistics
from canon_pl.stitching import read_stitching_results
from tests.helpers import REPO, run_cli, run_here


def tiny_configs(root: Path) -> Path:
    """The shipped study configs, shrunk: a 4k-token cache of pydoc-topics, a few steps, small analyses."""
    capture = yaml.safe_load((REPO / "configs" / "sae_smollm2.yaml").read_text())
    capture["data"]["init_args"].update({"text": "pydoc-topics", "batch_size": 256, "contexts_per_forward": 8,
                                         "block_contexts": 16})
    (root / "capture.yaml").write_text(yaml.safe_dump(capture))
    fit = yaml.safe_load((REPO / "configs" / "family_smollm2.yaml").read_text())
    run = str(root / "checkpoints" / "tiny")
    fit["trainer"].update({"max_steps": 6, "val_check_interval": 6, "log_every_n_steps": 2, "default_root_dir": run})
    fit["trainer"]["logger"]["init_args"]["save_dir"] = run
    callbacks = {callback["class_path"].rsplit(".", 1)[1]: callback for callback in fit["trainer"]["callbacks"]}
    callbacks["ModelCheckpoint"]["init_args"].update({"dirpath": f"{run}/ckpt", "every_n_train_steps": 3})
    callbacks["StitchingCallback"]["init_args"].update({"max_tokens": 512})
    fit["model"]["init_args"].update({"widths": [576, 1152]})
    fit["model"]["init_args"]["sae"]["dead_tokens_threshold"] = 2000
    fit["data"]["init_args"].update({"path": str(root / "cache"), "batch_size": 256, "shards_in_memory": 1})
    (root / "fit.yaml").write_text(yaml.safe_dump(fit))
    pipeline = yaml.safe_load((REPO / "configs" / "pipeline_smollm2.yaml").read_text())
    pipeline.update({"fit_config": str(root / "fit.yaml"),
                     "cache": {"config": str(root / "capture.yaml"), "tokens": 4096, "val_tokens": 1024},
                     "stitch": {"data": str(root / "cache"), "tokens": 1024, "granularity": True},
                     "meta_sae": {"k": 2, "steps": 5, "batch_size": 512, "baseline_steps": 0, "d_sae": 40,
                                  "floor_steps": 3, "data": str(root / "cache"), "tokens": 512,
                                  "sweep_d_sae_per_d_in": [0.1]},
                     "stats": {"text": "pydoc-topics", "tokens": 1024, "top": 4, "samples": 4},
                     "evaluate": {"data": str(root / "cache"), "tokens": 1024},
                     "matryoshka": yaml.safe_load((REPO / "configs" / "pipeline_smollm2_matryoshka.yaml").read_text())[
                         "matryoshka"],  # the study's Matryoshka arm, its comparison written where a commit would be
                     "matryoshka_results": str(root / "results" / "matryoshka.json"),
                     "calibrate": {"config": str(REPO / "configs" / "calibration_known_world.yaml"),
                                   "out": str(root / "calibration"), "fit_args": ["--trainer.max_steps", "20"],
                                   "held_out_tokens": 4096, "meta_steps": 5,
                                   "truth": {"d_in": 32, "n_plain": 40, "n_families": 0, "n_composite": 40,
                                                  "n_components": 10, "active_per_token": 2.0}}})
    (root / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return root / "pipeline.yaml"


def test_the_pipeline_runs_every_stage_and_a_rerun_skips_them(tmp_path: Path) -> None:
    config = tiny_configs(tmp_path)
    first = run_cli("pipeline", "--config", str(config), cwd=tmp_path, script="canon-pl")
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "checkpoints" / "tiny"
    family = load_family(run)
    assert family.widths == [576, 1152] and family.control_of(1152)[0] == "1152_seed1"
    results = {p.stem: read_stitching_results(p) for p in (run / "stitching").glob("*.json")}
    assert sorted(results) == ["576_1152"] and results["576_1152"]["n_tokens"] == 1024  # the stage's, not the callback's
    meta = read_meta_analysis(run / "meta_sae_1152")
    assert meta["n_meta"] == 40 and load_sae(run / "meta_sae_1152").d_sae == 40
    assert sorted(LatentStatistics.open(run / "stats").members) == ["1152", "576"]
    # each member's co-firing partner in the next smaller width and in its seed control, from the same pass
    kinds = {(p["kind"], p["other"]) for p in LatentStatistics.open(run / "stats").cofiring("1152", 0)}
    assert kinds == {("smaller", "576"), ("seed", "1152_seed1")}
    assert LatentStatistics.open(run / "meta_sae_1152" / "stats").index["kind"] == "meta_sae"

    for summary in results.values():  # every pair carries its cross-seed control and the moved/stuck split
        assert summary["control"] is not None and summary["control"]["name"].endswith("_seed1")
        assert summary["classes"]["stuck_at_init_fraction"] is not None
        # the spread, the replicate, the path's control and the granularity curves of pair and control
        assert len(summary["spread"]["per_chunk"]) == 8 and summary["control"]["replicate"] is not None
        assert summary["control"]["path_excess"] is not None
        assert summary["granularity"]["points"] and summary["control"]["granularity"]["points"]
    assert meta["floors"]["initial_decoder"] is not None and meta["floors"]["random_rows"] is not None
    assert meta["floors"]["gaussian_matched"] is not None and meta["floors"]["pca_shuffled"] is not None
    assert [e["n_meta"] for e in meta["width_sweep"]] == [58]  # 0.1 x d_in, read against its own floors

    report = (run / "report.md").read_text()
    identity = ShardIndex.load(tmp_path / "cache").text_identity  # the text, to the byte, in the cache and report
    assert f"Text: `pydoc-topics`: {identity['files']} files" in report and identity["sha256"][:12] in report
    for name, summary in results.items():  # the report's counts are the results files'
        small, large = name.split("_")
        c = summary["classes"]
        row = re.search(rf"\| {small} → {large} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| (\d+) \|", report)
        assert row, report
        assert float(row.group(1)) == pytest.approx(c["novel_fraction_definition"], abs=1e-3)
        assert float(row.group(2)) == pytest.approx(summary["control"]["novel_fraction_definition"], abs=1e-3)
        assert (int(row.group(4)), int(row.group(5))) == (summary["n_novel"], summary["n_reconstruction"])
    assert f"| {meta['fve']:.3f} |" in report
    assert "### Meta-SAE width sweep" in report and f"| {meta['width_sweep'][0]['fve']:.3f} |" in report
    assert "## Verdicts" in report and report.count("inconclusive") + report.count("reproduced") >= 3
    assert "### The path at every granularity of grouping" in report and "(report/granularity.png)" in report
    assert "A monotone path needs finer groups across widths than across seeds" in report
    assert "floor: gaussian matched" in report and "floor: pca shuffled" in report
    assert not re.search(r"^\| 40 \|", report, re.M)  # the family table lists the family, not the meta-SAE
    for image in re.findall(r"\]\((report/[^)]+\.png)\)", report):
        assert (run / image).stat().st_size > 1000
    # the Matryoshka beside the family: its prefixes a family with the other seed's as controls, stitched on the
    # stage's held-out tokens, its widest level meta-SAE'd; the report states the comparison with both controls
    prefixes = load_family(run / "matryoshka_prefixes")
    assert prefixes.widths == [576, 1152] and prefixes.control_of(1152)[0] == "1152_seed1"
    nested = read_stitching_results(run / "matryoshka_prefixes" / "stitching" / "576_1152.json", arrays=True)
    assert nested["n_tokens"] == 1024 and nested["control"] is not None
    assert nested["arrays"]["large_max_cos"][:576].min() > 0.999  # the smaller prefix's latents are L's own
    assert nested["classes"]["stuck_at_init_fraction"] is not None  # the prefixes know their initial decoders
    nested_meta = read_meta_analysis(run / "matryoshka_prefixes" / "meta_sae_1152")
    assert nested_meta["n_meta"] == 40 and nested_meta["floors"]["initial_decoder"] is not None
    assert "## Matryoshka prefixes against independent widths" in report
    assert "Nested (Matryoshka) prefixes are more canonical" in report
    assert re.search(r"\| 576 → 1152 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| 576 \|", report), report
    # the comparison as the committed document make main's report reads: a report without a Matryoshka of its own
    # shows the same tables and verdict, saying where they came from
    from canon_pl.study.matryoshka_results import read_comparison
    from canon_pl.study.report import write_report

    committed = read_comparison(tmp_path / "results" / "matryoshka.json")
    assert committed["run"] == "tiny" and committed["widths"] == [576, 1152]
    assert committed["verdict"]["claim"].startswith("Nested (Matryoshka) prefixes are more canonical")
    aside = tmp_path / "aside"
    (run / "matryoshka_prefixes").rename(aside)
    try:
        plain = write_report(run, run / "meta_sae_1152", matryoshka_results=tmp_path / "results" / "matryoshka.json")
        without = plain.read_text()
    finally:
        aside.rename(run / "matryoshka_prefixes")
    section = without[without.index("## Matryoshka prefixes against independent widths"):]
    assert f"From `{tmp_path / 'results' / 'matryoshka.json'}` (committed)" in section
    assert "measured on `tiny`" in without and committed["verdict"]["verdict"] in without
    assert re.search(r"\| 576 → 1152 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| 576 \|", section)
    assert section.split("\n\n", 3)[3][:300] in report  # the tables as the run's own report had them
    from canon_pl.viewer import find_runs, find_stitching_results

    shown = {r.name for r in find_runs(tmp_path / "checkpoints")}  # the viewer lists the prefixes as a family
    assert {"tiny/matryoshka_prefixes/576", "tiny/matryoshka_prefixes/1152", "tiny/matryoshka/1152"} <= shown
    labels = {pair.label for pair in find_stitching_results(tmp_path / "checkpoints")}
    assert "tiny/matryoshka_prefixes · 576 → 1152" in labels
    # SAEBench's core metrics per member and seed control, in the report's "choosing a width"
    from canon_pl.metrics.summary import SUMMARY

    evaluation = SUMMARY.read(run / "evaluation" / "summary.json")
    assert [(r["width"], r["seed_control"]) for r in evaluation["rows"]] == [(576, False), (1152, False), (1152, True)]
    assert "## Choosing a width: SAEBench's core metrics" in report and "| 1152_seed1 | 1152 | yes |" in report
    # the calibration ran first: the report opens each claim with its instrument's score on the known answer
    from canon_pl.calibration.report import read_calibration

    calibration = read_calibration(tmp_path / "calibration")
    assert sorted(calibration["worlds"]) == ["null", "planted"] and sorted(calibration["ideal_meta"]) == ["null", "planted"]
    assert first.stdout.index("calibrate ...") < first.stdout.index("cache ...")
    assert "## Calibration: the instruments on a known answer" in report and "| instrument on a known answer |" in report
    assert "stitching by the definition, 32 → 64" in report
    assert "streamlit run apps/viewer.py" in first.stdout
    assert "of which (share of the fit)" in first.stdout and "SAE steps" in first.stdout  # the fit's own parts
    # after each stage the time left, from the config's reference times at this machine's pace; the times and the
    # machine in the run folder and the report
    assert first.stdout.count("min left (") == 9 and "x the reference machine's times so far" in first.stdout
    from canon_pl.study.stage_times import read_stage_times

    recorded = read_stage_times(run)
    assert list(recorded) == ["calibrate", "cache", "fit", "stitch", "meta-sae", "stats", "meta stats", "evaluate",
                              "matryoshka"]
    assert all(entry["seconds"] > 0 and entry["machine"]["cpus"] for entry in recorded.values())
    assert "## How long each stage took" in report and "| fit |" in report and "torch threads" in report

    again = run_cli("pipeline", "--config", str(config), cwd=tmp_path, script="canon-pl")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already, skipped") == 9  # everything but the report


def test_a_stage_option_its_command_does_not_take_is_refused_before_any_stage_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in a late stage's options (the meta-SAE's) stops the pipeline at once, naming the option and what the
    stage takes, instead of after the cache and the fit have run."""
    config = tiny_configs(tmp_path)
    monkeypatch.chdir(tmp_path)
    pipeline = yaml.safe_load(config.read_text())
    pipeline["meta_sae"]["stepz"] = 5
    config.write_text(yaml.safe_dump(pipeline))
    result = run_here("pipeline", "--config", str(config), capsys=capsys)
    assert result.returncode == 2
    assert "meta_sae has no option stepz" in result.stderr and "steps" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "checkpoints").exists()
    del pipeline["meta_sae"]["stepz"]
    pipeline["evaluate"] = {"tokens": 1024}  # a stage section without what its command needs
    config.write_text(yaml.safe_dump(pipeline))
    result = run_here("pipeline", "--config", str(config), capsys=capsys)
    assert result.returncode == 2 and "evaluate needs data" in result.stderr
    assert not (tmp_path / "cache").exists()
    del pipeline["evaluate"]
    pipeline["reference_seconds"] = {"fit": 100, "stich": 5}  # a misspelt stage
    config.write_text(yaml.safe_dump(pipeline))
    result = run_here("pipeline", "--config", str(config), capsys=capsys)
    assert result.returncode == 2 and "reference_seconds must map study stages" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_each_stage_is_one_record_the_pipeline_reads_its_order_options_and_checks_from() -> None:
    """A new stage is one ``Stage``: the arguments the pipeline sets are its command's own, and the stages a config
    runs follow from the records (a release's family assembled instead of trained, optional stages by section)."""
    import importlib
    import inspect

    from canon_pl.study.stages import STAGES, stages_of

    for stage in STAGES:
        if stage.command is not None:
            module, name = stage.command
            parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
            assert set(stage.set_by_pipeline) <= set(parameters), stage.name
            assert set(stage.section_may_set) <= set(stage.set_by_pipeline), stage.name
    assert [s.name for s in stages_of({"release": None})] == ["cache", "fit", "stitch", "meta-sae", "stats",
                                                              "meta stats", "report"]
    assert [s.name for s in stages_of({"release": {"name": "r"}, "evaluate": {}, "calibrate": {}})] == [
        "calibrate", "cache", "family", "stitch", "meta-sae", "stats", "meta stats", "evaluate", "report"]


def test_a_new_stage_is_one_record_the_pipeline_runs_skips_when_done_and_the_report_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Registering a stage touches one place, ``STAGES``: the pipeline runs it in its order, skips it once its
    done-check reads its output back, and the report's stage times list it (the rest of the study is left out here:
    the run is an analysed family already)."""
    from canon_pl.study import stages
    from canon_pl.study.stages import Stage
    from tests.viewer_data import build_analysed_run

    run = build_analysed_run(tmp_path)["root"] / "fam"
    marker = run / "toy.txt"

    def run_toy(cfg: dict, device: str) -> int:
        marker.write_text(f"toy stage on {len(cfg['widths'])} widths")
        return 0

    toy = Stage("toy", run_toy, lambda cfg: marker.read_text().startswith("toy stage"), needs_family=False)
    monkeypatch.setattr(stages, "STAGES", (toy, stages.stage_named("report")))
    fit = {"trainer": {"max_steps": 1, "default_root_dir": str(run)},
           "model": {"class_path": "canon_pl.training.SAEFamilyModule",
                     "init_args": {"d_in": 32, "widths": [8, 16], "sae": {"k": 2}}},
           "data": {"class_path": "canon_pl.training.SyntheticActivationDataModule", "init_args": {"d_in": 32}}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"fit_config": str(tmp_path / "fit.yaml")}))
    first = run_here("pipeline", "--config", str(tmp_path / "pipeline.yaml"), capsys=capsys)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "[1/2] toy ..." in first.stdout and marker.read_text() == "toy stage on 2 widths"
    assert re.search(r"^\| toy \| [\d.]+ s \|", (run / "report.md").read_text(), re.M)
    again = run_here("pipeline", "--config", str(tmp_path / "pipeline.yaml"), capsys=capsys)
    assert again.returncode == 0 and "[1/2] toy: done already, skipped" in again.stdout


def test_the_matryoshka_arm_is_the_study_config_with_one_section_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """``base:`` overlays: the arm states only what it changes (its sections replace the base's whole), runs in the
    study's folder, and writes the comparison the study reads."""
    from canon_pl.commands.pipeline import load_pipeline_yaml
    from canon_pl.study.stages import stages_of

    monkeypatch.chdir(REPO)
    study = load_pipeline_yaml(Path("configs/pipeline_smollm2.yaml"))
    arm = load_pipeline_yaml(Path("configs/pipeline_smollm2_matryoshka.yaml"))
    assert "matryoshka" not in study and set(arm) == set(study) | {"matryoshka"}
    assert {k: v for k, v in arm.items() if k != "matryoshka"} == study
    assert "matryoshka" not in [s.name for s in stages_of(study)]
    assert "matryoshka" in [s.name for s in stages_of(arm)]


def test_the_time_left_scales_the_reference_times_by_this_machines_pace() -> None:
    from canon_pl.study.stage_times import estimate_left

    reference = {"cache": 100.0, "fit": 400.0, "stitch": 200.0}
    left, pace = estimate_left(reference, {"cache": 150.0}, ["fit", "stitch", "report"])
    assert pace == pytest.approx(1.5) and left == pytest.approx(900.0)  # 1.5 x (400 + 200); no reference: none
    assert estimate_left(reference, {"calibrate": 30.0}, ["fit"]) is None  # no stage with a reference ran yet


def test_stage_times_keep_the_order_the_stages_ran_in_and_a_rerun_replaces_its_stage(tmp_path: Path) -> None:
    from canon_pl.study.stage_times import read_stage_times, record_stage_time, stage_times_lines

    machine = {"machine": "x86_64", "cpus": 2, "torch_threads": 2, "torch": "2.13.0", "device": "cpu"}
    for stage, seconds in (("cache", 5.0), ("fit", 20.0), ("stitch", 3.0), ("cache", 6.0)):
        record_stage_time(tmp_path, stage, seconds, machine)
    recorded = read_stage_times(tmp_path)
    assert list(recorded) == ["fit", "stitch", "cache"] and recorded["cache"]["seconds"] == 6.0
    lines = "\n".join(stage_times_lines(tmp_path))
    assert "| fit | 20.0 s | 69.0% |" in lines and "x86_64 (2 CPU cores, 2 torch threads)" in lines
    (tmp_path / "stage_times.json").write_text("{not json")
    assert read_stage_times(tmp_path) == {} and stage_times_lines(tmp_path) == []


def test_the_matryoshka_fit_config_is_the_familys_with_one_nested_width_and_its_own_folders(tmp_path: Path) -> None:
    """Derived from the family's config: the widest width as a Matryoshka whose prefixes are the other widths, the
    family's data, steps and options, and checkpoints and logs that a family config places by hand moved into the
    Matryoshka's folder (never onto the family's own checkpoints)."""
    from canon_pl.commands.matryoshka import matryoshka_fit_config
    from canon_pl.errors import SettingError
    from canon_pl.io.layout import RunLayout

    family = yaml.safe_load(tiny_configs(tmp_path).parent.joinpath("fit.yaml").read_text())
    run = Path(family["trainer"]["default_root_dir"])
    derived = matryoshka_fit_config(family, run, [1])
    init = derived["model"]["init_args"]
    assert init["widths"] == [1152] and init["control_seeds"] == [1] and init["control_widths"] == [1152]
    assert init["sae"]["class_path"] == "canon_pl.sae.MatryoshkaBatchTopKSettings"
    assert init["sae"]["init_args"] == {**family["model"]["init_args"]["sae"], "prefix_fractions": [0.5]}
    assert derived["data"] == family["data"] and derived["trainer"]["max_steps"] == family["trainer"]["max_steps"]
    nested = RunLayout(RunLayout(run).matryoshka)
    assert derived["trainer"]["default_root_dir"] == str(nested.root)
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c for c in derived["trainer"]["callbacks"]}
    assert "StitchingCallback" not in callbacks  # one width: no pairs
    assert callbacks["ModelCheckpoint"]["init_args"]["dirpath"] == str(nested.checkpoints)
    assert derived["trainer"]["logger"]["init_args"]["save_dir"] == str(nested.root)
    assert family["trainer"]["callbacks"][0]["init_args"]["dirpath"] == f"{run}/ckpt"  # the family's untouched
    relu = {**family, "model": {**family["model"], "init_args": {**family["model"]["init_args"], "sae": {
        "class_path": "canon_pl.sae.ReLUSettings", "init_args": {"l1_coefficient": 1.0}}}}}
    with pytest.raises(SettingError, match="beside a BatchTopK family"):
        matryoshka_fit_config(relu, run, [1])
