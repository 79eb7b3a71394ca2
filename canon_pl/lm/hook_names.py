"""Where a hook point lies in a Hugging Face model: canon-pl's own names (module paths) and the names the SAE
libraries record (TransformerLens / SAELens ``blocks.L.hook_resid_pre``, ...), both resolved to one
:class:`HookSite`: a module of the model and whether its *input* or its *output* is the activation. No nnsight here.

TransformerLens names, for block ``L`` of the model's block list (``<layers>``: ``model.layers``, ``transformer.h``,
``gpt_neox.layers``):

- ``blocks.L.hook_resid_pre``: the input of block L (the output of block L-1; for L = 0 the embeddings as block 0
  receives them, positional embeddings and Gemma's embedding scale included),
- ``blocks.L.hook_resid_post``: the output of block L (before the final norm for the last block),
- ``blocks.L.hook_attn_out`` / ``hook_mlp_out``: the attention / MLP sub-layer's output as it is added to the
  residual stream: the attention (``self_attn``, ``attn``, ``attention``) and ``mlp`` modules, except in blocks that
  normalise a sub-layer's output before adding it (Gemma 2 and 3: ``post_attention_layernorm`` and
  ``post_feedforward_layernorm``), where it is that norm's output, as TransformerLens hooks it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

TRANSFORMER_LENS_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")
ATTENTION_CHILDREN = ("self_attn", "attn", "attention")
POST_NORMS = {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}
"""Gemma 2 / 3 blocks normalise each sub-layer's output before adding it (a block with ``post_feedforward_layernorm``);
in other models ``post_attention_layernorm`` is the norm *before* the MLP, so it is used only in such blocks."""


@dataclass(frozen=True)
class HookSite:
    """A hook point in the model: ``module`` (dotted path), ``port`` (its ``input`` or ``output``; a tuple output is
    read at its first element) and the block ``layer`` it belongs to (capture stops after it)."""

    module: str
    port: Literal["input", "output"]
    layer: int


def is_transformer_lens_name(hook_point: str) -> bool:
    return TRANSFORMER_LENS_HOOK.match(hook_point) is not None


def sublayer_child(kind: str, children: Sequence[str]) -> str | None:
    """The block child whose output is ``kind`` (``attn_out`` or ``mlp_out``) as TransformerLens hooks it."""
    if POST_NORMS["mlp_out"] in children:
        return POST_NORMS[kind]
    if kind == "mlp_out":
        return "mlp" if "mlp" in children else None
    return next((c for c in ATTENTION_CHILDREN if c in children), None)


def transformer_lens_site(hook_point: str, layers_path: str, n_layers: int, children: Sequence[str]) -> HookSite | None:
    """The site of a TransformerLens name in a model whose blocks are ``layers_path.0 ... n_layers-1`` with the
    block children ``children``; ``None`` when the name is not one this model has."""
    match = TRANSFORMER_LENS_HOOK.match(hook_point)
    if match is None or int(match.group(1)) >= n_layers:
        return None
    layer, kind = int(match.group(1)), match.group(2)
    block = f"{layers_path}.{layer}"
    if kind == "resid_pre":
        return HookSite(block, "input", layer)
    if kind == "resid_post":
        return HookSite(block, "output", layer)
    child = sublayer_child(kind, children)
    return HookSite(f"{block}.{child}", "output", layer) if child else None


def transformer_lens_name(site: HookSite, layers_path: str, children: Sequence[str]) -> str | None:
    """The TransformerLens name of ``site`` (a block's output is ``hook_resid_post``; its sub-layer outputs
    ``hook_attn_out`` / ``hook_mlp_out``), or ``None`` when TransformerLens has no hook there."""
    block = f"{layers_path}.{site.layer}"
    if site.module == block:
        return f"blocks.{site.layer}.hook_{'resid_pre' if site.port == 'input' else 'resid_post'}"
    if site.port != "output":
        return None
    for kind in ("attn_out", "mlp_out"):
        if site.module == f"{block}.{sublayer_child(kind, children)}":
            return f"blocks.{site.layer}.hook_{kind}"
    return None


__all__ = ["HookSite", "is_transformer_lens_name", "sublayer_child", "transformer_lens_name",
           "transformer_lens_site"]
