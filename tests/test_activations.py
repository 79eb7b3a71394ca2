"""Real activations from the bundled SmolLM2 through nnsight: capture, buffer, resume, cache, splicing, errors."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch

from canon_pl.data import ShardError, ShardIndex
from canon_pl.lm.text_identity import text_identity
from canon_pl.lm import (
    ContextLengthError,
    HookedLanguageModel,
    HookPointError,
    ModelLoadError,
    TextSourceError,
    check_text_source,
    load_causal_lm,
    spliced_loss_sums,
)
from canon_pl.sae import BatchTopKSettings
from canon_pl.training import ActivationDataModule, ActivationShardDataModule, OptimizerSettings, SAEModule
from canon_pl.training.cache import cache_metadata, write_activation_cache
from tests.helpers import make_trainer

pytest.importorskip("gguf")
SMALL = dict(text="pydoc-topics", hook_point="model.layers.2", context_length=32, contexts_per_forward=8,
             block_contexts=16, batch_size=128, val_contexts=8)


@pytest.fixture(scope="module")
def hooked() -> HookedLanguageModel:
    return HookedLanguageModel(load_causal_lm("smollm2-135m"))


def datamodule(hooked: HookedLanguageModel, **overrides) -> ActivationDataModule:
    dm = ActivationDataModule(**{**SMALL, **overrides})
    dm.hooked = hooked  # share the loaded model between tests
    return dm


@pytest.fixture(scope="module")
def tokens(hooked: HookedLanguageModel) -> torch.Tensor:
    """Four real contexts ``[4, 32]`` of the training split."""
    return torch.stack([c for _, c in zip(range(4), datamodule(hooked)._contexts("train", 0))])


@pytest.mark.parametrize("hook_point, module_path", [
    ("model.layers.2", ("model", "layers", 2)),
    ("model.layers.2.mlp", ("model", "layers", 2, "mlp")),
    ("model.layers.2.self_attn", ("model", "layers", 2, "self_attn")),
])
def test_capture_equals_a_plain_forward_hook(hooked, tokens, hook_point: str, module_path: tuple) -> None:
    module = hooked.model
    for part in module_path:
        module = module[part] if isinstance(part, int) else getattr(module, part)
    seen = {}

    def hook(module, inputs, output) -> None:  # returns None: observe, do not replace
        seen["out"] = output[0] if isinstance(output, tuple) else output

    handle = module.register_forward_hook(hook)
    with torch.inference_mode():
        hooked.model(tokens)
    handle.remove()
    captured = hooked.capture(tokens, hook_point)
    assert captured.shape == (*tokens.shape, 576)
    assert torch.equal(captured, seen["out"])


def test_capture_stops_after_the_hook_layer(hooked, tokens) -> None:
    calls = []
    handle = hooked.model.model.layers[3].register_forward_hook(lambda *args: calls.append(1))
    hooked.capture(tokens, "model.layers.2")
    handle.remove()
    assert calls == []


def test_contexts_start_with_bos_and_have_the_configured_length(hooked, tokens) -> None:
    assert tokens.shape == (4, 32)
    assert (tokens[:, 0] == hooked.tokenizer.bos_token_id).all()


def test_buffer_batches_live_on_the_training_device(hooked) -> None:
    dm = datamodule(hooked)
    _, batch = next(dm.train_batches(dm.initial_position()))
    assert batch.shape == (128, 576) and batch.device == hooked.device and batch.dtype == torch.float32
    assert dm.excluded_fraction >= 1 / 32  # at least the BOS of every context


@pytest.mark.gpu
def test_buffer_on_gpu_when_the_model_is_there() -> None:
    dm = ActivationDataModule(**SMALL)
    dm.load_model("cuda")
    _, batch = next(dm.train_batches(dm.initial_position()))
    assert batch.is_cuda


class CountingTokenizer:
    """The model's tokenizer, keeping the texts it tokenises and interrupting the run (as a kill would) when it is
    given ``interrupt_on``."""

    def __init__(self, tokenizer, interrupt_on: str | None = None) -> None:
        self.tokenizer, self.interrupt_on, self.texts = tokenizer, interrupt_on, []

    def __call__(self, text: str, **kwargs):
        if text == self.interrupt_on:
            raise KeyboardInterrupt
        self.texts.append(text)
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def test_resume_yields_exactly_the_batches_of_an_uninterrupted_run(hooked, monkeypatch: pytest.MonkeyPatch) -> None:
    """And it tokenises no document before the block it re-reads first: the position says where that block starts
    in the text. A position without that (an older checkpoint's) re-tokenises up to there, to the same batches."""
    full = [item for _, item in zip(range(9), datamodule(hooked).train_batches([0, 0]))]
    position = full[4][0]
    documents, skipped_tokens = position[2]
    assert documents > 0  # the resume starts past whole documents
    counting = CountingTokenizer(hooked.tokenizer)
    monkeypatch.setattr(hooked, "tokenizer", counting)
    resumed = [item for _, item in zip(range(4), datamodule(hooked).train_batches(position))]
    for (_, expected), (_, got) in zip(full[5:], resumed):
        assert torch.equal(expected, got)
    train_documents = list(datamodule(hooked).source.documents("train"))
    assert counting.texts == train_documents[documents:documents + len(counting.texts)]
    older = [item for _, item in zip(range(4), datamodule(hooked).train_batches(position[:2]))]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, older))


def test_cache_written_then_read_gives_the_same_activations(hooked, tmp_path: Path) -> None:
    dm = datamodule(hooked)
    index = write_activation_cache(dm, tmp_path / "cache", n_tokens=640, dtype="float32", tokens_per_shard=256)
    assert index.n_tokens == 640 and len(index.shards) == 3
    source = datamodule(hooked).source  # the first piece's documents, packed and captured in their order
    contexts = islice(source.pack(source.documents("train")), 24)  # 24 x 31 kept tokens: more than 640
    captured = torch.cat([b.kept for b in source.batches(contexts, 8)])
    reread = ShardIndex.load(tmp_path / "cache")
    assert torch.equal(torch.cat([reread.read_shard(i) for i in range(3)]), captured[:640])
    assert reread.metadata["hook_point"] == "model.layers.2"
    ActivationShardDataModule(str(tmp_path / "cache"), batch_size=64, expect=cache_metadata(dm))
    with pytest.raises(ShardError, match="hook_point='model.layers.2' but this run expects hook_point='model.layers.9'"):
        ActivationShardDataModule(str(tmp_path / "cache"), batch_size=64, expect={"hook_point": "model.layers.9"})


def test_a_killed_cache_goes_on_at_its_next_piece_without_tokenising_the_earlier_documents(
        hooked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache of 5,000 tokens in pieces of 2 documents: one run interrupted in its fourth piece, then the same
    command again, gives the cache an uninterrupted run gives; the second run tokenises only the documents of the
    pieces it writes."""
    settings = dict(n_tokens=5000, dtype="float32", tokens_per_shard=512, val_tokens=300, piece_documents=2)
    whole = write_activation_cache(datamodule(hooked), tmp_path / "whole", **settings)
    train_documents = list(datamodule(hooked).source.documents("train"))
    real = hooked.tokenizer

    monkeypatch.setattr(hooked, "tokenizer", CountingTokenizer(real, interrupt_on=train_documents[3 * 2 + 1]))
    with pytest.raises(KeyboardInterrupt):
        write_activation_cache(datamodule(hooked), tmp_path / "cache", **settings)
    kept = ShardIndex.load(tmp_path / "cache")
    assert {s["piece"] for s in kept.shards if s.get("split") == "train"} == {0, 1, 2}  # three whole pieces
    assert sorted(p.name for p in (tmp_path / "cache").glob("shard_*")) == sorted(s["file"] for s in kept.shards)

    resumed = CountingTokenizer(real)
    monkeypatch.setattr(hooked, "tokenizer", resumed)
    index = write_activation_cache(datamodule(hooked), tmp_path / "cache", **settings)
    assert resumed.texts == train_documents[6:6 + len(resumed.texts)]  # from piece 3 on, nothing earlier
    for split in ("train", "val"):
        got = torch.cat([index.read_shard(i) for i in index.split_ids(split)])
        assert torch.equal(got, torch.cat([whole.read_shard(i) for i in whole.split_ids(split)]))
    assert index.split_tokens("train") == 5000 and index.split_tokens("val") == 300
    assert index.text_identity == text_identity("pydoc-topics") and index.text_identity["sha256"]


def test_a_cache_whose_text_changed_since_its_first_pieces_is_written_anew_not_mixed(
        hooked, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A named text is what a package installs today: the cache records the digest of the text it read, and a
    continued write from a text that changed since (a package update, an edited file) starts over instead of
    mixing two texts in one cache."""
    from pydoc_data.topics import topics

    notes = tmp_path / "notes"
    notes.mkdir()
    for name in sorted(topics)[:30]:
        (notes / f"{name}.txt").write_text(topics[name])
    settings = dict(dtype="float32", tokens_per_shard=512, piece_documents=2)
    first = write_activation_cache(datamodule(hooked, text=str(notes)), tmp_path / "cache", n_tokens=600, **settings)
    before = first.text_identity
    assert before == text_identity(str(notes)) and before["files"] == 30 and before["packages"] == {}
    capsys.readouterr()
    write_activation_cache(datamodule(hooked, text=str(notes)), tmp_path / "cache", n_tokens=1200, **settings)
    assert "resuming the cache" in capsys.readouterr().err  # the same text: continued

    edited = sorted(notes.iterdir())[7]
    edited.write_text(edited.read_text() + "\n\nOne more paragraph.")
    again = write_activation_cache(datamodule(hooked, text=str(notes)), tmp_path / "cache", n_tokens=1800, **settings)
    err = capsys.readouterr().err
    assert "is not the text on this machine now" in err and "resuming the cache" not in err
    assert again.text_identity["sha256"] != before["sha256"] and again.text_identity == text_identity(str(notes))
    assert again.split_tokens("train") == 1800 and {s["piece"] for s in again.shards} >= {0}


def test_spliced_loss_with_a_perfect_reconstruction_equals_the_clean_loss(hooked, tokens) -> None:
    sums = spliced_loss_sums(hooked, tokens, "model.layers.2", {"perfect": lambda h: h.clone()})["perfect"]
    assert torch.allclose(sums["ce_spliced"], sums["ce_clean"], rtol=1e-5)
    assert sums["kl"].abs() / sums["n_tokens"] < 1e-4
    assert sums["ce_zero"] > sums["ce_clean"]  # ablating the residual stream hurts


def test_sae_trains_on_real_activations_and_reports_ce_recovered(hooked, tmp_path: Path) -> None:
    dm = datamodule(hooked)
    module = SAEModule(d_in=576, d_sae=256, hook_point="model.layers.2", model_id="smollm2-135m",
                       sae=BatchTopKSettings(k=16),
                       optimizer=OptimizerSettings(lr=1e-3))
    trainer = make_trainer(tmp_path, max_steps=12, val_check_interval=12)
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert dm.resume_position != [0, 0] and dm.train_batches_consumed == 12
    for key in ("val/explained_variance", "val/ce_recovered", "val/ce_clean", "val/ce_sae", "val/kl", "val/delta_ce"):
        assert torch.isfinite(metrics[key]), key
    assert metrics["val/ce_zero"] > metrics["val/ce_clean"]


def test_unknown_hook_point_lists_the_valid_ones(hooked) -> None:
    with pytest.raises(HookPointError, match=r"'model.layers.40' not found; the model has layers 0-29"):
        hooked.capture(torch.ones(1, 4, dtype=torch.long), "model.layers.40")
    with pytest.raises(HookPointError):
        hooked.parse_hook_point("transformer.h.3")


def test_model_that_cannot_be_found_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        load_causal_lm("no-such-org/no-such-model")


def test_empty_or_missing_text_source_fails_before_training(hooked, tmp_path: Path, monkeypatch) -> None:
    import canon_pl.lm.source as source

    monkeypatch.setattr(source, "load_causal_lm", lambda *a, **k: hooked.loaded)
    (tmp_path / "empty.txt").write_text("\n\n")
    for text, message in ((str(tmp_path / "empty.txt"), "is empty"), (str(tmp_path / "nothing*.txt"), "matches no files")):
        with pytest.raises(TextSourceError, match=message):
            ActivationDataModule(**{**SMALL, "text": text}).load_model()


def test_context_longer_than_the_model_allows(hooked, monkeypatch) -> None:
    import canon_pl.lm.source as source

    monkeypatch.setattr(source, "load_causal_lm", lambda *a, **k: hooked.loaded)
    dm = ActivationDataModule(**{**SMALL, "context_length": 9000})
    with pytest.raises(ContextLengthError, match="exceeds the model's maximum of 8192"):
        dm.load_model()


def test_gpt2_style_blocks_are_hook_points_too(hooked, tmp_path: Path) -> None:
    """The paper-scale recipe trains on GPT-2 small's `transformer.h.8`: hook points follow the model's own block
    list. A tiny random GPT-2 saved locally (with SmolLM2's tokenizer) is captured and spliced like SmolLM2."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = hooked.tokenizer
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2-tiny")
    tokenizer.save_pretrained(tmp_path / "gpt2-tiny")
    gpt2 = HookedLanguageModel(load_causal_lm(str(tmp_path / "gpt2-tiny")))
    assert gpt2.layers_path == "transformer.h"
    assert {"transformer.h.1", "transformer.h.1.mlp", "transformer.h.1.attn"} <= set(gpt2.hook_points())
    tokens = torch.randint(0, len(tokenizer), (2, 8))
    for point in ("transformer.h.1", "transformer.h.0.attn", "transformer.h.0.mlp"):
        assert gpt2.capture(tokens, point).shape == (2, 8, 32)
    clean = gpt2.logits(tokens)
    assert torch.allclose(gpt2.logits(tokens, "transformer.h.0.attn", lambda h: h), clean, atol=1e-5)
    assert not torch.allclose(gpt2.logits(tokens, "transformer.h.0", torch.zeros_like), clean, atol=1e-3)
    with pytest.raises(HookPointError, match=r"use transformer.h.N \(residual stream\) or one of .*transformer.h.N.attn"):
        gpt2.parse_hook_point("model.layers.1")


def test_a_device_map_places_the_model_with_accelerate_instead_of_moving_it_whole() -> None:
    """`model_device_map: auto` spreads a big LM over the GPUs; here everything maps to the CPU, through the same path."""
    loaded = load_causal_lm("smollm2-135m", device="meta", device_map={"": "cpu"})  # the map wins over `device`
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
    hooked = HookedLanguageModel(loaded)
    assert hooked.capture(torch.ones(1, 4, dtype=torch.long), "model.layers.1").shape == (1, 4, loaded.d_model)


def test_training_validation_and_an_analysis_capture_the_same_activations(hooked, tmp_path: Path) -> None:
    """One capture source: the held-out activations an analysis of a run's export captures (stitching, meta-SAE,
    statistics) are exactly the ones the run's validation saw, with the run's own token selection (here: no
    outlier filter, BOS kept), though the analysis builds no DataModule."""
    from canon_pl.lm import ActivationSource, CaptureSettings
    from canon_pl.training.analysis_data import text_activations

    dm = datamodule(hooked, outlier_factor=None, exclude_bos=False)
    validation = torch.cat([batch["activations"] for batch in dm.val_dataloader()])
    assert validation.shape[0] == SMALL["val_contexts"] * SMALL["context_length"]  # nothing left out
    source = ActivationSource(CaptureSettings.like_training(dm.provenance()), hooked=hooked)
    analysed = torch.cat([b.kept for b in source.take("val", SMALL["val_contexts"], SMALL["contexts_per_forward"])])
    torch.testing.assert_close(analysed, validation)
    # and through the analyses' entry point, given only the export's record (it loads its own LM)
    again, _, _ = text_activations("pydoc-topics", validation.shape[0], "smollm2-135m", "model.layers.2",
                                provenance=dm.provenance(), contexts_per_forward=SMALL["contexts_per_forward"])
    torch.testing.assert_close(again, validation)
    # the default selection (outliers and BOS out) would have captured fewer tokens: the setting mattered
    default = sum(batch["activations"].shape[0] for batch in datamodule(hooked).val_dataloader())
    assert default <= SMALL["val_contexts"] * (SMALL["context_length"] - 1) < validation.shape[0]


def test_a_hub_dataset_name_is_read_from_the_hub_cache_without_a_network(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``owner/name`` (the release recipe's ``Skylion007/openwebtext``) is a hub dataset, not a missing local path:
    offline it is read from the snapshot a download left in the hub cache (a real cache layout built here)."""
    import json

    from canon_pl.lm.text import iter_documents

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--canon-test--tiny-notes"
    (repo / "snapshots" / commit / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    rows = [{"text": f"note {i}: a latent that fires on the word Einstein."} for i in range(40)]
    (repo / "snapshots" / commit / "data" / "train.jsonl").write_text("\n".join(map(json.dumps, rows)))
    import huggingface_hub.constants

    # HF_HUB_CACHE as a process started with it sees it (huggingface_hub reads the variable once, at import)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    check_text_source("canon-test/tiny-notes")
    held_out = list(iter_documents("canon-test/tiny-notes", "val", val_every=4, order_seed=None))
    assert held_out == [rows[i]["text"] for i in range(0, 40, 4)]
    with pytest.raises(TextSourceError, match="hub cache on this machine has no copy of it"):
        check_text_source("canon-test/not-downloaded")
