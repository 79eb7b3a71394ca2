"""The study's controls, where the answer is known: a planted hierarchy gives the planted reconstruction and novel
latents and a cross-seed control near zero; a planted compositional decoder gives a meta-SAE FVE far above its
floors; the verdicts follow their rules; initial decoders are rebuilt exactly; held-out data stays held out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from canon_pl.data import ShardIndex, write_activation_shards
from canon_pl.io import initial_decoder
from canon_pl.lm.text import iter_documents
from canon_pl.meta import (
    MetaSAEError,
    covariance_matched_rows,
    fit_meta_sae,
    higher_floor,
    pca_shuffled_rows,
    pca_variance_fraction,
    random_unit_rows,
)
from canon_pl.meta.analysis import analyze_meta_sae
from canon_pl.sae import initial_sae
from canon_pl.stitching import analyze_pair, read_stitching_results, write_stitching_results
from canon_pl.stitching.nested import added_latent_classes
from canon_pl.training import SAEFamilyModule
from canon_pl.training.analysis_data import AnalysisDataError, cache_activations
from canon_pl.study.verdicts import (
    granularity_verdict,
    matryoshka_verdict,
    novel_latents_verdict,
    path_verdict,
    preconditions,
    study_verdicts,
)
from tests.test_stitching import orthonormal, sparse_data, tied_sae

N_PARENTS, N_NOVEL = 6, 4


def planted_hierarchy(n_tokens: int = 6000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Parents ``[6, 32]``; each splits into two children (cos 0.86 to the parent) that the wider SAE has; four
    features only the wider SAE can afford. Tokens: each parent family active with p 0.15 through one child, each
    novel feature with p 0.1, coefficients U(0.5, 1.5)."""
    basis = orthonormal(N_PARENTS * 2 + N_NOVEL)
    parents, splits, novel = basis[:N_PARENTS], basis[N_PARENTS:2 * N_PARENTS], basis[2 * N_PARENTS:]
    children = torch.cat([F.normalize(parents + 0.6 * splits, dim=-1), F.normalize(parents - 0.6 * splits, dim=-1)])
    g = torch.Generator().manual_seed(seed)
    active = torch.rand(n_tokens, N_PARENTS, generator=g) < 0.15
    which = torch.randint(2, (n_tokens, N_PARENTS), generator=g)
    coef = torch.rand(n_tokens, N_PARENTS, generator=g) + 0.5
    child_coef = torch.zeros(n_tokens, 2 * N_PARENTS)
    rows = torch.arange(n_tokens)[:, None].expand(-1, N_PARENTS)
    cols = torch.arange(N_PARENTS)[None].expand(n_tokens, -1) + which * N_PARENTS
    child_coef[rows[active], cols[active]] = coef[active]
    novel_coef = (torch.rand(n_tokens, N_NOVEL, generator=g) + 0.5) * (torch.rand(n_tokens, N_NOVEL, generator=g) < 0.1)
    x = child_coef @ children + novel_coef @ novel
    return {"parents": parents, "children": children, "novel": novel, "x": x}


def test_a_planted_hierarchy_gives_its_reconstruction_and_novel_latents_and_a_silent_control() -> None:
    planted = planted_hierarchy()
    small = tied_sae(planted["parents"])
    large_rows = torch.cat([planted["children"], planted["novel"]])  # 12 children, then 4 novel
    large = tied_sae(large_rows)
    rotation = torch.linalg.matrix_exp(0.02 * (lambda a: a - a.T)(torch.randn(32, 32, generator=torch.Generator().manual_seed(5))))
    control = tied_sae(large_rows[torch.randperm(16, generator=torch.Generator().manual_seed(3))] @ rotation)

    result = analyze_pair(small, large, planted["x"], control=control, control_name="seed 1")
    classes, summary = result.classes, result.summary
    novel_def = classes.novel_by_definition
    assert novel_def[: 2 * N_PARENTS].sum() == 0 and bool(novel_def[2 * N_PARENTS:].all())  # exactly the planted ones
    assert torch.equal(classes.match.is_novel, novel_def)  # the proxy agrees with the definition here
    assert summary["classes"]["novel_fraction_definition"] == pytest.approx(N_NOVEL / 16)
    assert summary["groups"]["swap"] == N_PARENTS and summary["groups"]["novel"] == N_NOVEL
    for parent in range(N_PARENTS):  # each parent is swapped for its own two children
        group = result.groups.small_group[parent]
        assert sorted(torch.nonzero(result.groups.large_group == group).flatten().tolist()) == [parent, parent + N_PARENTS]
    # another "seed" that found the same features: nothing of L is novel against it, by either measure
    assert summary["control"]["novel_fraction_definition"] == 0.0 and summary["control"]["novel_fraction_cosine"] == 0.0
    assert summary["control"]["median_max_cos"] > 0.95
    verdict = novel_latents_verdict([summary], trained=True, why_not="")
    assert verdict.verdict == "reproduced", verdict.why
    # the spread over 8 disjoint chunks of the tokens: the planted fraction in every chunk, and the path between the
    # two "seeds" of L's width is measured beside the pair's
    assert summary["spread"]["per_chunk"] == [N_NOVEL / 16] * 8 and summary["spread"]["std"] == 0.0
    assert summary["control"]["spread"]["mean"] == 0.0 and summary["control"]["path_excess"] == pytest.approx(0.0)
    assert "per-chunk 25.0% ± 0.0%" in verdict.measured
    # the other seed's SAE of L's width in L's place replicates the pair: the same planted novel share, none against L
    assert summary["control"]["replicate"] == {"novel_fraction_definition": N_NOVEL / 16,
                                               "control_novel_fraction_definition": 0.0}
    assert "replicates it: 25.0% (its control 0.0%)" in verdict.measured


def test_the_novel_fraction_of_untrained_sae_is_seed_noise_and_the_verdict_says_so() -> None:
    """Two random SAEs of the same width are as 'novel' to each other as to a smaller one: no width effect."""
    planted = planted_hierarchy()
    cfg = tied_sae(planted["parents"]).cfg
    small = initial_sae(cfg.__class__(**{**cfg.to_dict(), "d_sae": 8}), 0).eval()
    large, control = (initial_sae(cfg.__class__(**{**cfg.to_dict(), "d_sae": 16}), s).eval() for s in (0, 1))
    for sae in (small, large, control):
        sae.threshold_initialized.fill_(True)
    result = analyze_pair(small, large, planted["x"], control=control,
                          large_initial_decoder=initial_sae(large.cfg, 0).W_dec)
    s = result.summary
    assert s["classes"]["stuck_at_init_fraction"] == 1.0 and s["classes"]["novel_fraction_cosine_moved"] is None
    assert s["classes"]["novel_fraction_cosine"] == s["control"]["novel_fraction_cosine"] == 1.0
    family = [{"d_sae": 8, "explained_variance": 0.1, "stuck_at_init_fraction": 1.0},
              {"d_sae": 16, "explained_variance": 0.2, "stuck_at_init_fraction": 1.0}]
    trained, reason = preconditions(family)
    assert not trained and "initialisation" in reason
    verdicts, _ = study_verdicts(family, [s], None)
    assert [v.verdict for v in verdicts] == ["inconclusive"] * 3


def test_the_latents_a_nested_prefix_adds_are_novel_against_it_and_not_against_another_seed(tmp_path: Path) -> None:
    """Planted: 16 orthonormal features; a nested SAE holds them all and its prefix the first 8, another seed's the
    same 16 in another order. The 8 latents the larger prefix adds are new to the prefix (each lowers its MSE) and
    known to the other seed (none lowers its MSE): the comparison with independent widths rests on that gap."""
    features = orthonormal(16)
    x = sparse_data(features)
    shuffled = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    nested, other_seed = tied_sae(features), tied_sae(features[shuffled])
    result = analyze_pair(tied_sae(features[:8]), nested, x, control=other_seed)
    written = read_stitching_results(write_stitching_results(result, tmp_path), arrays=True)  # as the report reads it
    added = added_latent_classes(written["arrays"], n_shared=8)
    assert added["n_added"] == added["n_firing"] == 8
    assert added["novel_fraction_definition"] == added["novel_fraction_cosine"] == 1.0
    assert added["control_novel_fraction_definition"] == 0.0
    s = result.summary
    # the verdict rests on consistency across seeds at matched L0: here the other seed's prefix holds the same 16
    # directions (every latent matched), so the prefix is more canonical than independent widths whose seeds share half
    assert s["control"]["consistency"]["shared_at"]["0.7"] == 1.0
    l0 = s["path"]["l0"][-1]

    def independent(shared: float, at_l0: float = l0) -> dict:
        return {"small": s["small"], "large": s["large"], "classes": {"novel_fraction_definition": 0.2},
                "path": {"l0": [at_l0]}, "control": {"novel_fraction_definition": 0.05,
                                                     "consistency": {"shared_at": {"0.7": shared}}}}

    nested_pair = [{"summary": s, "added": added}]
    more = matryoshka_verdict([independent(0.5)], nested_pair)
    assert more.verdict == "more canonical" and "+50.0%" in more.why
    assert "by construction" in more.measured  # the added latents' novelty: described, not used
    assert matryoshka_verdict([independent(0.98)], nested_pair).verdict == "no more canonical"  # within 5 points
    worse = [{"summary": {**s, "control": {**s["control"], "consistency": {"shared_at": {"0.7": 0.2}}}},
              "added": added}]
    assert matryoshka_verdict([independent(0.5)], worse).verdict == "less canonical"
    # a sparser independent SAE is another SAE: no width to compare, no verdict
    assert matryoshka_verdict([independent(0.5, at_l0=2 * l0)], nested_pair).verdict == "inconclusive"
    no_control = [{"summary": {**s, "control": None}, "added": added}]
    assert matryoshka_verdict([independent(0.5)], no_control).verdict == "inconclusive"


def test_a_path_above_its_endpoints_is_not_reproduced() -> None:
    pair = {"small": {"d_sae": 8}, "large": {"d_sae": 16}, "path_excess": 0.4, "path_monotone_fraction": 0.5,
            "fvu_small": 0.2, "fvu_large": 0.1}
    assert path_verdict([pair], trained=True, why_not="").verdict == "not reproduced"
    assert path_verdict([{**pair, "path_excess": 0.0}], trained=True, why_not="").verdict == "reproduced"
    assert preconditions([{"d_sae": 8, "explained_variance": 0.9, "stuck_at_init_fraction": 0.0},
                          {"d_sae": 16, "explained_variance": 0.8, "stuck_at_init_fraction": 0.0}])[0] is False


def test_a_planted_compositional_decoder_gives_an_fve_far_above_its_floors() -> None:
    """Base rows built from pairs of 16 atoms: a meta-SAE of 16 latents, k = 2, explains them; the same meta-SAE on
    random unit rows or on a random initial decoder cannot."""
    g = torch.Generator().manual_seed(0)
    atoms = F.normalize(torch.randn(16, 32, generator=g), dim=-1)
    picks = torch.stack([torch.randperm(16, generator=g)[:2] for _ in range(400)])
    weights = torch.rand(400, 2, generator=g) * 0.5 + 0.5
    base_rows = F.normalize((weights[..., None] * atoms[picks]).sum(1), dim=-1)
    base = tied_sae(base_rows)  # its decoder rows are the planted compositions
    meta = fit_meta_sae(base_rows, 16, k=2, steps=600, batch_size=256, lr=1e-2, seed=0)
    analysis = analyze_meta_sae(meta, base, baseline_steps=0, initial_rows=random_unit_rows(400, 32, seed=7),
                                floor_steps=600, floor_batch_size=256, floor_lr=1e-2)
    s = analysis.summary
    assert s["fve"] > 0.8, s
    assert max(s["floors"]["random_rows"], s["floors"]["initial_decoder"]) < s["fve"] - 0.3, s["floors"]
    # the nulls that keep the rows' anisotropy stay far below too: composition, not anisotropy, is what it found
    assert max(s["floors"]["gaussian_matched"], s["floors"]["pca_shuffled"]) < s["fve"] - 0.3, s["floors"]
    assert s["pca_cap"]["m"] == 16 and 0 < s["pca_cap"]["top_k_fraction"] < s["pca_cap"]["fraction"] <= 1.0
    assert s["fve_uncentred"] >= s["fve"] - 1e-6  # uncentred divides by the larger sum of |r|^2


def test_an_anisotropic_decoder_without_composition_beats_the_isotropic_floors_but_not_the_matched_ones() -> None:
    """Rows drawn from a strongly anisotropic Gaussian (no shared atoms): the meta-SAE explains them better than random
    unit rows, so an isotropic floor alone would report structure; against the covariance-matched and PCA-shuffled
    nulls the excess vanishes."""
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -1.5, 32)
    base_rows = F.normalize(torch.randn(400, 32, generator=g) * scales, dim=-1)
    meta = fit_meta_sae(base_rows, 16, k=2, steps=600, batch_size=256, lr=1e-2, seed=0)
    s = analyze_meta_sae(meta, tied_sae(base_rows), baseline_steps=0, floor_steps=600, floor_batch_size=256,
                         floor_lr=1e-2).summary
    floors = s["floors"]
    assert s["fve"] > floors["random_rows"] + 0.1, s  # the isotropic floor is fooled by anisotropy
    for name in ("gaussian_matched", "pca_shuffled"):
        assert abs(s["fve"] - floors[name]) < 0.05, (name, s["fve"], floors)
    assert higher_floor(floors) >= max(floors["gaussian_matched"], floors["pca_shuffled"])


def test_the_matched_nulls_keep_the_rows_mean_and_principal_variances() -> None:
    """Unit rows in 64 dimensions with a decaying spectrum and a common direction: both nulls keep the mean and the
    principal variances (up to the final normalisation to unit length) but not the rows themselves."""
    g = torch.Generator().manual_seed(1)
    shift = torch.zeros(64)
    shift[0] = 0.5
    rows = F.normalize(torch.randn(3000, 64, generator=g) * torch.logspace(0, -0.7, 64) / 4 + shift, dim=-1)
    top = torch.linalg.eigvalsh(torch.cov(rows.T)).flip(0)[:8]
    for null in (covariance_matched_rows(rows, seed=0), pca_shuffled_rows(rows, seed=0)):
        assert null.shape == rows.shape and torch.allclose(null.norm(dim=-1), torch.ones(3000), atol=1e-5)
        assert torch.allclose(null.mean(0), rows.mean(0), atol=0.03)
        assert torch.allclose(torch.linalg.eigvalsh(torch.cov(null.T)).flip(0)[:8], top, rtol=0.2)
    shuffled = pca_shuffled_rows(rows, seed=0)
    assert not torch.allclose(shuffled, rows) and not torch.equal(shuffled, pca_shuffled_rows(rows, seed=1))


def test_a_width_sweep_shows_the_floors_rising_as_the_meta_sae_widens() -> None:
    """The same planted decoder read at the planted width and far wider: at 16 meta-latents the learned structure
    stands far above the floors; at 200 (2 rows per meta-latent, like the paper's 3 x d_in on a narrow base) random
    unit rows are explained almost as well, which is what the study's sweep shows a reader."""
    g = torch.Generator().manual_seed(0)
    atoms = F.normalize(torch.randn(16, 32, generator=g), dim=-1)
    picks = torch.stack([torch.randperm(16, generator=g)[:2] for _ in range(400)])
    base_rows = F.normalize((atoms[picks] * (torch.rand(400, 2, 1, generator=g) * 0.5 + 0.5)).sum(1), dim=-1)
    meta = fit_meta_sae(base_rows, 16, k=2, steps=10, batch_size=256, lr=1e-2, seed=0)
    s = analyze_meta_sae(meta, tied_sae(base_rows), baseline_steps=0, initial_rows=random_unit_rows(400, 32, seed=7),
                         floor_steps=600, floor_batch_size=256, floor_lr=1e-2, sweep_widths=[200, 16]).summary
    narrow, wide = s["width_sweep"]
    assert (narrow["n_meta"], wide["n_meta"]) == (16, 200) and s["d_in"] == 32
    assert narrow["per_d_in"] == pytest.approx(0.5) and wide["rows_per_meta"] == pytest.approx(2.0)
    assert narrow["fve"] > max(narrow["floors"]["random_rows"], narrow["floors"]["initial_decoder"]) + 0.3, narrow
    assert wide["floors"]["random_rows"] > narrow["floors"]["random_rows"] + 0.1, (narrow, wide)
    assert wide["fve"] - wide["floors"]["random_rows"] < narrow["fve"] - narrow["floors"]["random_rows"], (narrow, wide)
    assert wide["pca_cap"] == pytest.approx(1.0)  # 16 planted atoms span 16 directions: the cap says so at both
    with pytest.raises(MetaSAEError, match="floors"):
        analyze_meta_sae(meta, tied_sae(base_rows), baseline_steps=0, sweep_widths=[16])


def test_pca_cap_is_the_variance_of_the_top_directions() -> None:
    rows = torch.zeros(100, 8)
    rows[:, 0] = torch.linspace(-3, 3, 100)
    rows[:, 1] = torch.linspace(-1, 1, 100).flip(0) * torch.tensor([1.0, -1.0]).repeat(50)
    total = (rows - rows.mean(0)).square().sum()
    assert pca_variance_fraction(rows, 1) == pytest.approx(float((rows[:, 0] - rows[:, 0].mean()).square().sum() / total), abs=1e-6)
    assert pca_variance_fraction(rows, 8) == pytest.approx(1.0)


def test_an_export_rebuilds_its_initial_decoder_and_seed_controls_are_members(tmp_path: Path) -> None:
    module = SAEFamilyModule(d_in=16, widths=[32, 64], control_seeds=[3])
    assert list(module.members) == ["32", "64", "64_seed3"]
    before = {key: sae.W_dec.detach().clone() for key, sae in module.members.items()}
    assert not torch.allclose(before["64"], before["64_seed3"])
    with torch.no_grad():  # "train": move every decoder
        for sae in module.members.values():
            sae.W_dec.add_(torch.randn_like(sae.W_dec))
    module.members["32"].threshold_initialized.fill_(True)
    module.export(tmp_path)
    from canon_pl.io import load_family

    family = load_family(tmp_path)
    assert family.widths == [32, 64] and family.control_of(64)[0] == "64_seed3"
    for key, initial in before.items():
        assert torch.allclose(F.normalize(initial_decoder(tmp_path / key), dim=-1), F.normalize(initial, dim=-1))
    with pytest.raises(ValueError, match="control_seeds"):
        SAEFamilyModule(d_in=16, widths=[32, 64], control_seeds=[0])


def test_documents_are_read_in_a_seeded_order_with_held_out_documents_spread_over_the_source(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(200):  # a local source: one short document per file, in name order
        (docs / f"doc_{i:03d}.txt").write_text(f"Document number {i} of the corpus.\n")
    source = str(docs)
    in_order = list(iter_documents(source, "train", order_seed=None))
    train, val = list(iter_documents(source, "train")), list(iter_documents(source, "val"))
    assert set(train).isdisjoint(val) and len(train) + len(val) == 200 and len(val) == 10
    assert train != in_order and sorted(train) == sorted(in_order)  # shuffled, nothing lost
    assert train == list(iter_documents(source, "train"))  # the same order every time: resumable
    assert train != list(iter_documents(source, "train", order_seed=1))
    held = sorted(int(text.split()[2]) for text in val)
    assert held == list(range(0, 200, 20))  # every 20th document of the source: spread over all of it
    assert val != [f"Document number {i} of the corpus." for i in held]  # and read in a random order too
    long_file = tmp_path / "long"
    long_file.mkdir()
    (long_file / "page.txt").write_text("\n\n".join(f"Paragraph {i} " + "word " * 100 for i in range(100)))
    pieces = list(iter_documents(str(long_file), "train", order_seed=None)) + list(
        iter_documents(str(long_file), "val", order_seed=None))
    assert len(pieces) > 20 and all(p.startswith("Paragraph") for p in pieces)  # one page, many documents


def test_a_named_text_joins_its_packages_files_leaves_out_translations_and_names_the_package_it_needs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from canon_pl.lm import text

    for folder in ("python/_sources", "linux/_sources/gpu", "linux/_sources/translations/zh_CN"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "page.rst.txt").write_text(f"A page of {folder}.\n")
    python = text.NamedText((f"{tmp_path}/python/_sources/**/*.rst.txt",), ("python3.11-doc",))
    linux = text.NamedText((f"{tmp_path}/linux/_sources/**/*.rst.txt",), ("linux-doc-6.1",), ("translations",))
    missing = text.NamedText((f"{tmp_path}/nowhere/**/*.rst.txt",), ("linux-doc-6.1",))
    monkeypatch.setitem(text.NAMED_SOURCES, "both", python + linux)
    monkeypatch.setitem(text.NAMED_SOURCES, "absent", missing)
    both = [*iter_documents("both", "val", order_seed=None), *iter_documents("both", "train", order_seed=None)]
    assert both == ["A page of linux/_sources/gpu.\n", "A page of python/_sources.\n"]  # no translation
    with pytest.raises(text.TextSourceError, match="apt-get install linux-doc-6.1"):
        text.check_text_source("absent")
    assert text.NAMED_SOURCES["docs"].packages == ("python3.11-doc", "linux-doc-6.1")


def test_an_analysis_reads_only_the_held_out_part_of_a_cache(tmp_path: Path) -> None:
    train = [torch.zeros(64, 8)]
    held_out = [torch.ones(32, 8)]
    index = write_activation_shards(train, tmp_path / "cache", tokens_per_shard=32, dtype="float32",
                                    val_batches=held_out)
    assert index.split_ids("train") == [0, 1] and index.split_ids("val") == [2]
    x = cache_activations(tmp_path / "cache", 1000, 8)
    assert x.shape == (32, 8) and bool((x == 1).all())
    write_activation_shards(train, tmp_path / "no_val", tokens_per_shard=64, dtype="float32")
    assert ShardIndex.load(tmp_path / "no_val").split_ids("val") == []
    with pytest.raises(AnalysisDataError, match="no held-out part"):
        cache_activations(tmp_path / "no_val", 10, 8)


def test_an_analysis_refuses_a_cache_of_another_model_or_hook_point(tmp_path: Path) -> None:
    write_activation_shards([torch.zeros(64, 8)], tmp_path / "cache", tokens_per_shard=32, dtype="float32",
                            metadata={"model": "smollm2-135m", "hook_point": "model.layers.6"},
                            val_batches=[torch.ones(32, 8)])
    assert cache_activations(tmp_path / "cache", 8, 8, "smollm2-135m", "model.layers.6").shape == (8, 8)
    with pytest.raises(AnalysisDataError, match="'model.layers.6' but the SAEs were trained on 'model.layers.5'"):
        cache_activations(tmp_path / "cache", 8, 8, "smollm2-135m", "model.layers.5")
    with pytest.raises(AnalysisDataError, match="model 'smollm2-135m' but the SAEs were trained on 'gpt2'"):
        cache_activations(tmp_path / "cache", 8, 8, "gpt2", "model.layers.6")


def test_a_meta_sae_that_explains_random_rows_as_well_is_inconclusive() -> None:
    from canon_pl.study.verdicts import meta_verdict

    meta = {"fve": 0.77, "fve_uncentred": 0.77, "n_meta": 1728, "k": 4,
            "floors": {"random_rows": 0.79, "initial_decoder": 0.79}, "pca_cap": {"m": 576, "fraction": 1.0}}
    assert meta_verdict(meta, trained=True, why_not="").verdict == "inconclusive"
    low = {**meta, "fve": 0.25, "floors": {"random_rows": 0.21, "initial_decoder": 0.21}}
    assert meta_verdict(low, trained=True, why_not="").verdict == "not reproduced"
    assert meta_verdict({**low, "fve": 0.5}, trained=True, why_not="").verdict == "reproduced"


def test_the_granularity_verdict_follows_its_rule() -> None:
    def pair(mine: float | None, control: float | None) -> dict:
        return {"small": {"d_sae": 8}, "large": {"d_sae": 16},
                "granularity": {"monotone_largest_group_share": mine},
                "control": {"granularity": {"monotone_largest_group_share": control}}}

    assert granularity_verdict([pair(0.01, 0.05)], True, "").verdict == "supported"
    assert granularity_verdict([pair(0.01, None)], True, "").verdict == "supported"  # the control never gets there
    assert granularity_verdict([pair(0.03, 0.05)], True, "").verdict == "refuted"  # as coarse as seed noise needs
    assert granularity_verdict([pair(None, None)], True, "").verdict == "refuted"
    assert granularity_verdict([pair(0.01, 0.05), pair(0.03, 0.04)], True, "").verdict == "refuted"
    assert granularity_verdict([{**pair(0.01, 0.05), "granularity": None}], True, "").verdict == "inconclusive"
    assert granularity_verdict([pair(0.01, 0.05)], False, "untrained").verdict == "inconclusive"
    # a control that stalls just above the tolerance (1.07x with 80 % of L in one group) still counts at that share
    stalled = {"tolerance": 0.05, "monotone_largest_group_share": None,
               "points": [{"path_excess": 1.5, "largest_group_share": 0.02},
                          {"path_excess": 0.07, "largest_group_share": 0.8}]}
    close = {**pair(0.6, None), "control": {"granularity": stalled}}
    assert granularity_verdict([close], True, "").verdict == "refuted"
    far = {**stalled, "points": [{"path_excess": 0.3, "largest_group_share": 0.99}]}
    assert granularity_verdict([{**pair(0.6, None), "control": {"granularity": far}}], True, "").verdict == "supported"


def test_promoted_tokens_are_shown_only_deep_in_the_model() -> None:
    """The logit lens reads sub-word noise at a mid layer: the report describes meta-latents by the latents that use
    them there, and adds promoted tokens only from two thirds of the depth on (or never, when the depth is unknown)."""
    from canon_pl.stats.readable import logit_lens_meaningful

    assert not logit_lens_meaningful("model.layers.6", 30)  # the study's hook point
    assert logit_lens_meaningful("model.layers.25", 30)
    assert logit_lens_meaningful("blocks.8.hook_resid_pre", 12)  # the paper's GPT-2 SAEs: layer 8 of 12
    assert not logit_lens_meaningful("model.layers.25", None) and not logit_lens_meaningful(None, 30)
