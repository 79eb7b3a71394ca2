"""The one place that talks to nnsight: capture activations at a named hook point, and splice replacements in.

Hook points are names of modules inside the model: ``<layers>.N`` (residual stream after block N) and
``<layers>.N.<child>`` (a block's sub-module output, e.g. its MLP or attention), where ``<layers>`` is the model's
list of blocks: ``model.layers`` for Llama-style models such as SmolLM2 and Gemma (children ``mlp``, ``self_attn``),
``transformer.h`` for GPT-2 (children ``mlp``, ``attn``), ``gpt_neox.layers`` for Pythia. The names SAELens and
TransformerLens record (``blocks.8.hook_resid_pre``, ``hook_resid_post``, ``hook_attn_out``, ``hook_mlp_out``) are
hook points too, mapped to a module's input or output by :mod:`canon_pl.lm.hook_names`. Capture stops the forward
pass right after the hook so later layers never run. Outputs that are tuples (attention's ``(output, weights)``)
are read and replaced at their first element.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from canon_pl.errors import CanonError
from canon_pl.lm.hook_names import HookSite, is_transformer_lens_name, transformer_lens_name, transformer_lens_site
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

    def site(self, hook_point: str) -> HookSite:
        """Where ``hook_point`` (a module path or a TransformerLens name) lies: :class:`HookPointError` listing the
        valid names when the model has no such place."""
        root, n, children = self.layers_path, self.loaded.n_layers, self._children()
        if is_transformer_lens_name(hook_point):
            site = transformer_lens_site(hook_point, root, n, children)
        else:
            match = re.match(rf"^{re.escape(root)}\.(\d+)(?:\.(\w+))?$", hook_point)
            valid = match and int(match.group(1)) < n and (not match.group(2) or match.group(2) in children)
            site = HookSite(hook_point, "output", int(match.group(1))) if valid else None
        if site is None:
            listed = ", ".join(f"{root}.N.{c}" for c in children)
            raise HookPointError(
                f"hook point {hook_point!r} not found; the model has layers 0-{n - 1}: use {root}.N "
                f"(residual stream) or one of {listed}, or a TransformerLens name blocks.N.hook_resid_pre / "
                f"hook_resid_post / hook_attn_out / hook_mlp_out"
            )
        return site

    def parse_hook_point(self, hook_point: str) -> tuple[int, str | None]:
        """``(layer, module path below the block or None)`` for a valid name; :class:`HookPointError` otherwise."""
        site = self.site(hook_point)
        below = site.module[len(f"{self.layers_path}.{site.layer}"):].lstrip(".")
        return site.layer, below or None

    def transformer_lens_name(self, hook_point: str) -> str | None:
        """The TransformerLens name of ``hook_point`` (``model.layers.6`` -> ``blocks.6.hook_resid_post``), or
        ``None`` where TransformerLens has no hook."""
        if is_transformer_lens_name(hook_point):
            return hook_point
        return transformer_lens_name(self.site(hook_point), self.layers_path, self._children())

    def _envoy(self, hook_point: str):
        """(the nnsight envoy of the hook point's module, its port)."""
        site = self.site(hook_point)
        envoy = self._nn
        for part in site.module.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy, site.port

    @torch.inference_mode()
    def capture(self, tokens: Tensor, hook_point: str) -> Tensor:
        """Activations at ``hook_point``. tokens: ``[batch, seq]`` -> ``[batch, seq, d_model]`` (stops after it)."""
        envoy, port = self._envoy(hook_point)
        with self._nn.trace(tokens.to(self.device)) as tracer:
            saved = (envoy.input if port == "input" else envoy.output).save()
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
        envoy, port = self._envoy(hook_point)
        with self._nn.trace(tokens):
            if port == "input":
                envoy.input = replace(envoy.input)
            else:
                out = envoy.output
                if isinstance(out, tuple):
                    envoy.output = (replace(out[0]), *out[1:])
                else:
                    envoy.output = replace(out)
            logits = self._nn.output.logits.save()
        return logits
