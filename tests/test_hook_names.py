"""The hook names SAE libraries record (TransformerLens / SAELens ``blocks.L.hook_resid_pre``, ...) drive capture and
splicing on the Hugging Face models researchers use: each name is checked against what the model itself computes
(its hidden states, and plain torch hooks on the module TransformerLens means), on small random models built here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canon_pl.lm import HookedLanguageModel
from canon_pl.lm.hooked import HookPointError
from canon_pl.lm.loading import LoadedModel

N_LAYERS, VOCAB = 3, 64


def tiny_tokenizer():
    """A word-level tokenizer of ``VOCAB`` entries (nnsight wants one; the tests feed token ids)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")), unk_token="[UNK]")


def tiny_model(kind: str):
    """A random model of each family with ``N_LAYERS`` blocks of width 32."""
    import transformers as tf

    shared = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=2,
                  vocab_size=VOCAB, max_position_embeddings=64)
    torch.manual_seed(0)
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=N_LAYERS, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB))
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=1, **shared))
    if kind == "gemma2":
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(num_key_value_heads=1, head_dim=16, attn_implementation="eager",
                                                    **shared))
    if kind == "gemma3":
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(num_key_value_heads=1, head_dim=16,
                                                        attn_implementation="eager", **shared))
    return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**shared))


# The module whose output TransformerLens calls hook_attn_out / hook_mlp_out, per family, stated independently of the
# code under test: Gemma 2 and 3 normalise each sub-layer's output before adding it to the residual stream.
SUBLAYER_MODULES = {
    "gpt2": ("transformer.h.{L}.attn", "transformer.h.{L}.mlp"),
    "llama": ("model.layers.{L}.self_attn", "model.layers.{L}.mlp"),
    "gemma2": ("model.layers.{L}.post_attention_layernorm", "model.layers.{L}.post_feedforward_layernorm"),
    "gemma3": ("model.layers.{L}.post_attention_layernorm", "model.layers.{L}.post_feedforward_layernorm"),
    "gpt_neox": ("gpt_neox.layers.{L}.attention", "gpt_neox.layers.{L}.mlp"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def first(value):
    return value[0] if isinstance(value, tuple) else value


def module_output(model, path: str, tokens: torch.Tensor) -> torch.Tensor:
    """What ``path`` returns in a plain forward pass (a torch forward hook)."""
    seen = []
    handle = model.get_submodule(path).register_forward_hook(lambda m, args, out: seen.append(first(out)))
    with torch.no_grad():
        model(tokens)
    handle.remove()
    return seen[0]


def logits_with_zeroed(model, path: str, port: str, tokens: torch.Tensor) -> torch.Tensor:
    """Logits with the module's input (``port='input'``) or output zeroed by plain torch hooks."""
    module = model.get_submodule(path)
    if port == "input":
        handle = module.register_forward_pre_hook(
            lambda m, args, kwargs: ((torch.zeros_like(args[0]), *args[1:]), kwargs), with_kwargs=True)
    else:
        def zero(m, args, out):
            return (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple) else torch.zeros_like(out)
        handle = module.register_forward_hook(zero)
    with torch.no_grad():
        logits = model(tokens).logits
    handle.remove()
    return logits


@pytest.mark.parametrize("kind", list(SUBLAYER_MODULES))
def test_transformer_lens_names_capture_and_splice_the_tensor_they_name(kind: str, tokenizer) -> None:
    model = tiny_model(kind).eval()
    hooked = HookedLanguageModel(LoadedModel(model, tokenizer, f"tiny-{kind}"))
    tokens = torch.randint(1, VOCAB, (2, 7))
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states  # [0] embeddings, [L] the output of block L-1
    block = f"{hooked.layers_path}.{{L}}"
    for layer in range(N_LAYERS):
        resid_pre = hooked.capture(tokens, f"blocks.{layer}.hook_resid_pre")
        assert torch.allclose(resid_pre, hidden[layer], atol=1e-6), f"resid_pre {layer} is the input of block {layer}"
        resid_post = hooked.capture(tokens, f"blocks.{layer}.hook_resid_post")
        assert torch.equal(resid_post, hooked.capture(tokens, block.format(L=layer)))
        if layer + 1 < N_LAYERS:  # the last hidden state has the final norm applied
            assert torch.allclose(resid_post, hidden[layer + 1], atol=1e-6)
        for name, path in zip(("attn_out", "mlp_out"), SUBLAYER_MODULES[kind]):
            expected = module_output(model, path.format(L=layer), tokens)
            assert torch.allclose(hooked.capture(tokens, f"blocks.{layer}.hook_{name}"), expected, atol=1e-6), name
    # splicing at a mapped name changes exactly that tensor: the same logits as zeroing it with torch hooks
    cases = {"blocks.1.hook_resid_pre": (block.format(L=1), "input"),
             "blocks.0.hook_resid_pre": (block.format(L=0), "input"),
             "blocks.1.hook_resid_post": (block.format(L=1), "output"),
             "blocks.1.hook_attn_out": (SUBLAYER_MODULES[kind][0].format(L=1), "output"),
             "blocks.1.hook_mlp_out": (SUBLAYER_MODULES[kind][1].format(L=1), "output")}
    clean = hooked.logits(tokens)
    for name, (path, port) in cases.items():
        spliced = hooked.logits(tokens, name, torch.zeros_like)
        assert torch.allclose(spliced, logits_with_zeroed(model, path, port, tokens), atol=1e-5), name
        assert not torch.allclose(spliced, clean, atol=1e-4), name
        assert torch.allclose(hooked.logits(tokens, name, lambda h: h), clean, atol=1e-5), name


def test_names_translate_both_ways_and_an_unknown_one_lists_both_forms(tokenizer) -> None:
    hooked = HookedLanguageModel(LoadedModel(tiny_model("gpt2").eval(), tokenizer, "tiny-gpt2"))
    assert hooked.transformer_lens_name("transformer.h.2") == "blocks.2.hook_resid_post"
    assert hooked.transformer_lens_name("transformer.h.1.mlp") == "blocks.1.hook_mlp_out"
    assert hooked.transformer_lens_name("transformer.h.1.ln_1") is None  # TransformerLens has no hook there
    assert hooked.site("blocks.2.hook_resid_pre").port == "input"
    for bad in ("blocks.3.hook_resid_pre", "blocks.0.hook_q", "model.layers.1"):
        with pytest.raises(HookPointError, match=r"transformer.h.N \(residual stream\).*blocks.N.hook_resid_pre"):
            hooked.site(bad)


def test_an_imported_sae_that_names_a_transformer_lens_hook_is_stitched_on_text_with_no_flag(tmp_path: Path,
                                                                                              capsys) -> None:
    """SAELens files name ``blocks.L.hook_resid_pre``: canon-pl stitch captures held-out text there (the output of
    block L-1 of the bundled model) and splices there for the next-token loss, with nothing but the two folders."""
    import json

    from safetensors.torch import save_file

    from canon_pl.cli import main
    from canon_pl.stitching import read_stitching_results

    for name, d_sae, seed in (("s", 64, 1), ("l", 128, 2)):
        torch.manual_seed(seed)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps({
            "architecture": "standard", "d_in": 576, "d_sae": d_sae, "dtype": "float32", "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "metadata": {"model_name": "smollm2-135m", "hook_name": "blocks.6.hook_resid_pre"}}))
        save_file({"W_enc": torch.randn(576, d_sae) / 24, "b_enc": torch.full((d_sae,), -0.5),
                   "W_dec": torch.nn.functional.normalize(torch.randn(d_sae, 576), dim=-1), "b_dec": torch.zeros(576)},
                  str(folder / "sae_weights.safetensors"))
    code = main(["stitch", str(tmp_path / "s"), str(tmp_path / "l"), "--data", "pydoc-topics", "--tokens", "200",
                 "--ce_points", "2", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    summary = read_stitching_results(tmp_path / "out" / "64_128.json")
    assert summary["n_tokens"] == 200 and summary["small"]["hook_point"] == "blocks.6.hook_resid_pre"
    assert summary["path_ce"]["ce_clean"] < summary["path_ce"]["ce_zero"]


def test_an_input_normalising_sae_is_spliced_with_each_positions_own_statistics(tokenizer) -> None:
    """A SAELens ``layer_norm`` SAE spliced into the model: the logits equal splicing the published formula by hand."""
    from canon_pl.sae import SAEConfig, build_sae

    model = tiny_model("gpt2").eval()
    hooked = HookedLanguageModel(LoadedModel(model, tokenizer, "tiny-gpt2"))
    torch.manual_seed(3)
    sae = build_sae(SAEConfig(d_in=32, d_sae=64, architecture="relu", input_norm="layer_norm")).eval()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.5)

    def formula(h: torch.Tensor) -> torch.Tensor:
        mu = h.mean(dim=-1, keepdim=True)
        std = (h - mu).std(dim=-1, keepdim=True)
        f = torch.relu(((h - mu) / (std + 1e-5) - sae.b_dec) @ sae.W_enc + sae.b_enc)
        return (f @ sae.W_dec + sae.b_dec) * std + mu

    tokens = torch.randint(1, VOCAB, (2, 7))
    block = model.get_submodule("transformer.h.1")
    handle = block.register_forward_pre_hook(lambda m, args, kwargs: ((formula(args[0]), *args[1:]), kwargs),
                                             with_kwargs=True)
    with torch.no_grad():
        expected = model(tokens).logits
    handle.remove()
    with torch.no_grad():
        spliced = hooked.logits(tokens, "blocks.1.hook_resid_pre", lambda h: sae(h.reshape(-1, 32)).view_as(h))
    assert torch.allclose(spliced, expected, atol=1e-5)
