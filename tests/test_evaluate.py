"""SAEBench's core metrics: known answers on planted reconstructions and weights, and `canon-pl evaluate` on a family
(members and a seed control) from an activation cache and, through the bundled model, from text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from canon_pl.metrics.core import CoreMetrics, max_cosine_to_others, weight_metrics
from tests.test_stitching import orthonormal, random_trained_like, sparse_data, tied_sae


def test_a_perfect_reconstruction_and_a_halved_one_give_the_known_figures() -> None:
    x = torch.randn(500, 16) + 3.0
    acts = torch.zeros(500, 3)
    acts[:250, 0] = 2.0  # latent 0 fires on half the tokens
    acts[:25, 1] = -1.0  # latent 1 on 5 %
    perfect = CoreMetrics(3)
    perfect.update(x, x.clone(), acts)
    m = perfect.compute()
    assert m["reconstruction_quality"] == pytest.approx({"explained_variance": 1.0, "mse": 0.0, "cossim": 1.0})
    assert m["shrinkage"]["l2_ratio"] == pytest.approx(1.0) and m["shrinkage"]["relative_reconstruction_bias"] == \
        pytest.approx(1.0)
    assert m["sparsity"] == pytest.approx({"l0": 275 / 500, "l1": (250 * 2 + 25) / 500})
    assert m["misc_metrics"] == pytest.approx({"frac_alive": 2 / 3, "freq_over_1_percent": 2 / 3,
                                               "freq_over_10_percent": 1 / 3,
                                               "normalized_freq_over_1_percent": 1.0,
                                               "normalized_freq_over_10_percent": 0.5 / 0.55})
    assert m["token_stats"]["total_tokens_eval_reconstruction"] == 500
    # a reconstruction that shrinks every token to half: same direction, half the norm, biased by one half
    halved = CoreMetrics(3)
    for rows in torch.arange(500).split(128):  # batches add up to the same figures
        halved.update(x[rows], 0.5 * x[rows], acts[rows])
    h = halved.compute()
    assert h["reconstruction_quality"]["cossim"] == pytest.approx(1.0)
    assert h["shrinkage"]["l2_ratio"] == pytest.approx(0.5) and h["shrinkage"]["relative_reconstruction_bias"] == \
        pytest.approx(0.5)
    assert h["reconstruction_quality"]["mse"] == pytest.approx(float((0.5 * x).pow(2).mean()), rel=1e-6)
    assert h["shrinkage"]["l2_norm_out"] == pytest.approx(0.5 * h["shrinkage"]["l2_norm_in"])


def test_weight_cosines_of_a_tied_orthonormal_sae_and_of_a_duplicated_latent() -> None:
    rows = orthonormal(8)
    tied = tied_sae(rows)
    w = weight_metrics(tied.W_enc, tied.W_dec)
    assert torch.allclose(w["encoder_decoder_cosine_sim"], torch.ones(8), atol=1e-5)
    assert w["max_decoder_cosine_sim"].abs().max() < 1e-5 and w["max_encoder_cosine_sim"].abs().max() < 1e-5
    duplicated = torch.cat([rows, rows[:1]])  # latent 8 repeats latent 0
    best = max_cosine_to_others(duplicated, chunk=3)  # chunks smaller than the rows: the same answer
    assert best[0] == pytest.approx(1.0) and best[8] == pytest.approx(1.0) and best[1:8].abs().max() < 1e-5
    with pytest.raises(ValueError, match="transposed"):
        weight_metrics(tied.W_dec, tied.W_dec)


def small_family(root: Path) -> Path:
    """A 16- and a 32-latent SAE with a seed control of the 32 (random weights), and a cache with a held-out part."""
    from canon_pl.data.shards import write_activation_shards
    from canon_pl.io import export_sae, write_family_manifest

    family = root / "fam"
    saes = {"16": random_trained_like(16, seed=1), "32": random_trained_like(32, seed=2),
            "32_seed1": random_trained_like(32, seed=3)}
    for name, sae in saes.items():
        export_sae(sae, family / name)
    write_family_manifest(family, {16: "16", 32: "32"}, saes["16"].cfg, tokens=0,
                          controls={"32_seed1": {"width": 32, "init_seed": 1}})
    data = sparse_data(orthonormal(32), n=1024)
    write_activation_shards([data[:512]], root / "cache", tokens_per_shard=512, dtype="float32",
                            metadata={"hook_point": "blocks.0"}, val_batches=[data[512:]])
    return family


def test_evaluate_writes_a_saebench_core_file_per_sae_and_the_seed_spread(tmp_path: Path, capsys) -> None:
    from canon_pl.cli import main
    from canon_pl.study.evaluate import core_metrics
    from canon_pl.metrics.summary import SUMMARY
    from canon_pl.io import load_sae
    from canon_pl.metrics.reconstruction import explained_variance_of

    family = small_family(tmp_path)
    assert main(["evaluate", str(family), "--data", str(tmp_path / "cache"), "--tokens", "400"]) == 0, \
        capsys.readouterr().err
    out = family / "evaluation"
    assert sorted(p.name for p in out.iterdir()) == ["16.core.json", "32.core.json", "32_seed1.core.json",
                                                     "summary.json"]
    core = json.loads((out / "32.core.json").read_text())
    assert core["eval_type_id"] == "core" and core["eval_config"]["n_tokens"] == 400
    assert set(core["eval_result_metrics"]) == {"model_behavior_preservation", "model_performance_preservation",
                                                "reconstruction_quality", "shrinkage", "sparsity", "misc_metrics",
                                                "token_stats"}
    assert core["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"] is None  # a cache: no LM
    assert len(core["eval_result_details"]) == 32 and set(core["eval_result_details"][0]) == {
        "index", "feature_density", "encoder_bias", "encoder_norm", "encoder_decoder_cosine_sim",
        "max_decoder_cosine_sim", "max_encoder_cosine_sim"}
    sae = load_sae(family / "32")
    from canon_pl.training.analysis_data import cache_activations

    held_out = cache_activations(tmp_path / "cache", 400, 32)  # the held-out tokens the command read
    ev, l0 = explained_variance_of(sae, held_out)
    assert core["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] == pytest.approx(ev, abs=1e-5)
    assert core["eval_result_metrics"]["sparsity"]["l0"] == pytest.approx(l0)
    assert core_metrics(sae, held_out)[0]["sparsity"]["l0"] == pytest.approx(l0)
    summary = SUMMARY.read(out / "summary.json")
    assert [(r["name"], r["width"], r["seed_control"]) for r in summary["rows"]] == [
        ("16", 16, False), ("32", 32, False), ("32_seed1", 32, True)]
    by_name = {r["name"]: r["metrics"] for r in summary["rows"]}
    assert summary["seed_spread"]["32"]["explained_variance"] == pytest.approx(
        abs(by_name["32"]["explained_variance"] - by_name["32_seed1"]["explained_variance"]))
    assert "16" not in summary["seed_spread"]  # one seed at 16: no spread to state


def test_evaluate_refuses_what_it_cannot_read_before_any_work(tmp_path: Path, capsys) -> None:
    from canon_pl.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), "--data", "python-docs"]) == 2
    assert "neither a family folder" in capsys.readouterr().err
    family = small_family(tmp_path)
    (tmp_path / "file").write_text("x")
    assert main(["evaluate", str(family), "--data", str(tmp_path / "cache"), "--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err and not (family / "evaluation").exists()


def test_evaluate_on_text_splices_each_sae_into_the_bundled_model(tmp_path: Path, capsys) -> None:
    """With text data the LM runs: CE and KL with the SAE against zero-ablation, SAEBench's scores from them."""
    from canon_pl.cli import main
    from canon_pl.io import export_sae
    from canon_pl.sae import SAEConfig, build_sae

    torch.manual_seed(0)
    sae = build_sae(SAEConfig(d_in=576, d_sae=64, architecture="batchtopk", k=8, hook_point="model.layers.6",
                              model_id="smollm2-135m"))
    with torch.no_grad():
        sae.threshold.fill_(0.5)
        sae.threshold_initialized.fill_(True)
    export_sae(sae, tmp_path / "one")
    text = tmp_path / "guide.rst"  # reST with inline code, literal blocks, doctests and numbers in every section
    text.write_text("".join(
        f"Section {i}\n{'=' * 10}\n\nThe function ``scale{i}(x)`` returns {7 * i} when x is ``None``, and raises "
        f"an error otherwise; see :func:`scale{i}` for the reasons.  For example::\n\n    def scale{i}(x):\n"
        f"        if x is None:\n            return {7 * i}\n        raise ValueError(x)\n\n"
        f">>> scale{i}(None)\n{7 * i}\n\nPlain prose follows here, about what the reader should expect from it "
        f"and why the value is {i} times seven.\n\n" for i in range(400)))
    assert main(["evaluate", str(tmp_path / "one"), "--data", str(text), "--tokens", "1500",
                 "--no-details"]) == 0, capsys.readouterr().err
    core = json.loads((tmp_path / "one" / "evaluation" / "sae.core.json").read_text())
    metrics = core["eval_result_metrics"]
    ce, kl = metrics["model_performance_preservation"], metrics["model_behavior_preservation"]
    assert ce["ce_loss_without_sae"] < ce["ce_loss_with_ablation"] and ce["ce_loss_with_sae"] > ce["ce_loss_without_sae"]
    assert ce["ce_loss_score"] == pytest.approx((ce["ce_loss_with_ablation"] - ce["ce_loss_with_sae"]) /
                                                (ce["ce_loss_with_ablation"] - ce["ce_loss_without_sae"]), rel=1e-4)
    assert kl["kl_div_with_ablation"] > 0 and kl["kl_div_with_sae"] > 0
    assert kl["kl_div_score"] == pytest.approx(1 - kl["kl_div_with_sae"] / kl["kl_div_with_ablation"], rel=1e-4)
    assert core["eval_result_details"] == [] and core["eval_config"]["ce_on_text"] is True
    # text gives token labels: SAEBench's sparse_probing file, every task probed or skipped with its reason
    from canon_pl.lm.token_labels import LABELS

    probing = json.loads((tmp_path / "one" / "evaluation" / "sae.sparse_probing.json").read_text())
    assert probing["eval_type_id"] == "sparse_probing" and set(probing["eval_result_metrics"]) == {"llm", "sae"}
    assert [row["dataset_name"] for row in probing["eval_result_details"]] == list(LABELS)
    for task, result in probing["eval_result_unstructured"].items():
        assert "skipped" in result or 0 <= result["top_k_accuracy"]["1"] <= 1, (task, result)
    assert all("top_k_accuracy" in probing["eval_result_unstructured"][task] for task in LABELS)


def test_the_width_rule_climbs_while_a_step_beats_seed_noise_and_its_control() -> None:
    from canon_pl.study.verdicts import recommended_width

    def row(width: int, ev: float, control: bool = False) -> dict:
        return {"width": width, "seed_control": control, "metrics": {"explained_variance": ev}}

    def pair(small: int, large: int, novel: float, control: float) -> dict:
        return {"small": {"d_sae": small}, "large": {"d_sae": large},
                "classes": {"novel_fraction_definition": novel}, "control": {"novel_fraction_definition": control}}

    rows = [row(16, 0.50), row(32, 0.60), row(32, 0.58, True), row(64, 0.61), row(64, 0.58, True)]
    spread = {"32": {"explained_variance": 0.02}, "64": {"explained_variance": 0.03}}
    pairs = [pair(16, 32, 0.30, 0.10), pair(32, 64, 0.40, 0.05)]
    width, why = recommended_width(rows, spread, pairs)
    assert width == 32 and why[0].endswith("— earned") and why[1].endswith("— not earned")  # +0.01 EV < 0.03
    pairs[0] = pair(16, 32, 0.12, 0.10)  # wider reconstructs better, but its new latents are seed noise
    assert recommended_width(rows, spread, pairs)[0] == 16
    assert recommended_width(rows, {}, [pair(16, 32, 0.3, 0.1)])[0] == 16  # no seed control: nothing is earned
    assert recommended_width([], {}, []) == (None, [])
