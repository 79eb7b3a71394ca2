"""Pretrained SAEs by name, offline: a Hugging Face cache laid out here (the hub's own layout: refs, snapshots,
blobs) holds a SAELens release and a sparsify repository written by the test, and ``HF_HUB_OFFLINE=1`` keeps the hub
out of it. Release names resolve through SAELens's registry (its ``pretrained_saes.yaml``, installed by ``make``)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from canon_pl import load_sae
from canon_pl.io.releases import ReleaseError, release_ids, resolve_release

RELEASE = "gpt2-small-res-jb-feature-splitting"
REPO = "jbloom/GPT2-Small-Feature-Splitting-Experiment-Layer-8"


def put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
    """Lay ``files`` ({path in the repo: bytes}) out as huggingface_hub caches a download of ``repo_id`` at
    ``revision``: content-addressed blobs, a snapshot folder of links to them, and the ref naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def safetensors_bytes(tensors: dict[str, torch.Tensor], folder: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "w.safetensors"))
    return (folder / "w.safetensors").read_bytes()


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_the_registry_knows_the_papers_release_without_a_network() -> None:
    sae = resolve_release(RELEASE, "blocks.8.hook_resid_pre_768")
    assert (sae.repo_id, sae.path, sae.format) == (REPO, "blocks.8.hook_resid_pre_768", "saelens")
    widths = [int(i.rsplit("_", 1)[1]) for i in release_ids(RELEASE)]
    assert widths[0] == 768 and widths[-1] == 98304 and 49152 in widths and widths == sorted(widths)


def legacy_saelens_files(sae_id: str, d_in: int, d_sae: int, scratch: Path) -> tuple[dict, dict[str, torch.Tensor],
                                                                                     dict[str, bytes]]:
    """(cfg, tensors, repo files) of a small SAE as SAELens wrote the paper's release before version 6
    (``hook_point``, no ``architecture``)."""
    tensors = {"W_enc": torch.randn(d_in, d_sae), "b_enc": torch.randn(d_sae) * 0.1, "W_dec": torch.randn(d_sae, d_in),
               "b_dec": torch.randn(d_in)}
    cfg = {"model_name": "gpt2-small", "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8, "d_in": d_in,
           "d_sae": d_sae, "dtype": "float32", "device": "cpu"}
    return cfg, tensors, {f"{sae_id}/cfg.json": json.dumps(cfg).encode(),
                          f"{sae_id}/sae_weights.safetensors": safetensors_bytes(tensors, scratch)}


def test_a_release_by_name_loads_the_same_sae_as_its_files(offline_cache: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    d_in, d_sae = 12, 24
    sae_id = "blocks.8.hook_resid_pre_768"
    cfg, tensors, files = legacy_saelens_files(sae_id, d_in, d_sae, tmp_path)
    put_in_hub_cache(offline_cache, REPO, files)
    by_name = load_sae(f"{RELEASE}/{sae_id}")
    direct = tmp_path / "direct"
    direct.mkdir()
    (direct / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(direct / "sae_weights.safetensors"))
    from_files = load_sae(direct)
    assert by_name.cfg.hook_point == "blocks.8.hook_resid_pre" and by_name.cfg.architecture == "relu"
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(by_name, name), getattr(from_files, name)), name
    # the release was trained on TransformerLens's GPT-2 with center_writing_weights (the registry says so): its
    # residual stream is the Hugging Face one minus its mean over d_model, so the SAE centres each input
    assert by_name.cfg.input_norm == "center" and from_files.cfg.input_norm == "none"
    x = torch.randn(5, d_in) + 4.0
    mean = x.mean(dim=-1, keepdim=True)
    assert torch.allclose(by_name(x), from_files(x - mean) + mean, atol=1e-6)
    assert torch.equal(by_name.encode(x, inference=True), from_files.encode(x - mean, inference=True))


def test_a_family_is_assembled_from_a_release_by_name(offline_cache: Path, tmp_path: Path) -> None:
    from canon_pl.cli import main
    from canon_pl.io import read_family_manifest, training_data

    files = {}
    for sae_id, d_sae in (("blocks.8.hook_resid_pre_768", 24), ("blocks.8.hook_resid_pre_1536", 48)):
        files |= legacy_saelens_files(sae_id, 12, d_sae, tmp_path)[2]
    put_in_hub_cache(offline_cache, REPO, files)
    assert main(["family", "--from_release", RELEASE, "--ids", "blocks.8.hook_resid_pre_1536",
                 "blocks.8.hook_resid_pre_768", "--model", "gpt2", "--out", str(tmp_path / "fam")]) == 0
    family = read_family_manifest(tmp_path / "fam")
    assert family["widths"] == [24, 48]
    member = load_sae(tmp_path / "fam", width=48)
    assert member.cfg.model_id == "gpt2" and member.cfg.hook_point == "blocks.8.hook_resid_pre"
    assert training_data(tmp_path / "fam" / "48") == {}
    assert main(["family", "--from_release", RELEASE, "--ids", "blocks.8.hook_resid_pre_700",
                 "--out", str(tmp_path / "bad")]) == 2


def test_a_sparsify_repository_folder_by_name_at_a_revision(offline_cache: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    d_in, d_sae = 8, 16
    tensors = {"encoder.weight": torch.randn(d_sae, d_in), "encoder.bias": torch.randn(d_sae) * 0.1,
               "W_dec": torch.randn(d_sae, d_in), "b_dec": torch.randn(d_in)}
    files = {"layers.3/cfg.json": json.dumps({"k": 4, "num_latents": d_sae}).encode(),
             "layers.3/sae.safetensors": safetensors_bytes(tensors, tmp_path)}
    put_in_hub_cache(offline_cache, "EleutherAI/sae-tiny-test", files, revision="v1")
    sae = load_sae("EleutherAI/sae-tiny-test/layers.3", revision="v1")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4 and sae.cfg.hook_point == "layers.3"
    assert torch.equal(sae.W_dec, tensors["W_dec"])


@pytest.mark.parametrize("name, revision, message", [
    ("gpt2-small-res-jb-feature-splittin/blocks.8.hook_resid_pre_768", None,
     "if a SAELens release was meant: gpt2-small-res-jb-feature-splitting"),
    (f"{RELEASE}/blocks.8.hook_resid_pre_700", None, "has no SAE 'blocks.8.hook_resid_pre_700'.*closest"),
    (f"{RELEASE}/blocks.8.hook_resid_pre_768", None, f"{RELEASE}/blocks.8.hook_resid_pre_768: {REPO}/"
                                                      f"blocks.8.hook_resid_pre_768 is not in the Hugging Face cache.*"
                                                      f"HF_HUB_OFFLINE=1.*HF_HUB_CACHE"),
    ("EleutherAI/sae-tiny-test/layers.3", "v2", "at revision v2 is not in the Hugging Face cache"),
    (RELEASE, None, "is a release of 8 SAEs: name one"),
])
def test_what_cannot_be_found_gets_one_clear_error_in_seconds(offline_cache: Path, tmp_path: Path, name: str,
                                                               revision: str | None, message: str) -> None:
    put_in_hub_cache(offline_cache, "EleutherAI/sae-tiny-test", {"layers.3/cfg.json": b"{}"}, revision="v1")
    started = time.monotonic()
    with pytest.raises(ReleaseError, match=message):
        load_sae(name, revision=revision)
    assert time.monotonic() - started < 10


def test_the_release_recipe_runs_the_study_on_a_release_without_training(offline_cache: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """configs/pipeline_gpt2_release.yaml, shrunk: a two-width release in the cache (d_in 576, on the bundled model's
    blocks.8.hook_resid_pre instead of GPT-2's), then family, stitching, meta-SAE, statistics and report."""
    import yaml

    from canon_pl.cli import main
    from canon_pl.stitching import read_stitching_results
    from tests.helpers import REPO as REPOSITORY

    torch.manual_seed(2)
    files = {}
    for sae_id, d_sae in (("blocks.8.hook_resid_pre_768", 64), ("blocks.8.hook_resid_pre_1536", 128)):
        cfg, tensors, written = legacy_saelens_files(sae_id, 576, d_sae, tmp_path)
        tensors["W_enc"] /= 24
        tensors["b_enc"] = torch.full((d_sae,), -0.3)
        cfg["model_name"] = "smollm2-135m"
        files |= {f"{sae_id}/cfg.json": json.dumps(cfg).encode(),
                  f"{sae_id}/sae_weights.safetensors": safetensors_bytes(tensors, tmp_path)}
    put_in_hub_cache(offline_cache, REPO, files)
    recipe = yaml.safe_load((REPOSITORY / "configs" / "pipeline_gpt2_release.yaml").read_text())
    recipe["release"].update({"ids": ["blocks.8.hook_resid_pre_768", "blocks.8.hook_resid_pre_1536"],
                              "model": "smollm2-135m"})
    recipe["run"] = str(tmp_path / "release_run")
    recipe["stitch"].update({"data": "pydoc-topics", "tokens": 256, "ce_points": 2})
    recipe["meta_sae"].update({"width": 128, "d_sae_per_d_in": None, "d_sae": 4, "k": 2, "steps": 10,
                               "batch_size": 32, "floor_steps": 2, "data": None, "ce": False})
    recipe["stats"].update({"text": "pydoc-topics", "tokens": 256})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["pipeline", "--config", str(tmp_path / "recipe.yaml"), "--device", "cpu"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "[2/7] family ..." in out and "fit" not in out.split("[3/7]")[0]
    run = tmp_path / "release_run"
    pair = read_stitching_results(run / "stitching" / "64_128.json")
    assert pair["small"]["hook_point"] == "blocks.8.hook_resid_pre" and pair["small"]["input_norm"] == "center"
    assert (run / "meta_sae_128" / "analysis.json").is_file() and (run / "report.md").is_file()
    assert main(["pipeline", "--config", str(tmp_path / "recipe.yaml"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("done already, skipped") == 6  # all but the report
