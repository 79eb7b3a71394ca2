"""The bundled model's converted copy: the first load writes it, later loads read it and compute the same thing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canon_pl.lm import load_causal_lm
from canon_pl.lm.converted import COMPLETE

pytest.importorskip("gguf")


def test_the_first_load_keeps_a_converted_copy_that_later_loads_read_with_the_same_logits_and_tokens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("CANON_PL_CACHE", str(tmp_path))
    read_from: list[str] = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, source, *args, **kwargs):
        read_from.append(f"{source}/{kwargs.get('gguf_file', '')}")
        return real(cls, source, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    first = load_causal_lm("smollm2-135m")
    (folder,) = (tmp_path / "models").iterdir()
    assert (folder / COMPLETE).is_file() and read_from[-1].endswith(".gguf")
    second = load_causal_lm("smollm2-135m")
    assert read_from[-1] == f"{folder}/"  # the copy, not the GGUF file
    text = Path(__file__).read_text()[:4000]
    ids = first.tokenizer(text, return_tensors="pt").input_ids[:, :256]
    assert torch.equal(second.tokenizer(text, return_tensors="pt").input_ids[:, :256], ids)
    with torch.inference_mode():
        assert torch.equal(second.model(ids).logits, first.model(ids).logits)
    assert second.model_id == "smollm2-135m" and second.tokenizer.bos_token_id == first.tokenizer.bos_token_id

    # A copy that cannot be read is set aside: the GGUF file is read again and the copy written whole again.
    (folder / "model.safetensors").write_bytes(b"truncated")
    third = load_causal_lm("smollm2-135m")
    assert "could not be read" in capsys.readouterr().err and read_from[-1].endswith(".gguf")
    with torch.inference_mode():
        assert torch.equal(third.model(ids).logits, first.model(ids).logits)
    assert (folder / COMPLETE).is_file() and (folder / "model.safetensors").stat().st_size > 1_000_000


def test_no_copy_is_kept_when_the_cache_is_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANON_PL_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from canon_pl.lm.converted import cache_root, converted_folder

    assert cache_root() is None and converted_folder("smollm2-135m", Path(__file__), "float32") is None
