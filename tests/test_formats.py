"""Other libraries' SAEs, built here by hand from their published layouts (tensor names, shapes, orientations, config
keys), load with the same encode/decode as the source library, computed independently in each test."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from canon_pl import export_sae, load_sae
from canon_pl.io import CheckpointError
from canon_pl.sae import SAEConfig, build_sae
from tests.helpers import own_k

D_IN, D_SAE, K = 12, 20, 4
g = torch.Generator().manual_seed(0)


def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


@pytest.fixture
def x() -> torch.Tensor:
    return rand(16, D_IN, scale=2.0)


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Top k per row of ``pre``, then ReLU (SAELens TopK; equal to ReLU then top k, as sparsify does)."""
    values, index = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, index, values.relu())


def assert_same(sae, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> None:
    torch.testing.assert_close(sae.encode(x, inference=True), f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae(x), x_hat, rtol=1e-4, atol=1e-4)
    assert (f > 0).any() and (f == 0).any()  # the test exercises the sparsity rule


# ------------------------------------------------------------------------------------------------------- SAELens
def write_saelens(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "prepend_bos": True}}
    (folder / "cfg.json").write_text(json.dumps(base | cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def saelens_tensors(threshold: bool = False) -> dict[str, torch.Tensor]:
    t = {"W_enc": rand(D_IN, D_SAE), "b_enc": rand(D_SAE, scale=0.5), "W_dec": rand(D_SAE, D_IN),
         "b_dec": rand(D_IN, scale=3.0)}
    if threshold:
        t["threshold"] = rand(D_SAE).abs() + 0.5
    return t


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_standard_and_the_b_dec_flag(tmp_path: Path, x: torch.Tensor, apply_b_dec: bool) -> None:
    t = saelens_tensors()
    sae = load_sae(write_saelens(tmp_path, {"architecture": "standard", "apply_b_dec_to_input": apply_b_dec}, t))
    f = F.relu((x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"])
    assert_same(sae, x, f, f @ t["W_dec"] + t["b_dec"])
    assert sae.cfg.architecture == "relu" and sae.cfg.model_id == "gpt2"
    assert sae.cfg.hook_point == "blocks.8.hook_resid_pre"


def saelens_layer_norm(t: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens's ``normalize_activations: layer_norm`` written out: (latents, reconstruction) of raw ``x``."""
    mu = x.mean(dim=-1, keepdim=True)
    std = (x - mu).std(dim=-1, keepdim=True)
    f = F.relu(((x - mu) / (std + 1e-5) - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    return f, (f @ t["W_dec"] + t["b_dec"]) * std + mu


def test_saelens_layer_norm_sae_reproduces_the_published_formula(tmp_path: Path, x: torch.Tensor) -> None:
    """Each input is centred and scaled by its own statistics, and the reconstruction scaled back with them: the
    statistics travel from encode to decode inside the SAE, so a batch of inputs of different scales is exact."""
    t = saelens_tensors()
    sae = load_sae(write_saelens(tmp_path / "ln", {"architecture": "standard", "normalize_activations": "layer_norm"},
                                 t))
    assert sae.cfg.input_norm == "layer_norm"
    scaled = x * torch.linspace(0.1, 10.0, x.shape[0])[:, None] + 3.0
    f, x_hat = saelens_layer_norm(t, scaled)
    assert_same(sae, scaled, f, x_hat)
    export_sae(sae, tmp_path / "ours")
    export_sae(sae, tmp_path / "back", format="saelens")
    for copy in (load_sae(tmp_path / "ours"), load_sae(tmp_path / "back")):
        torch.testing.assert_close(copy(scaled), x_hat, rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "back" / "cfg.json").read_text())["normalize_activations"] == "layer_norm"


def test_saelens_jumprelu_threshold_is_strict_on_the_pre_activation(tmp_path: Path, x: torch.Tensor) -> None:
    t = saelens_tensors(threshold=True)
    sae = load_sae(write_saelens(tmp_path, {"architecture": "jumprelu"}, t))
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    f = F.relu(pre) * (pre > t["threshold"])
    assert_same(sae, x, f, f @ t["W_dec"] + t["b_dec"])
    torch.testing.assert_close(sae.threshold, t["threshold"])


def test_a_saelens_matryoshka_sae_loads_with_its_levels_as_prefixes(tmp_path: Path, x: torch.Tensor) -> None:
    """SAELens saves a Matryoshka BatchTopK SAE as jumprelu with its one threshold broadcast, the level widths in the
    metadata's training details: it loads as a Matryoshka whose prefixes are those levels."""
    t = saelens_tensors() | {"threshold": torch.full((D_SAE,), 1.5)}
    cfg = {"architecture": "jumprelu", "metadata": {
        "model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "training_architecture": "matryoshka_batchtopk",
        "training_architecture_details": {"k": float(K), "matryoshka_widths": [5, 10, D_SAE]}}}
    sae = load_sae(write_saelens(tmp_path / "nested", cfg, t))
    assert sae.cfg.architecture == "matryoshka_batchtopk" and sae.prefix_sizes == [5, 10, 20] and sae.cfg.k == K
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    f = F.relu(pre) * (pre > 1.5)
    assert_same(sae, x, f, f @ t["W_dec"] + t["b_dec"])
    assert torch.allclose(sae.prefix(10)(x), f[:, :10] @ t["W_dec"][:10] + t["b_dec"], atol=1e-5)
    uneven = t | {"threshold": torch.linspace(1.0, 2.0, D_SAE)}
    with pytest.raises(CheckpointError, match="one threshold"):
        load_sae(write_saelens(tmp_path / "uneven", cfg, uneven))
    without_levels = json.loads(json.dumps(cfg))
    del without_levels["metadata"]["training_architecture_details"]["matryoshka_widths"]
    with pytest.raises(CheckpointError, match="matryoshka_widths"):
        load_sae(write_saelens(tmp_path / "levels", without_levels, t))


@pytest.mark.parametrize("rescale", [False, True])
def test_saelens_topk_with_and_without_decoder_norm_rescaling(tmp_path: Path, x: torch.Tensor, rescale: bool) -> None:
    t = saelens_tensors()
    t["W_dec"] = t["W_dec"] * (rand(D_SAE, 1).abs() + 0.2)  # rows of different norms: the rescaling matters
    sae = load_sae(write_saelens(tmp_path, {"architecture": "topk", "k": K,
                                            "rescale_acts_by_decoder_norm": rescale}, t))
    norms = t["W_dec"].norm(dim=-1) if rescale else torch.ones(D_SAE)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms
    f = topk_relu(pre, K)
    x_hat = (f / norms) @ t["W_dec"] + t["b_dec"]
    torch.testing.assert_close(sae(x), x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(x, inference=True) > 0, f > 0)


# ---------------------------------------------------------------------------------------------------- Gemma Scope
def test_gemma_scope_params_npz_does_not_subtract_b_dec(tmp_path: Path, x: torch.Tensor) -> None:
    t = saelens_tensors(threshold=True)
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in t.items()})
    sae = load_sae(tmp_path)
    pre = x @ t["W_enc"] + t["b_enc"]
    f = (pre > t["threshold"]) * F.relu(pre)
    assert_same(sae, x, f, f @ t["W_dec"] + t["b_dec"])
    assert sae.cfg.architecture == "jumprelu"
    assert load_sae(tmp_path / "params.npz").d_sae == D_SAE


# ------------------------------------------------------------------------------------------------------ sparsify
def write_sparsify(folder: Path, tensors: dict[str, torch.Tensor], k: int = K) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 32, "normalize_decoder": True,
                                                 "num_latents": D_SAE, "k": k, "multi_topk": False,
                                                 "skip_connection": False, "d_in": D_IN}))
    save_file(tensors, str(folder / "sae.safetensors"))
    return folder


def test_sparsify_decoder_is_not_transposed_and_b_dec_is_always_subtracted(tmp_path: Path, x: torch.Tensor) -> None:
    t = {"encoder.weight": rand(D_SAE, D_IN), "encoder.bias": rand(D_SAE, scale=0.5), "W_dec": rand(D_SAE, D_IN),
         "b_dec": rand(D_IN, scale=3.0)}
    sae = load_sae(write_sparsify(tmp_path / "layers.6", t))
    pre = F.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    f = topk_relu(pre, K)
    assert_same(sae, x, f, f @ t["W_dec"] + t["b_dec"])
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K and sae.cfg.hook_point == "layers.6"


# ------------------------------------------------------------------------------------------- dictionary_learning
def write_dictionary_learning(folder: Path, state: dict[str, torch.Tensor], dict_class: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    if dict_class is not None:
        (folder / "config.json").write_text(json.dumps({"trainer": {
            "dict_class": dict_class, "activation_dim": D_IN, "dict_size": D_SAE, "k": K,
            "lm_name": "EleutherAI/pythia-70m-deduped", "layer": 3, "submodule_name": "resid_post_layer_3"}}))
    return folder


def linear_state(bias_name: str) -> dict[str, torch.Tensor]:
    return {"encoder.weight": rand(D_SAE, D_IN), "encoder.bias": rand(D_SAE, scale=0.5),
            "decoder.weight": rand(D_IN, D_SAE), bias_name: rand(D_IN, scale=3.0)}


def test_dictionary_learning_autoencoder_keeps_b_dec_as_bias(tmp_path: Path, x: torch.Tensor) -> None:
    s = linear_state("bias")
    sae = load_sae(write_dictionary_learning(tmp_path, s, "AutoEncoder"))
    f = F.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
    assert_same(sae, x, f, f @ s["decoder.weight"].T + s["bias"])
    assert sae.cfg.model_id == "EleutherAI/pythia-70m-deduped"


def test_dictionary_learning_topk(tmp_path: Path, x: torch.Tensor) -> None:
    s = linear_state("b_dec") | {"k": torch.tensor(K), "threshold": torch.tensor(-1.0)}
    sae = load_sae(write_dictionary_learning(tmp_path, s, "AutoEncoderTopK"))
    f = topk_relu(F.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"]), K)
    assert_same(sae, x, f, f @ s["decoder.weight"].T + s["b_dec"])


def test_dictionary_learning_batchtopk_threshold_on_the_post_relu_value(tmp_path: Path, x: torch.Tensor) -> None:
    s = linear_state("b_dec") | {"k": torch.tensor(K), "threshold": torch.tensor(1.5)}
    sae = load_sae(write_dictionary_learning(tmp_path / "set", s, "BatchTopKSAE"))
    post = F.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    f = post * (post > 1.5)
    assert_same(sae, x, f, f @ s["decoder.weight"].T + s["b_dec"])
    unset = load_sae(write_dictionary_learning(tmp_path / "unset", s | {"threshold": torch.tensor(-1.0)},
                                               "BatchTopKSAE"))
    assert not bool(unset.threshold_initialized)  # -1 means never set: the batch's top k * batch
    kept = torch.zeros_like(post).flatten()
    values, index = post.flatten().topk(K * x.shape[0])
    kept[index] = values
    torch.testing.assert_close(unset.encode(x, inference=True), kept.view_as(post))


@pytest.mark.parametrize("dict_class", ["MatryoshkaBatchTopKSAE", None])
def test_dictionary_learning_matryoshka_keeps_its_nested_groups(tmp_path: Path, x: torch.Tensor,
                                                                dict_class: str | None) -> None:
    """Its state dict (``group_sizes`` beside BatchTopK's tensors) is recognised with or without config.json."""
    t = saelens_tensors()
    s = t | {"k": torch.tensor(K), "threshold": torch.tensor(1.5), "group_sizes": torch.tensor([5, 5, 10])}
    sae = load_sae(write_dictionary_learning(tmp_path, s, dict_class))
    assert sae.cfg.architecture == "matryoshka_batchtopk" and sae.prefix_sizes == [5, 10, 20]
    post = F.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    f = post * (post > 1.5)
    assert_same(sae, x, f, f @ t["W_dec"] + t["b_dec"])
    assert torch.allclose(sae.prefix(10)(x), f[:, :10] @ t["W_dec"][:10] + t["b_dec"], atol=1e-5)


def test_dictionary_learning_jumprelu_does_not_subtract_b_dec(tmp_path: Path, x: torch.Tensor) -> None:
    s = saelens_tensors(threshold=True)
    sae = load_sae(write_dictionary_learning(tmp_path, s, "JumpReluAutoEncoder"))
    pre = x @ s["W_enc"] + s["b_enc"]
    f = F.relu(pre * (pre > s["threshold"]))
    assert_same(sae, x, f, f @ s["W_dec"] + s["b_dec"])


def test_dictionary_learning_topk_without_its_config_is_ambiguous(tmp_path: Path) -> None:
    s = linear_state("b_dec") | {"k": torch.tensor(K), "threshold": torch.tensor(0.5)}
    with pytest.raises(CheckpointError, match="TopK or BatchTopK.*config.json"):
        load_sae(write_dictionary_learning(tmp_path, s, None))


def test_a_dictionary_learning_file_carrying_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    tmp_path.mkdir(exist_ok=True)
    torch.save({"encoder.weight": rand(D_SAE, D_IN), "x": Payload()}, tmp_path / "ae.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_sae(tmp_path)


# ----------------------------------------------------------------------------------------- export and round trips
def trained_like(architecture: str) -> torch.nn.Module:
    torch.manual_seed(3)
    sae = build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=architecture, **own_k(architecture, K),
                              hook_point="blocks.2", model_id="gpt2"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 2.0)
        if architecture == "batchtopk":
            sae.threshold.fill_(0.8)
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE) + 0.2)
        sae.threshold_initialized.fill_(True)
    return sae.eval()


@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "jumprelu"])
def test_export_to_saelens_and_back_is_lossless(tmp_path: Path, x: torch.Tensor, architecture: str) -> None:
    sae = trained_like(architecture)
    export_sae(sae, tmp_path / "saelens", format="saelens")
    cfg = json.loads((tmp_path / "saelens" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu",
                                   "jumprelu": "jumprelu"}[architecture]
    back = load_sae(tmp_path / "saelens")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    assert torch.equal(back.encode(x, inference=True), sae.encode(x, inference=True))
    assert back.cfg.model_id == "gpt2" and back.cfg.hook_point == "blocks.2"
    export_sae(back, tmp_path / "ours")  # and through our own format
    assert torch.equal(load_sae(tmp_path / "ours")(x), sae(x))


def test_a_saelens_export_names_its_hook_both_ways_and_reads_back_the_module(tmp_path: Path) -> None:
    """SAELens tools look for ``hook_name`` (TransformerLens); canon-pl and newer SAELens read ``hf_hook_name``."""
    sae = trained_like("relu")
    sae.cfg = replace(sae.cfg, hook_point="model.layers.6")
    export_sae(sae, tmp_path / "saelens", format="saelens",
               extra={"data": {"hook_point": "model.layers.6", "transformer_lens_hook": "blocks.6.hook_resid_post"}})
    metadata = json.loads((tmp_path / "saelens" / "cfg.json").read_text())["metadata"]
    assert metadata["hook_name"] == "blocks.6.hook_resid_post" and metadata["hf_hook_name"] == "model.layers.6"
    assert load_sae(tmp_path / "saelens").cfg.hook_point == "model.layers.6"
    # a file that records only a TransformerLens name keeps it: capture maps it to the model's module
    imported = load_sae(write_saelens(tmp_path / "tl", {"architecture": "standard"}, saelens_tensors()))
    export_sae(imported, tmp_path / "again", format="saelens")
    metadata = json.loads((tmp_path / "again" / "cfg.json").read_text())["metadata"]
    assert metadata["hook_name"] == "blocks.8.hook_resid_pre" and metadata["hf_hook_name"] is None


@pytest.mark.parametrize("change, message", [
    (lambda t: t | {"W_skip": rand(D_IN, D_IN)}, r"unknown tensors \['W_skip'\]"),
    (lambda t: t | {"W_dec": rand(D_IN, D_SAE)}, r"W_dec has shape \(12, 20\), expected \(20, 12\)"),
    (lambda t: {k: v for k, v in t.items() if k != "b_dec"}, r"missing tensors \['b_dec'\]"),
    (lambda t: t | {"b_enc": torch.full((D_SAE,), float("nan"))}, "b_enc contains NaN"),
])
def test_a_foreign_file_with_a_wrong_tensor_gets_a_clear_error(tmp_path: Path, change, message: str) -> None:
    write_saelens(tmp_path / "s", {"architecture": "standard"}, change(saelens_tensors()))
    with pytest.raises(CheckpointError, match=message):
        load_sae(tmp_path / "s")
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in change(saelens_tensors(threshold=True)).items()})
    with pytest.raises(CheckpointError, match=message):
        load_sae(tmp_path / "params.npz")


def test_unsupported_saelens_options_are_refused_by_name(tmp_path: Path) -> None:
    write_saelens(tmp_path / "a", {"architecture": "matching_pursuit"}, saelens_tensors())
    with pytest.raises(CheckpointError, match="architecture 'matching_pursuit' is not supported"):
        load_sae(tmp_path / "a")
    write_saelens(tmp_path / "b", {"architecture": "standard", "normalize_activations": "expected_average_only_in"},
                  saelens_tensors())
    with pytest.raises(CheckpointError, match="normalize_activations='expected_average_only_in'.*outside the file"):
        load_sae(tmp_path / "b")


def test_a_folder_holding_two_formats_is_ambiguous_and_format_picks_one(tmp_path: Path) -> None:
    t = saelens_tensors(threshold=True)
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in t.items()})
    write_saelens(tmp_path, {"architecture": "jumprelu"}, t)
    with pytest.raises(CheckpointError, match="ambiguous: it looks like saelens and gemma_scope"):
        load_sae(tmp_path)
    x = rand(4, D_IN)
    a, b = load_sae(tmp_path, format="saelens"), load_sae(tmp_path, format="gemma_scope")
    assert not torch.allclose(a(x), b(x))  # they differ exactly by the b_dec subtraction


# ---------------------------------------------------------------------------------------------- imported families
def test_a_family_assembled_from_other_libraries_runs_stitching_and_meta_saes(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Two SAELens SAEs naming gpt2 and a Gemma Scope file naming nothing become one family; the analyses that need
    no language model run on it, and the one that needs gpt2 says so."""
    from canon_pl.data.shards import write_activation_shards
    from canon_pl.io import load_family
    from tests.helpers import run_cli, run_here

    for width in (8, 16):
        t = {"W_enc": rand(D_IN, width), "b_enc": rand(width, scale=0.1), "W_dec": rand(width, D_IN),
             "b_dec": rand(D_IN)}
        write_saelens(tmp_path / f"saelens_{width}", {"architecture": "standard", "d_sae": width}, t)
    t = {"W_enc": rand(D_IN, 32), "b_enc": rand(32, scale=0.1), "W_dec": rand(32, D_IN), "b_dec": rand(D_IN),
         "threshold": rand(32).abs()}
    (tmp_path / "gemma").mkdir()
    np.savez(tmp_path / "gemma" / "params.npz", **{k: v.numpy() for k, v in t.items()})
    sources = [str(tmp_path / "gemma"), str(tmp_path / "saelens_8"), str(tmp_path / "saelens_16")]

    refused = run_here("family", "--from", *sources, "--out", str(tmp_path / "fam"), capsys=capsys)  # this process
    assert refused.returncode == 2 and "disagree on hook_point" in refused.stderr and "--hook_point" in refused.stderr
    made = run_cli("family", "--from", *sources, "--out", str(tmp_path / "fam"), "--hook-point",
                   "blocks.8.hook_resid_pre", "--model", "gpt2", cwd=tmp_path, script="canon-pl")
    assert made.returncode == 0, made.stderr[-2000:]
    family = load_family(tmp_path / "fam")
    assert family.widths == [8, 16, 32]
    x = rand(5, D_IN)
    torch.testing.assert_close(family.saes[32](x), load_sae(tmp_path / "gemma")(x))

    write_activation_shards([rand(256, D_IN)], tmp_path / "cache", tokens_per_shard=512, val_batches=[rand(256, D_IN)])
    stitched = run_cli("stitch", str(tmp_path / "fam"), "--data", str(tmp_path / "cache"), "--tokens", "256",
                       cwd=tmp_path, script="canon-pl")
    assert stitched.returncode == 0, stitched.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "fam" / "stitching").glob("*.json")) == ["16_32.json", "8_16.json"]
    meta = run_cli("meta-sae", "--sae", str(tmp_path / "fam"), "--width", "32", "--d-sae", "3", "--k", "2",
                   "--steps", "5", "--batch-size", "32", "--baseline-steps", "0", "--out", str(tmp_path / "meta"),
                   cwd=tmp_path, script="canon-pl")
    assert meta.returncode == 0, meta.stderr[-2000:]
    needs_model = run_here("stitch", str(tmp_path / "fam"), "--data", "pydoc-topics", capsys=capsys)
    assert needs_model.returncode == 2 and "could not load the model 'gpt2'" in needs_model.stderr
    assert "Traceback" not in needs_model.stderr
