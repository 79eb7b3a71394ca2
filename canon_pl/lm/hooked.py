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


class _ProbeDone(Exception):
    """Raised by the execution-order probe once it has seen every hook point."""


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

    def execution_order(self, hook_points: list[str]) -> list[str]:
        """``hook_points`` in the order one forward pass reaches them (nnsight reads a trace's values in that order).
        Found once per set by a two-token probe forward with plain torch hooks: a block's children are not always
        declared in the order they run (Gemma 2 declares its norms after its MLP)."""
        key = tuple(hook_points)
        cache = self.__dict__.setdefault("_execution_orders", {})
        if key not in cache:
            reached: list[str] = []
            handles = []
            wanted = list(dict.fromkeys(hook_points))
            for hook_point in wanted:
                site = self.site(hook_point)
                module = self.model.get_submodule(site.module)

                def record(*_: object, name: str = hook_point) -> None:
                    if name not in reached:
                        reached.append(name)
                    if len(reached) == len(wanted):
                        raise _ProbeDone  # the rest of the model need not run

                handles.append(module.register_forward_pre_hook(record) if site.port == "input"
                               else module.register_forward_hook(record))
            try:
                with torch.inference_mode():
                    self.model(torch.zeros(1, 2, dtype=torch.long, device=self.device))
            except _ProbeDone:
                pass
            finally:
                for handle in handles:
                    handle.remove()
            cache[key] = reached
        return list(cache[key])

    @torch.inference_mode()
    def capture_many(self, tokens: Tensor, hook_points: list[str]) -> dict[str, Tensor]:
        """Activations at every hook point from one forward pass that stops after the last of them.

        tokens: ``[batch, seq]`` -> ``{hook point: [batch, seq, d_model]}``, equal to :meth:`capture` at each.
        """
        order = self.execution_order(hook_points)
        saved = {}
        with self._nn.trace(tokens.to(self.device)) as tracer:
            for hook_point in order:
                envoy, port = self._envoy(hook_point)
                saved[hook_point] = (envoy.input if port == "input" else envoy.output).save()
            tracer.stop()
        return {h: saved[h][0] if isinstance(saved[h], tuple) else saved[h] for h in hook_points}

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
