"""The bundled model's converted copy: the first load writes it, later loads read it and compute the same thing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canon_pl.lm import load_causal_lm
from canon_pl.lm.converted import COMPLETE, copy_problem
from tests.helpers import mounted_tmpfs

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

    # Each load checks the copy against the checksums written with it: an edited config.json is caught ...
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace('"num_hidden_layers": 30', '"num_hidden_layers": 3'))
    assert "config.json does not match the checksum" in copy_problem(folder)
    (folder / "config.json").write_text(config)
    assert copy_problem(folder) is None
    # ... and flipped bits in the weights (which load without complaint and compute NaNs or other logits) set the
    # copy aside: the GGUF file is read again and the copy written whole again.
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x7F]))
    third = load_causal_lm("smollm2-135m")
    err = capsys.readouterr().err
    assert "model.safetensors does not match the checksum" in err and read_from[-1].endswith(".gguf"), err
    with torch.inference_mode():
        assert torch.equal(third.model(ids).logits, first.model(ids).logits)
    assert copy_problem(folder) is None and weights.stat().st_size > 1_000_000


def test_a_full_disk_while_writing_the_copy_loads_the_model_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=64m") as cache:  # the copy needs 517 MB
        monkeypatch.setenv("CANON_PL_CACHE", str(cache))
        loaded = load_causal_lm("smollm2-135m")
        err = capsys.readouterr().err
        assert "could not write the converted copy" in err and "uses the GGUF file" in err, err
        assert not list((cache / "models").iterdir())  # nothing half-written is left to be mistaken for a copy
        ids = loaded.tokenizer("def f(x):", return_tensors="pt").input_ids
        with torch.inference_mode():
            assert torch.isfinite(loaded.model(ids).logits).all()


def test_no_copy_is_kept_when_the_cache_is_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANON_PL_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from canon_pl.lm.converted import cache_root, converted_folder

    assert cache_root() is None and converted_folder("smollm2-135m", Path(__file__), "float32") is None
