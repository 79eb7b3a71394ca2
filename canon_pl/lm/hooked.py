"""The one place that talks to nnsight: capture activations at a named hook point, and splice replacements in.

Hook points are names of modules inside the model: ``model.layers.N`` (residual stream after block N),
``model.layers.N.mlp`` (MLP output) and ``model.layers.N.self_attn`` (attention output). Capture stops the forward
pass right after the hook so later layers never run. In transformers 5 a decoder layer returns a tensor, not a
tuple (``.output[0]`` would be the first *sequence*); attention still returns ``(output, weights)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor

from canon_pl.lm.loading import LoadedModel

_HOOK_RE = re.compile(r"^model\.layers\.(\d+)(?:\.(mlp|self_attn))?$")


class HookPointError(ValueError):
    """A hook point name the model does not have."""


class HookedLanguageModel:
    """A causal LM wrapped with nnsight, with capture and splicing at named hook points."""

    def __init__(self, loaded: LoadedModel) -> None:
        from nnsight.modeling.transformers import TransformersModel

        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self._nn = TransformersModel(loaded.model, tokenizer=loaded.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def hook_points(self) -> list[str]:
        """Every valid hook point name."""
        names = []
        for layer in range(self.loaded.n_layers):
            names += [f"model.layers.{layer}", f"model.layers.{layer}.mlp", f"model.layers.{layer}.self_attn"]
        return names

    def parse_hook_point(self, hook_point: str) -> tuple[int, str | None]:
        """``(layer, submodule)`` for a valid name; :class:`HookPointError` listing the valid names otherwise."""
        match = _HOOK_RE.match(hook_point)
        n = self.loaded.n_layers
        if not match or int(match.group(1)) >= n:
            raise HookPointError(
                f"hook point {hook_point!r} not found; the model has layers 0-{n - 1}: use model.layers.N "
                f"(residual stream), model.layers.N.mlp or model.layers.N.self_attn"
            )
        return int(match.group(1)), match.group(2)

    def _envoy(self, hook_point: str):
        layer, sub = self.parse_hook_point(hook_point)
        envoy = self._nn.model.layers[layer]
        return getattr(envoy, sub) if sub else envoy, sub == "self_attn"

    @torch.inference_mode()
    def capture(self, tokens: Tensor, hook_point: str) -> Tensor:
        """Activations at ``hook_point``. tokens: ``[batch, seq]`` -> ``[batch, seq, d_model]`` (stops after it)."""
        envoy, is_tuple = self._envoy(hook_point)
        with self._nn.trace(tokens.to(self.device)) as tracer:
            saved = envoy.output.save()
            tracer.stop()
        return saved[0] if is_tuple else saved

    @torch.inference_mode()
    def logits(self, tokens: Tensor, hook_point: str | None = None,
               replace: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Next-token logits ``[batch, seq, vocab]``; with ``replace``, the hook output ``[batch, seq, d]`` is
        swapped for ``replace(output)`` inside the forward pass."""
        tokens = tokens.to(self.device)
        if replace is None:
            return self.model(tokens).logits
        envoy, is_tuple = self._envoy(hook_point)
        with self._nn.trace(tokens):
            out = envoy.output
            if is_tuple:
                envoy.output = (replace(out[0]), *out[1:])
            else:
                envoy.output = replace(out)
            logits = self._nn.output.logits.save()
        return logits
