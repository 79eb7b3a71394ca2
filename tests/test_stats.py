"""Latent statistics: streaming top-k equals brute force, a planted latent's top examples are its token, files
round-trip one latent at a time, and a run is never described with another model's activations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from canon_pl.io import export_sae
from canon_pl.sae import SAEConfig, build_sae
from canon_pl.stats import (
    LatentStatistics,
    StreamingTopK,
    collect_statistics,
    write_statistics,
)
from tests.helpers import run_cli, run_here


def test_streaming_top_k_equals_brute_force_with_payloads() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(7, 300, generator=g)
    payload = torch.randn(7, 300, 3, generator=g)
    ids = torch.arange(300).expand(7, -1)
    top = StreamingTopK(7, 5, (3,))
    for s in range(0, 300, 37):
        top.update(scores[:, s:s + 37], ids[:, s:s + 37], payload[:, s:s + 37])
    values, where = scores.topk(5, dim=1)
    torch.testing.assert_close(top.scores, values)
    assert torch.equal(top.ids, where)
    torch.testing.assert_close(top.payload, payload.gather(1, where.unsqueeze(-1).expand(-1, -1, 3)))


def planted_run(n_batches: int = 4, n_ctx: int = 6, seq: int = 16, d_in: int = 24, token: int = 42):
    """Activations of random tokens plus a direction v exactly where token ``token`` occurs; a ReLU SAE whose latent
    0 reads v and whose other latents are random."""
    g = torch.Generator().manual_seed(1)
    v = F.normalize(torch.randn(d_in, generator=g), dim=0)
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=8, architecture="relu", hook_point="blocks.0", model_id="toy"))
    with torch.no_grad():
        sae.W_enc[:, 0] = v
        sae.W_dec[0] = v
        sae.b_enc.fill_(-0.5)
    batches = []
    for _ in range(n_batches):
        tokens = torch.randint(0, 40, (n_ctx, seq), generator=g)
        tokens[torch.rand(n_ctx, seq, generator=g) < 0.05] = token
        acts = 0.2 * torch.randn(n_ctx, seq, d_in, generator=g)
        strength = 2.0 + torch.rand(n_ctx, seq, generator=g)
        acts += (tokens == token).unsqueeze(-1) * strength.unsqueeze(-1) * v
        mask = torch.ones(n_ctx, seq, dtype=torch.bool)
        mask[:, 0] = False  # BOS position left out, as in training
        batches.append((tokens, acts, mask))
    return sae.eval(), batches, token


def test_a_planted_latent_shows_its_token_at_the_top_and_windows_match_brute_force() -> None:
    sae, batches, token = planted_run()
    collectors, contexts, _ = collect_statistics({"sae": sae}, batches, n_top=5, n_sample=6, window=2)
    c = collectors["sae"]
    flat_tokens = torch.cat(contexts).reshape(-1)
    assert (flat_tokens[c.top.ids[0]] == token).all()
    # brute force over every counted token
    with torch.no_grad():
        acts = torch.cat([sae.encode(a.reshape(-1, a.shape[-1]), inference=True) * m.reshape(-1, 1)
                          for _, a, m in batches])
    torch.testing.assert_close(c.top.scores[:, :5].clamp_min(0), acts.topk(5, dim=0).values.T.clamp_min(0))
    seq = contexts[0].shape[1]
    for latent in range(sae.d_sae):
        for slot in range(5):
            i = int(c.top.ids[latent, slot])
            if i < 0 or c.top.scores[latent, slot] <= 0:
                continue
            ctx, pos = divmod(i, seq)
            expected = [float(acts[ctx * seq + p, latent]) if 0 <= p < seq else 0.0 for p in range(pos - 2, pos + 3)]
            torch.testing.assert_close(c.top.payload[latent, slot], torch.tensor(expected))
    assert c.n_tokens == sum(int(m.sum()) for _, _, m in batches)
    assert int(c.fire_count[0]) == int((acts[:, 0] > 0).sum()) and int(c.histogram[0].sum()) == int(c.fire_count[0])
    sampled = c.sample.ids[0][c.sample.ids[0] >= 0]  # uniform over firing occurrences, each with its activation
    assert len(sampled) == 6 and len(set(sampled.tolist())) == 6 and (acts[sampled, 0] > 0).all()
    torch.testing.assert_close(c.sample.payload[0, :, 0], acts[sampled, 0])


def test_statistics_files_round_trip_one_latent_at_a_time(tmp_path: Path) -> None:
    sae, batches, _ = planted_run()
    collectors, contexts, _ = collect_statistics({"8": sae}, batches, n_top=4, n_sample=3, window=1)
    unembed = torch.randn(50, sae.d_in)
    from canon_pl.stats import unembedding_directions

    unembedded = {"8": unembedding_directions(sae.W_dec.detach(), unembed, n=5)}
    write_statistics(tmp_path, collectors, torch.cat(contexts), unembedded, {"model_id": "toy"})
    stats = LatentStatistics.open(tmp_path)
    assert stats.members == ["8"] and stats.index["model_id"] == "toy"
    one = stats.latent("8", 0)
    assert torch.equal(one["top_ids"], collectors["8"].top.ids[0])
    torch.testing.assert_close(one["top_windows"], collectors["8"].top.payload[0])
    assert one["promoted_tokens"].tolist() == (F.normalize(sae.W_dec[0].detach(), dim=0) @ unembed.T).topk(5).indices.tolist()
    torch.testing.assert_close(stats.frequencies("8")[0], collectors["8"].fire_count[0].float() / collectors["8"].n_tokens)
    assert torch.equal(stats.contexts(), torch.cat(contexts).to(torch.int32))


def test_stats_command_on_the_bundled_model_and_a_mismatched_hook_point(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    sae = build_sae(SAEConfig(d_in=576, d_sae=64, architecture="batchtopk", k=8, hook_point="model.layers.2",
                              model_id="smollm2-135m"))
    with torch.no_grad():
        sae.threshold.fill_(0.5)
        sae.threshold_initialized.fill_(True)
    export_sae(sae, tmp_path / "run")
    result = run_here("stats", "--run", str(tmp_path / "run"), "--hook-point", "model.layers.7", capsys=capsys)
    assert result.returncode == 2 and "'model.layers.2'" in result.stderr and "model.layers.7" in result.stderr
    assert not (tmp_path / "run" / "stats").exists()
    result = run_cli("stats", "--run", str(tmp_path / "run"), "--text", "pydoc-topics", "--tokens", "512",
                     "--top", "3", cwd=tmp_path, script="canon-pl")
    assert result.returncode == 0, result.stderr[-2000:]
    stats = LatentStatistics.open(tmp_path / "run" / "stats")
    assert stats.index["hook_point"] == "model.layers.2" and stats.contexts().shape == (4, 128)
    assert stats.latent("sae", 0)["top_ids"].shape == (3,)
    assert 0 < stats.index["members"]["sae"]["n_tokens"] <= 512

    # A run trained with its own capture settings is analysed with them: context length, text, token selection
    # (no outlier filter) come from the export's record, and analysing another text is said.
    export_sae(sae, tmp_path / "own", extra={"data": {"text": "pydoc-topics", "context_length": 32,
                                                      "outlier_factor": None, "exclude_bos": True}})
    result = run_here("stats", "--run", str(tmp_path / "own"), "--tokens", "256", "--top", "3",
                      capsys=capsys)  # the console script's own process: above; this one in this process
    assert result.returncode == 0, result.stderr[-2000:]
    stats = LatentStatistics.open(tmp_path / "own" / "stats")
    assert stats.index["text"] == "pydoc-topics" and stats.contexts().shape == (8, 32)
    assert stats.index["members"]["sae"]["n_tokens"] == 8 * 31  # every token but BOS: no outlier left out


def test_an_analysis_captures_text_as_the_run_was_trained(tmp_path: Path, capsys) -> None:
    from canon_pl.io import training_data
    from canon_pl.lm.source import CaptureSettings

    sae = build_sae(SAEConfig(d_in=8, d_sae=16, architecture="relu"))
    recorded = {"model": "smollm2-135m", "hook_point": "model.layers.6", "text": "python-docs", "context_length": 64,
                "exclude_bos": False, "outlier_factor": None, "val_every": 10, "document_chars": None,
                "shuffle_documents": False, "seed": 3}
    export_sae(sae, tmp_path / "run", extra={"data": recorded})
    export_sae(sae, tmp_path / "old")
    assert training_data(tmp_path / "run") == recorded and training_data(tmp_path / "old") == {}
    settings = CaptureSettings.like_training(training_data(tmp_path / "run"), text="python-docs",
                                             hook_point="model.layers.6")
    assert settings.provenance() == recorded
    assert CaptureSettings.like_training(training_data(tmp_path / "old"), text="pydoc-topics") == CaptureSettings(
        text="pydoc-topics")  # nothing recorded: the defaults
    assert capsys.readouterr().err == ""
    CaptureSettings.like_training(recorded, text="pydoc-topics")
    assert "the SAEs were trained on 'python-docs'" in capsys.readouterr().err


def test_meta_sae_statistics_list_each_meta_latents_members(tmp_path: Path) -> None:
    from canon_pl.meta import MetaDecomposition
    from canon_pl.stats import unembedding_directions
    from canon_pl.stats.files import write_meta_statistics

    # base latents 0..5 over 3 meta-latents; meta-latent 2 is used by nobody
    decomposition = MetaDecomposition(base=torch.tensor([0, 0, 1, 2, 3, 4, 5]), meta=torch.tensor([0, 1, 0, 1, 0, 0, 1]),
                                      value=torch.tensor([0.5, 0.2, 0.9, 0.3, 0.1, 0.4, 0.8]), n_base=6, n_meta=3)
    W = F.normalize(torch.randn(3, 8), dim=-1)
    write_meta_statistics(tmp_path, decomposition, unembedding_directions(W, torch.randn(30, 8), n=4),
                          {"model_id": "toy"}, n_members=3)
    stats = LatentStatistics.open(tmp_path)
    first = stats.latent("meta", 0)
    assert first["member_latents"].tolist() == [1, 0, 4] and int(first["fire_count"]) == 4
    assert stats.latent("meta", 2)["member_latents"].tolist() == [-1, -1, -1]
    assert stats.latent("meta", 1)["promoted_tokens"].shape == (4,)


def test_co_firing_partners_equal_brute_force_and_find_a_planted_copy() -> None:
    """The best co-firing partner of each latent (Jaccard of firing sets) over batches equals the dense computation;
    a latent that fires on exactly another's tokens has Jaccard 1, one that never fires has no partner."""
    from canon_pl.stats.cofiring import CoFiring

    g = torch.Generator().manual_seed(0)
    fires_a = torch.rand(300, 6, generator=g) < 0.2
    fires_b = torch.rand(300, 9, generator=g) < 0.2
    fires_b[:, 4] = fires_a[:, 1]  # B's latent 4 fires exactly where A's latent 1 does
    fires_a[:, 5] = False  # A's latent 5 never fires
    counts = CoFiring(6, 9)
    for rows in torch.arange(300).split(64):
        a_rows, a_cols = torch.nonzero(fires_a[rows], as_tuple=True)
        b_rows, b_cols = torch.nonzero(fires_b[rows], as_tuple=True)
        counts.update(len(rows), (a_rows, a_cols), (b_rows, b_cols))
    a, b = fires_a.float(), fires_b.float()
    both = a.T @ b
    jaccard = both / (a.sum(0)[:, None] + b.sum(0)[None, :] - both).clamp_min(1)
    partner, best = counts.best_partners()
    torch.testing.assert_close(best, jaccard.max(dim=1).values)
    assert partner[1] == 4 and best[1] == 1.0
    assert partner[5] == -1 and best[5] == 0.0
    assert torch.equal(partner[:5], jaccard[:5].argmax(dim=1))


def test_statistics_record_each_members_co_firing_partner_in_another_sae(tmp_path: Path) -> None:
    sae, batches, _ = planted_run()
    copy = build_sae(sae.cfg)
    copy.load_state_dict(sae.state_dict())
    collectors, contexts, cofiring = collect_statistics({"8": sae}, batches, cofiring={("8", "8_seed1"): copy},
                                                        n_top=2, n_sample=2, window=1)
    partner, jaccard = cofiring[("8", "8_seed1")].best_partners()
    fired = collectors["8"].fire_count > 0
    assert torch.equal(partner[fired], torch.arange(8)[fired]) and bool((jaccard[fired] == 1).all())
    from canon_pl.stats import unembedding_directions

    unembedded = {"8": unembedding_directions(sae.W_dec.detach(), torch.randn(50, sae.d_in), n=2)}
    write_statistics(tmp_path / "stats", collectors, torch.cat(contexts), unembedded, {"model_id": "toy"},
                     cofiring={("8", "seed"): ("8_seed1", partner, jaccard)})
    stats = LatentStatistics.open(tmp_path / "stats")
    assert stats.cofiring("8", 0) == [{"kind": "seed", "other": "8_seed1", "latent": 0, "jaccard": 1.0}]


def test_co_firing_counts_in_slices_equal_one_pass(monkeypatch) -> None:
    """Many co-active pairs are enumerated in slices (bounded memory); the counts are those of one pass."""
    from canon_pl.stats import cofiring

    g = torch.Generator().manual_seed(1)
    a = torch.nonzero(torch.rand(64, 10, generator=g) < 0.5, as_tuple=True)
    b = torch.nonzero(torch.rand(64, 12, generator=g) < 0.5, as_tuple=True)
    whole = cofiring.CoFiring(10, 12)
    whole.update(64, a, b)
    monkeypatch.setattr(cofiring, "PAIRS_PER_SLICE", 7)
    sliced = cofiring.CoFiring(10, 12)
    sliced.update(64, a, b)
    assert torch.equal(whole.counts, sliced.counts) and whole.counts.sum() > 100
