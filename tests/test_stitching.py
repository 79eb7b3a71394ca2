"""SAE stitching (docs/design.md 1.2): matching, groups, the stitched SAE, the path and the definitional check."""

from __future__ import annotations

import json
from dataclasses import replace
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from canon_pl.sae import SAEConfig, build_sae
from canon_pl.stitching import (
    StitchedSAE,
    StitchingError,
    analyze_pair,
    connected_components,
    decoder_cosine_matrix,
    latent_groups,
    match_latents,
    read_stitching_results,
    single_insertion_delta_mse,
    sparse_codes,
    write_stitching_results,
)
from canon_pl.stitching.path import reconstruction
from tests.helpers import own_k

D_IN = 32


def tied_sae(directions: torch.Tensor, architecture: str = "relu", threshold: float = 0.0,
             b_dec: torch.Tensor | None = None, hook_point: str | None = "blocks.0"):
    """An SAE whose encoder is its decoder transposed: on non-negative sparse combinations of orthonormal
    ``directions [d_sae, d_in]`` it reads off the coefficients exactly."""
    cfg = SAEConfig(d_in=directions.shape[1], d_sae=directions.shape[0], architecture=architecture,
                    **own_k(architecture, 2), hook_point=hook_point)
    sae = build_sae(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(F.normalize(directions, dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(cfg.d_in))
        sae.threshold.fill_(threshold)
        sae.threshold_initialized.fill_(True)
    return sae.eval()


def orthonormal(n: int, d: int = D_IN, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q.T[:n].contiguous()


def sparse_data(directions: torch.Tensor, n: int = 2048, p: float = 0.15, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coef = torch.rand(n, directions.shape[0], generator=g) * (torch.rand(n, directions.shape[0], generator=g) < p)
    return coef @ directions


def random_trained_like(d_sae: int, seed: int, threshold: float = 1.5):
    """A BatchTopK SAE with random weights, biases and a threshold (independent latents, nothing tied)."""
    torch.manual_seed(seed)
    sae = build_sae(SAEConfig(d_in=D_IN, d_sae=d_sae, architecture="batchtopk", k=4, hook_point="blocks.0"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        sae.threshold.fill_(threshold)
        sae.threshold_initialized.fill_(True)
    return sae.eval()


# ------------------------------------------------------------------------------------------------- matching
def test_planted_copy_split_and_new_direction_get_the_right_classes_and_groups() -> None:
    e = orthonormal(8)
    small = e[:4]  # S: e0, e1, e2, e3
    split_a = F.normalize(e[1] + 0.8 * e[4], dim=0)  # e1 split into two latents, each at cos 0.78 to e1
    split_b = F.normalize(e[1] - 0.8 * e[4], dim=0)
    large = torch.stack([e[0], split_a, split_b, e[2], e[3], e[5]])  # copies, the split pair, a new direction e5
    match = match_latents(small, large, tau=0.7)
    assert match.is_novel.tolist() == [False, False, False, False, False, True]
    assert match.large_nearest[:5].tolist() == [0, 1, 1, 2, 3]
    groups = latent_groups(match)
    assert groups.large_group[1] == groups.large_group[2] == groups.small_group[1]  # the split is one group
    assert groups.n_small[groups.small_group[1]] == 1 and groups.n_large[groups.small_group[1]] == 2
    assert groups.kind_counts() == {"novel": 1, "swap": 4, "removal": 0}
    dropped = match_latents(small, large[[0, 3, 4, 5]], tau=0.7)  # L lost e1: that S-latent is a removal
    assert latent_groups(dropped).kind_counts() == {"novel": 1, "swap": 3, "removal": 1}


def test_chunked_matching_equals_the_full_cosine_matrix() -> None:
    torch.manual_seed(0)
    small, large = torch.randn(300, 8), torch.randn(700, 8)  # low d_in: many edges at tau 0.7
    full = decoder_cosine_matrix(large, small)
    chunked = match_latents(small, large, tau=0.7, block_bytes=4 * 300 * 37)  # 37 rows per block
    whole = match_latents(small, large, tau=0.7, block_bytes=1 << 30)
    for m in (chunked, whole):
        torch.testing.assert_close(m.large_max_cos, full.max(dim=1).values)
        assert torch.equal(m.large_nearest, full.max(dim=1).indices)
        torch.testing.assert_close(m.small_max_cos, full.max(dim=0).values)
        assert torch.equal(m.small_nearest, full.max(dim=0).indices)
        edges = set(zip(m.edges_large.tolist(), m.edges_small.tolist()))
        assert edges == set(map(tuple, torch.nonzero(full >= 0.7).tolist()))
        assert len(edges) > 100


def test_connected_components_of_a_known_graph() -> None:
    u = torch.tensor([0, 1, 3, 6, 7])
    v = torch.tensor([1, 2, 4, 7, 8])
    labels = connected_components(10, u, v)
    assert labels.tolist() == [0, 0, 0, 3, 3, 5, 6, 6, 6, 9]
    chain = torch.arange(99)
    assert connected_components(100, chain.flip(0), chain.flip(0) + 1).unique().tolist() == [0]


# ------------------------------------------------------------------------------------------------- the definition
def test_a_planted_novel_direction_lowers_mse_and_a_copy_raises_it() -> None:
    e = orthonormal(8)
    x = sparse_data(e[:7])  # the data uses e0..e6
    small = tied_sae(e[:5])  # S misses e5 and e6
    large = tied_sae(e[:7])  # L = S's directions copied + e5, e6
    residual = x - reconstruction(small, x)
    delta = single_insertion_delta_mse(sparse_codes(large, x), large.W_dec, residual)
    assert (delta[5:] < 0).all()  # novel: adds information
    assert (delta[:5] > 0).all()  # reconstruction: double counts what S has
    result = analyze_pair(small, large, x)
    assert result.summary["n_novel"] == 2
    assert result.summary["proxy"]["agreement"] == 1.0
    # swapping a reconstruction latent changes MSE by less than adding a novel one
    steps = result.path.mse[1:-1] - result.path.mse[:-2]
    kinds = result.path.kind[1:-1].tolist()
    novel_steps = [float(s) for s, k in zip(steps, kinds) if k == 1]
    swap_steps = [float(s) for s, k in zip(steps, kinds) if k == 2]
    assert max(abs(s) for s in swap_steps) < min(abs(s) for s in novel_steps)
    assert result.summary["fvu_large"] < 1e-6 < result.summary["fvu_small"]


def test_the_per_chunk_spread_is_each_chunk_measured_on_its_own() -> None:
    """The token-noise spread reads the classification's per-non-zero changes instead of a second pass; each chunk's
    fraction must still be what measuring that chunk alone gives (its firing latents, their MSE change on it)."""
    from canon_pl.sae.codes import SparseCodes
    from canon_pl.stitching.classify import classify_latents, definition_chunk_spread

    torch.manual_seed(3)
    x = torch.randn(1600, D_IN)
    small = build_sae(SAEConfig(d_in=D_IN, d_sae=16, architecture="topk", k=3))
    large = build_sae(SAEConfig(d_in=D_IN, d_sae=48, architecture="topk", k=3))
    classes = classify_latents(small, large, x, 0.7)
    spread = definition_chunk_spread(classes, n_chunks=5)
    codes, residual = sparse_codes(large, x), x - reconstruction(small, x)
    alone = []
    for start in range(0, 1600, 320):
        keep = (codes.rows >= start) & (codes.rows < start + 320)
        chunk = SparseCodes(codes.rows[keep], codes.cols[keep], codes.values[keep], codes.n_tokens, codes.d_sae)
        fires = chunk.counts() > 0
        alone.append(float((single_insertion_delta_mse(chunk, large.W_dec, residual)[fires] < 0).float().mean()))
    assert spread["per_chunk"] == alone and spread["chunk_tokens"] == 320
    assert len(set(alone)) > 1  # the chunks differ: the test would see a spread read from the wrong tokens
    assert torch.equal(classes.delta_mse, single_insertion_delta_mse(codes, large.W_dec, residual))


# ------------------------------------------------------------------------------------------------- stitched SAE, path
def test_stitched_sae_keeps_each_latents_exact_activation_with_the_bias_folded() -> None:
    small, large = random_trained_like(24, seed=1), random_trained_like(40, seed=2)
    x = torch.randn(256, D_IN) * 2
    keep_small = torch.rand(24) < 0.5
    keep_large = torch.rand(40) < 0.5
    stitched = StitchedSAE.from_pair(small, large, keep_small, keep_large, decoder_bias="small")
    acts = stitched.encode(x)
    expected = torch.cat([small.encode(x, inference=True)[:, keep_small],
                          large.encode(x, inference=True)[:, keep_large]], dim=1)
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=1e-5)
    assert (acts > 0).any()
    b = large.b_dec - small.b_dec
    j = int(torch.nonzero(keep_large)[0])
    torch.testing.assert_close(stitched.b_enc[int(keep_small.sum())], large.b_enc[j] + large.W_enc[:, j] @ -b)


def test_the_path_starts_exactly_at_s_and_ends_exactly_at_l() -> None:
    small, large = random_trained_like(24, seed=1), random_trained_like(48, seed=2)
    with torch.no_grad():  # make some L-latents copies or splits of S-latents so all three group kinds occur
        large.W_dec[:10] = small.W_dec[:10]
        large.W_dec[10:14] = F.normalize(small.W_dec[10:14] + 0.3 * torch.randn(4, D_IN) / D_IN**0.5, dim=-1)
    x = torch.randn(1024, D_IN) * 2
    result = analyze_pair(small, large, x, tau=0.7)
    path, groups = result.path, result.groups
    assert set(groups.kinds()) == {"novel", "swap", "removal"}
    mse_small = F.mse_loss(reconstruction(small, x), x)
    mse_large = F.mse_loss(reconstruction(large, x), x)
    torch.testing.assert_close(path.mse[0], mse_small, rtol=1e-5, atol=0)
    torch.testing.assert_close(path.mse[-1], mse_large, rtol=1e-5, atol=0)
    assert path.n_latents[0] == 24 and path.n_latents[-1] == 48
    for point in (0, path.n_points // 3, path.n_points - 2, path.n_points - 1):  # the stitched SAE agrees with the path
        stitched = result.stitched_at(point, small, large)
        torch.testing.assert_close(F.mse_loss(stitched(x), x), path.mse[point], rtol=1e-4, atol=1e-6)
        assert stitched.d_sae == path.n_latents[point]
    torch.testing.assert_close(result.stitched_at(path.n_points - 1, small, large)(x), reconstruction(large, x),
                               rtol=1e-4, atol=1e-4)
    # greedy: the steps that lower MSE come first
    first_rise = int(torch.nonzero(path.mse[1:] > path.mse[:-1] + 1e-7)[0])
    assert (path.mse[1:first_rise + 1] <= path.mse[:first_rise] + 1e-7).all()
    assert path.l0[0] == pytest.approx(sparse_codes(small, x).values.numel() / 1024)


@torch.no_grad()
def test_the_path_is_the_same_however_its_dot_products_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrow pairs score every group with one matrix product and the decoders' Gram matrix; wide ones gather a
    decoder row per non-zero. Both give the same path, coarse groups (many latents on one token) included, and its
    first step is the group whose dense change in error is the lowest."""
    import canon_pl.stitching.path as path_module
    from canon_pl.stitching.groups import groups_from_edges

    small, large = random_trained_like(24, seed=1), random_trained_like(48, seed=2)
    x = torch.randn(512, D_IN) * 2
    g = torch.Generator().manual_seed(3)
    edges = (torch.randint(0, 24, (40,), generator=g), torch.randint(0, 48, (40,), generator=g))
    groups = groups_from_edges(24, 48, *edges)
    assert int(groups.n_large.max()) >= 5  # a coarse group: several of its latents fire on one token
    paths = {}
    for name, dense, gram in (("dense, Gram", 1 << 30, 1 << 30), ("gathered rows", 0, 0)):
        monkeypatch.setattr(path_module, "DENSE_PER_NONZERO", dense)
        monkeypatch.setattr(path_module, "GRAM_MAX_ENTRIES", gram)
        paths[name] = path_module.stitching_path(small, large, x, groups)
    torch.testing.assert_close(paths["dense, Gram"].mse, paths["gathered rows"].mse, rtol=1e-5, atol=1e-7)
    assert torch.equal(paths["dense, Gram"].order, paths["gathered rows"].order)
    codes = {name: sparse_codes(sae, x) for name, sae in (("S", small), ("L", large))}
    dense_codes = {}
    for name, c in codes.items():
        dense_codes[name] = torch.zeros(512, c.d_sae)
        dense_codes[name][c.rows, c.cols] = c.values
    residual = (x - reconstruction(small, x)).double()
    changes = []
    for group in range(groups.n_groups):  # each group applied alone, densely
        ms, ml = groups.small_group == group, groups.large_group == group
        change = dense_codes["L"][:, ml] @ large.W_dec[ml] - dense_codes["S"][:, ms] @ small.W_dec[ms]
        changes.append(float((residual - change.double()).square().sum() - residual.square().sum()))
    first = int(paths["dense, Gram"].order[0])
    assert changes[first] == pytest.approx(min(changes), rel=1e-4)
    assert float(paths["dense, Gram"].mse[1] - paths["dense, Gram"].mse[0]) * 512 * D_IN == pytest.approx(
        changes[first], rel=1e-3)


def test_input_normalising_saes_are_stitched_in_the_space_they_reconstruct() -> None:
    """Imported SAELens ``layer_norm`` SAEs: the analysis equals that of the same SAEs without the normalisation on
    the normalised activations (their own objective), and a pair that normalises differently is refused."""

    plain_small, plain_large = random_trained_like(24, seed=1), random_trained_like(48, seed=2)
    with torch.no_grad():
        plain_large.W_dec[:10] = plain_small.W_dec[:10]
    normed = []
    for plain in (plain_small, plain_large):
        sae = random_trained_like(plain.d_sae, seed=0)
        sae.load_state_dict(plain.state_dict())
        sae.cfg = replace(plain.cfg, input_norm="layer_norm")
        normed.append(sae)
    x = torch.randn(1024, D_IN) * torch.linspace(0.5, 20.0, 1024)[:, None] + 1.0  # inputs of very different scales
    x_normalised = normed[0].normalize_input(x).x
    ours = analyze_pair(*normed, x, tau=0.7).summary
    reference = analyze_pair(plain_small, plain_large, x_normalised, tau=0.7).summary
    for key in ("novel_fraction", "mse_small", "mse_large", "path_monotone_fraction", "path_points"):
        assert ours[key] == pytest.approx(reference[key], rel=1e-5), key
    assert ours["small"]["input_norm"] == "layer_norm" and reference["small"]["input_norm"] == "none"
    with pytest.raises(StitchingError, match=r"normalise their inputs differently \(\['layer_norm', 'none'\]\)"):
        analyze_pair(normed[0], plain_large, x, tau=0.7)


def test_path_on_planted_data_falls_monotonically() -> None:
    e = orthonormal(12)
    x = sparse_data(e[:12], p=0.1)
    small = tied_sae(torch.stack([*e[:4], F.normalize(e[4] + e[5], dim=0)]))  # a merged latent S must split
    large = tied_sae(e[:12])
    result = analyze_pair(small, large, x)
    assert result.summary["path_monotone_fraction"] == 1.0
    assert 0.0 <= result.summary["path_auc"] < 0.5


# ------------------------------------------------------------------------------------------------- results and errors
def test_results_file_round_trips_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    small, large = random_trained_like(16, seed=1), random_trained_like(32, seed=2)
    result = analyze_pair(small, large, torch.randn(300, D_IN), names=("s", "l"))
    path = write_stitching_results(result, tmp_path)
    assert path.name == "16_32.json"
    summary = read_stitching_results(path, arrays=True)
    assert summary["novel_fraction"] == result.summary["novel_fraction"]
    assert summary["small"]["source"] == "s" and summary["large"]["d_sae"] == 32
    torch.testing.assert_close(summary["arrays"]["path_mse"], result.path.mse)
    assert summary["arrays"]["large_max_cos"].shape == (32,)
    json.loads(path.read_text())  # plain JSON for the viewer
    (tmp_path / "other.json").write_text(json.dumps({"format": "something.else"}))
    with pytest.raises(StitchingError, match="not a canon-pl stitching results file"):
        read_stitching_results(tmp_path / "other.json")
    (tmp_path / "16_32.safetensors").write_bytes(b"garbage")
    with pytest.raises(StitchingError, match="16_32.safetensors is corrupt"):
        read_stitching_results(path, arrays=True)


def test_results_of_one_run_analysed_with_different_settings_are_flagged(tmp_path: Path) -> None:
    """A family `stitch` stopped midway and re-run with other settings leaves pairs that look alike: each file
    records its tau, token count and data, and the viewer and the report say the set is mixed."""
    from canon_pl.viewer.stitching import find_stitching_results, settings_mismatch_in_run
    from tests.viewer_data import open_viewer

    a, b, c = (random_trained_like(width, seed=seed) for width, seed in ((16, 1), (32, 2), (64, 3)))
    x = torch.randn(300, D_IN)
    folder = tmp_path / "fam" / "stitching"
    write_stitching_results(analyze_pair(a, b, x, data="checkpoints/cache_smollm2_l6"), folder)
    write_stitching_results(analyze_pair(b, c, x[:200], tau=0.5, data="checkpoints/cache_smollm2_l6"), folder)
    pairs = find_stitching_results(tmp_path)
    assert [p.settings for p in pairs] == [
        {"tau": 0.7, "n_tokens": 300, "data": "checkpoints/cache_smollm2_l6"},
        {"tau": 0.5, "n_tokens": 200, "data": "checkpoints/cache_smollm2_l6"}]
    mismatch = settings_mismatch_in_run(pairs, tmp_path / "fam")
    assert mismatch is not None and "tau 0.7 (16_32.json), 0.5 (32_64.json)" in mismatch
    assert "n_tokens 300 (16_32.json), 200 (32_64.json)" in mismatch and "data" not in mismatch.split(".")[0]
    app = open_viewer(tmp_path, page="Stitching")
    assert not app.exception and "analysed with different settings" in app.warning[0].value
    write_stitching_results(analyze_pair(b, c, x, data="checkpoints/cache_smollm2_l6"), folder)  # the re-run
    assert settings_mismatch_in_run(find_stitching_results(tmp_path), tmp_path / "fam") is None
    assert not open_viewer(tmp_path, page="Stitching").warning


def test_bad_pairs_and_settings_fail_with_one_clear_error() -> None:
    small, large = random_trained_like(16, seed=1), random_trained_like(32, seed=2)
    x = torch.randn(64, D_IN)
    other = build_sae(SAEConfig(d_in=D_IN + 1, d_sae=32, architecture="relu"))
    with pytest.raises(StitchingError, match="d_in=32 .* d_in=33"):
        analyze_pair(small, other, torch.randn(64, D_IN))
    for tau in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(StitchingError, match="strictly between 0 and 1"):
            analyze_pair(small, large, x, tau=tau)
    topk = build_sae(SAEConfig(d_in=D_IN, d_sae=32, architecture="topk", k=4))
    with pytest.raises(StitchingError, match="TopK"):
        analyze_pair(small, topk, x)
    with pytest.raises(StitchingError, match="NaN"):
        analyze_pair(small, large, torch.full((4, D_IN), float("nan")))
    with pytest.raises(StitchingError, match="0 tokens"):
        analyze_pair(small, large, torch.zeros(0, D_IN))
    with pytest.warns(UserWarning, match="swapping them"):
        swapped = analyze_pair(large, small, x)
    assert swapped.summary["small"]["d_sae"] == 16 and swapped.summary["swapped"]
    large.cfg = replace(large.cfg, hook_point="blocks.1")
    with pytest.warns(UserWarning, match="different hook points"):
        analyze_pair(small, large, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        large.cfg = replace(large.cfg, hook_point=None)  # only one recorded: nothing to compare
        analyze_pair(small, large, x)


def test_stitch_command_on_text_captures_held_out_tokens_and_splices_the_path(tmp_path: Path, capsys) -> None:
    from canon_pl.cli import main
    from canon_pl.io import export_sae

    for name, d_sae, seed in (("s", 64, 1), ("l", 128, 2)):
        torch.manual_seed(seed)
        sae = build_sae(SAEConfig(d_in=576, d_sae=d_sae, architecture="batchtopk", k=8, hook_point="model.layers.6",
                                  model_id="smollm2-135m"))
        with torch.no_grad():
            sae.threshold.fill_(0.5)
            sae.threshold_initialized.fill_(True)
        export_sae(sae, tmp_path / name)
    code = main(["stitch", str(tmp_path / "s"), str(tmp_path / "l"), "--data", "pydoc-topics", "--tokens", "300",
                 "--ce-points", "3", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    summary = read_stitching_results(tmp_path / "out" / "64_128.json")
    assert summary["n_tokens"] == 300 and summary["small"]["hook_point"] == "model.layers.6"
    ce = summary["path_ce"]
    assert ce["point"][0] == 0 and ce["point"][-1] == summary["path_points"] - 1 and len(ce["ce_loss"]) == 3
    assert ce["ce_clean"] < ce["ce_zero"] and all(loss > ce["ce_clean"] for loss in ce["ce_loss"])
