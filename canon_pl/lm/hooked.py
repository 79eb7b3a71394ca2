"""The one place that talks to nnsight: capture activations at a named hook point, and splice replacements in.

Hook points are names of modules inside the model: ``<layers>.N`` (residual stream after block N) and
``<layers>.N.<child>`` (a block's sub-module output, e.g. its MLP or attention), where ``<layers>`` is the model's
list of blocks: ``model.layers`` for Llama-style models such as SmolLM2 and Gemma (children ``mlp``, ``self_attn``),
``transformer.h`` for GPT-2 (children ``mlp``, ``attn``), ``gpt_neox.layers`` for Pythia. Capture stops the forward
pass right after the hook so later layers never run. Outputs that are tuples (attention's ``(output, weights)``)
are read and replaced at their first element.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from canon_pl.errors import CanonError
from canon_pl.lm.loading import LoadedModel


class HookPointError(CanonError, ValueError):
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

    @property
    def layers_path(self) -> str:
        """Dotted name of the model's list of blocks (``model.layers``, ``transformer.h``, ...)."""
        for name, module in self.model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == self.loaded.n_layers:
                return name
        raise HookPointError(f"could not find the list of {self.loaded.n_layers} blocks in {type(self.model).__name__}")

    def _children(self) -> list[str]:
        block = self.model.get_submodule(f"{self.layers_path}.0")
        return [name for name, _ in block.named_children()]

    def hook_points(self) -> list[str]:
        """Every valid hook point name."""
        root, children = self.layers_path, self._children()
        return [f"{root}.{layer}{suffix}" for layer in range(self.loaded.n_layers)
                for suffix in ["", *(f".{c}" for c in children)]]

    def parse_hook_point(self, hook_point: str) -> tuple[int, str | None]:
        """``(layer, child)`` for a valid name; :class:`HookPointError` listing the valid names otherwise."""
        root, n = self.layers_path, self.loaded.n_layers
        match = re.match(rf"^{re.escape(root)}\.(\d+)(?:\.(\w+))?$", hook_point)
        if not match or int(match.group(1)) >= n or (match.group(2) and match.group(2) not in self._children()):
            children = ", ".join(f"{root}.N.{c}" for c in self._children())
            raise HookPointError(
                f"hook point {hook_point!r} not found; the model has layers 0-{n - 1}: use {root}.N "
                f"(residual stream) or one of {children}"
            )
        return int(match.group(1)), match.group(2)

    def _envoy(self, hook_point: str):
        layer, child = self.parse_hook_point(hook_point)
        envoy = self._nn
        for part in self.layers_path.split("."):
            envoy = getattr(envoy, part)
        envoy = envoy[layer]
        return getattr(envoy, child) if child else envoy

    @torch.inference_mode()
    def capture(self, tokens: Tensor, hook_point: str) -> Tensor:
        """Activations at ``hook_point``. tokens: ``[batch, seq]`` -> ``[batch, seq, d_model]`` (stops after it)."""
        envoy = self._envoy(hook_point)
        with self._nn.trace(tokens.to(self.device)) as tracer:
            saved = envoy.output.save()
            tracer.stop()
        return saved[0] if isinstance(saved, tuple) else saved

    @torch.inference_mode()
    def logits(self, tokens: Tensor, hook_point: str | None = None,
               replace: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Next-token logits ``[batch, seq, vocab]``; with ``replace``, the hook output ``[batch, seq, d]`` is
        swapped for ``replace(output)`` inside the forward pass."""
        tokens = tokens.to(self.device)
        if replace is None:
            return self.model(tokens).logits
        envoy = self._envoy(hook_point)
        with self._nn.trace(tokens):
            out = envoy.output
            if isinstance(out, tuple):
                envoy.output = (replace(out[0]), *out[1:])
            else:
                envoy.output = replace(out)
            logits = self._nn.output.logits.save()
        return logits
