"""Several hook points of one language model from one forward pass: :class:`MultiHookSource`.

Each hook point's activations are what a single-hook :class:`~canon_pl.lm.source.ActivationSource` captures there
(the same text, contexts and model); the forward pass stops after the last hook point it reaches. The token
selection is shared: a token is kept at every hook point or at none (BOS, and a token that is an outlier at any hook
point, is left out everywhere), so the families trained on the hook points see the same tokens in the same order and
the rows of the hook points' batches stay aligned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from canon_pl.errors import SettingError
from canon_pl.lm.hooked import HookedLanguageModel
from canon_pl.lm.source import ActivationSource, CaptureSettings
from canon_pl.lm.tokens import select_training_tokens


def check_hook_points(hook_points: list[str]) -> list[str]:
    """At least one hook point, none twice."""
    hook_points = [str(h) for h in hook_points]
    if not hook_points:
        raise SettingError("hook_points is empty: name at least one hook point (for example [model.layers.3, "
                           "model.layers.6, model.layers.9])")
    repeated = sorted({h for h in hook_points if hook_points.count(h) > 1})
    if repeated:
        raise SettingError(f"hook_points names {', '.join(repeated)} more than once; list each hook point once")
    return hook_points


@dataclass
class MultiHookBatch:
    """One LM forward read at several hook points: tokens ``[n, seq]``, the shared selection ``mask [n, seq]`` and
    ``kept_by_hook`` ``{hook point: [n_kept, d]}`` (row ``i`` is the same token at every hook point)."""

    tokens: Tensor
    mask: Tensor
    kept_by_hook: dict[str, Tensor]

    @property
    def kept(self) -> Tensor:
        """The hook points' kept activations side by side, in ``kept_by_hook``'s order: ``[n_kept, n_hooks * d]``."""
        return torch.cat(list(self.kept_by_hook.values()), dim=1)


class MultiHookSource(ActivationSource):
    """An :class:`ActivationSource` read at every one of ``hook_points`` from one forward pass.

    ``settings.hook_point`` is ignored in favour of ``hook_points``; :attr:`sources` holds one single-hook source
    per hook point (sharing the loaded LM), whose provenance each hook point's exports record.
    """

    def __init__(self, settings: CaptureSettings, hook_points: list[str], text_column: str = "text",
                 model_dtype: str = "float32", model_device_map: str | None = None,
                 hooked: HookedLanguageModel | None = None) -> None:
        self.hook_points = check_hook_points(hook_points)
        super().__init__(replace(settings, hook_point=self.hook_points[0]), text_column, model_dtype,
                         model_device_map, hooked)
        self.sources = {h: ActivationSource(replace(settings, hook_point=h), text_column, model_dtype,
                                            model_device_map) for h in self.hook_points}

    def load(self, device: torch.device | str = "cpu") -> HookedLanguageModel:
        """Load the LM once and check every hook point against it (an unknown one fails here, naming the valid)."""
        hooked = super().load(device)
        for hook_point, source in self.sources.items():
            hooked.site(hook_point)
            source.hooked = hooked
        return hooked

    def provenance_by_hook(self) -> dict[str, dict[str, Any]]:
        """``{hook point: what its exports record}`` (:data:`~canon_pl.lm.source.PROVENANCE_KEYS`)."""
        self.load()
        return {h: source.provenance() for h, source in self.sources.items()}

    def capture(self, tokens: Tensor) -> MultiHookBatch:  # type: ignore[override]
        """tokens ``[n, seq]`` -> each hook point's kept activations under one shared selection."""
        with self.autocast():
            acts = {h: a.float() for h, a in self.load().capture_many(tokens, self.hook_points).items()}
        s = self.settings
        mask = None
        for activations in acts.values():
            selected = select_training_tokens(activations, s.exclude_bos, s.outlier_factor).mask
            mask = selected if mask is None else mask & selected
        self.tokens_seen += mask.numel()
        self.tokens_excluded += mask.numel() - int(mask.sum())
        return MultiHookBatch(tokens, mask, {h: a[mask] for h, a in acts.items()})

    def spliced_sums_by_hook(self, tokens: Tensor, mask: Tensor,
                             reconstructions: dict[str, dict[str, Callable[[Tensor], Tensor]]],
                             ) -> dict[str, dict[str, dict[str, Tensor]]]:
        """``{hook point: {name: loss sums}}``: each hook point's reconstructions spliced in at that hook point."""
        return {h: self.sources[h].spliced_sums(tokens, mask, by_name) for h, by_name in reconstructions.items()}


__all__ = ["MultiHookBatch", "MultiHookSource", "check_hook_points"]
