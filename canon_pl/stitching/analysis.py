"""One stitching analysis of a pair of SAEs, and its results file (documented in docs/stitching_results.md).

``analyze_pair`` runs the matching, the groups, the definitional check and the path on the same tokens;
``write_stitching_results`` stores the summary as JSON (``<name>.json``) and the per-latent and per-step arrays as
safetensors (``<name>.safetensors``), both written atomically.
"""

from __future__ import annotations

import copy

import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from canon_pl.io.document import DocumentKind
from canon_pl.io.layout import RunLayout
from canon_pl.io.results import read_results, write_results
from canon_pl.sae import SparseAutoencoder
from canon_pl.stitching.classify import LatentClasses, classify_latents, definition_chunk_spread
from canon_pl.stitching.consistency import consistency_summary
from canon_pl.stitching.granularity import GRANULARITY_TOKENS, granularity_curve
from canon_pl.stitching.groups import LatentGroups, latent_groups
from canon_pl.metrics.matching import (
    DEFAULT_TAU,
    LatentMatch,
    StitchingError,
    check_tau,
    match_latents,
)
from canon_pl.stitching.path import (
    STEP_KINDS,
    StitchingPath,
    reconstruction,
    sparse_codes,
    stitching_path,
)
from canon_pl.stitching.stitched import StitchedSAE, check_stitchable
from canon_pl.metrics.spliced import Reconstruction, SplicedLoss, spliced_loss_on  # noqa: F401 - read here too

FORMAT_NAME = "canon_pl.stitching"
FORMAT_VERSION = 2
"""2: per-latent classification by the definition, the moved/stuck split, the cross-seed control, path excess."""
STITCHING_RESULTS = DocumentKind(FORMAT_NAME, FORMAT_VERSION, "stitching results file", StitchingError,
                                 rebuild="rebuild it with `canon-pl stitch <its family> --data <activations>`")
"""A stitching results JSON (docs/stitching_results.md)."""
SUMMARY_POINTS = 256
"""Path points kept in the JSON summary (the safetensors file holds all of them)."""

def describe_sae(sae: SparseAutoencoder, source: str | None = None) -> dict[str, Any]:
    return {"d_sae": sae.d_sae, "d_in": sae.d_in, "architecture": sae.cfg.architecture,
            "k": getattr(sae.cfg.settings, "k", None),
            "hook_point": sae.cfg.hook_point, "model_id": sae.cfg.model_id, "input_norm": sae.cfg.input_norm,
            "source": source}


def in_encoder_space(saes: list[SparseAutoencoder | None], x: Tensor) -> tuple[list[SparseAutoencoder | None], Tensor]:
    """SAEs that normalise each input (``cfg.input_norm``; imported ``layer_norm`` or ``center`` SAEs) are stitched in
    the space they encode and reconstruct: ``x [N, d_in]`` normalised once, and copies of the SAEs that take it as
    it is. Decoder cosines do not depend on the space; the path's MSE is then the SAEs' own objective. SAEs that
    normalise differently cannot share one stitched SAE: an error. Plain SAEs are returned as they are."""
    modes = {sae.cfg.input_norm for sae in saes if sae is not None}
    if modes == {"none"}:
        return saes, x
    if len(modes) > 1:
        raise StitchingError(f"the SAEs normalise their inputs differently ({sorted(modes)}): a stitched SAE reads one "
                             f"input, so stitch SAEs with the same input_norm")
    first = next(sae for sae in saes if sae is not None)
    x = first.normalize_input(x).x

    def plain(sae: SparseAutoencoder) -> SparseAutoencoder:
        copied = copy.deepcopy(sae)
        copied.cfg = replace(sae.cfg, input_norm="none")
        return copied

    return [None if sae is None else plain(sae) for sae in saes], x


def check_pair(small: SparseAutoencoder, large: SparseAutoencoder, small_name: str = "small",
               large_name: str = "large") -> tuple[SparseAutoencoder, SparseAutoencoder, bool]:
    """Validate a pair; returns (small, large, swapped). A "small" SAE wider than the "large" one is swapped with a
    warning; different ``d_in`` is an error; different hook points (both recorded) a warning."""
    if small.d_in != large.d_in:
        raise StitchingError(
            f"{small_name} has d_in={small.d_in} but {large_name} has d_in={large.d_in}: stitching needs two SAEs "
            f"trained on the same activations (same model and hook point)"
        )
    hooks = small.cfg.hook_point, large.cfg.hook_point
    if all(hooks) and hooks[0] != hooks[1]:
        warnings.warn(f"the SAEs were trained on different hook points ({hooks[0]!r} vs {hooks[1]!r}); stitching them "
                      f"assumes they read the same activations", stacklevel=2)
    for sae in (small, large):
        check_stitchable(sae)  # TopK or untrained SAEs fail here, before any long work
    if small.d_sae > large.d_sae:
        warnings.warn(f"the 'small' SAE ({small.d_sae} latents) is larger than the 'large' one ({large.d_sae}); "
                      f"swapping them", stacklevel=2)
        return large, small, True
    return small, large, False


@dataclass
class StitchingResult:
    """Everything one analysis found. Per-latent arrays: ``[d_large]`` / ``[d_small]``; path arrays ``[T+2]``."""

    summary: dict[str, Any]
    match: LatentMatch
    groups: LatentGroups
    path: StitchingPath
    large_delta_mse: Tensor
    large_fire_count: Tensor
    ce_points: dict[str, Any] = field(default_factory=dict)
    classes: LatentClasses | None = None
    control: LatentClasses | None = None
    control_path: StitchingPath | None = None
    """The same path between two seeds of L's width (L to L's other seed): the pair's path control."""

    def stitched_at(self, point: int, small: SparseAutoencoder, large: SparseAutoencoder) -> StitchedSAE:
        """The stitched SAE at one point of the path."""
        keep_small, keep_large, bias = self.path.masks_at(point, self.groups)
        return StitchedSAE.from_pair(small, large, keep_small, keep_large, bias)


def proxy_agreement(is_novel: Tensor, delta_mse: Tensor, fires: Tensor) -> dict[str, Any]:
    """How well "max cosine < tau" predicts "lowers MSE when added alone to S", over L-latents that fire."""
    novel, lowers = is_novel[fires], delta_mse[fires] < 0
    n = int(fires.sum())

    def rate(mask: Tensor) -> float | None:
        return float(mask.float().mean()) if mask.numel() else None

    return {
        "agreement": rate(novel == lowers),
        "novel_lowers_mse": rate(lowers[novel]),
        "reconstruction_raises_mse": rate(~lowers[~novel]),
        "n_evaluated": n,
        "n_silent": int((~fires).sum()),
    }


def _downsample(points: int, keep: int) -> Tensor:
    if points <= keep:
        return torch.arange(points)
    return torch.unique(torch.linspace(0, points - 1, keep).round().long())


@dataclass(frozen=True)
class PairOptions:
    """How one pair is analysed (:func:`analyze_pair`'s keyword settings, in one place).

    tau: the decoder-cosine threshold of matching and groups. spread_chunks: chunks of the tokens for the novel
    fraction's spread. granularity: also the path at every granularity of grouping, on the first
    ``granularity_tokens`` tokens. control_extras: with a control, also its path, replicate and spread (about half
    the cost). ce_points: points along the path where ``spliced_loss`` measures the next-token loss. data: the source
    the activations came from (recorded). progress: progress bars."""

    tau: float = DEFAULT_TAU
    spread_chunks: int = 8
    granularity: bool = False
    granularity_tokens: int = GRANULARITY_TOKENS
    control_extras: bool = True
    ce_points: int = 0
    data: str | None = None
    progress: bool = False


@torch.no_grad()
def analyze_pair(small: SparseAutoencoder, large: SparseAutoencoder, activations: Tensor, tau: float = DEFAULT_TAU,
                 spliced_loss: SplicedLoss | None = None, ce_points: int = 0, progress: bool = False,
                 names: tuple[str | None, str | None] = (None, None),
                 large_initial_decoder: Tensor | None = None, control: SparseAutoencoder | None = None,
                 control_name: str | None = None, small_initial_decoder: Tensor | None = None,
                 data: str | None = None, granularity: bool = False, spread_chunks: int = 8,
                 granularity_tokens: int = GRANULARITY_TOKENS, control_extras: bool = True) -> StitchingResult:
    """Match, group, check and walk from ``small`` to ``large`` on raw held-out ``activations [N, d_in]``.

    ``spliced_loss`` with ``ce_points > 0`` also measures the next-token loss at that many points along the path
    (endpoints included). ``large_initial_decoder [d_large, d_in]`` splits latents into moved and stuck at their
    initialisation (``small_initial_decoder`` is used instead when the pair is given the wrong way round and
    swapped); ``control`` (an SAE of L's width from another init seed) adds the cross-seed control: the same
    classification of L's latents against it. ``data`` (the source ``activations`` came from, e.g. a cache folder
    or a text source) is recorded with ``tau`` and the token count: the :data:`SETTINGS` that
    :func:`settings_mismatch` compares across the results of one run. ``control_extras=False`` leaves out the
    control's path, replicate and per-chunk spread (about half the analysis's cost; a monitor during training needs
    only the control's novel fractions and consistency). The steps: :func:`_checked_pair`, then matching and
    classification, :func:`_control_analysis`, the path, :func:`_path_ce` and :func:`_summary`.
    """
    options = PairOptions(tau=check_tau(tau), spread_chunks=spread_chunks, granularity=granularity,
                          granularity_tokens=granularity_tokens, control_extras=control_extras, ce_points=ce_points,
                          data=data, progress=progress)
    small, large, swapped, names, large_initial_decoder = _checked_pair(
        small, large, activations, names, large_initial_decoder, small_initial_decoder)
    raw_small, raw_large = small, large  # as given: described in the summary, their normalisation used to splice
    x = activations.to(small.W_dec.device).float()
    (small, large, control), x = in_encoder_space([small, large, control], x)
    match = match_latents(small.W_dec, large.W_dec, options.tau, progress=progress)
    groups = latent_groups(match)
    small_codes, large_codes = sparse_codes(small, x), sparse_codes(large, x)
    residual_small = x - reconstruction(small, x)
    classes = classify_latents(small, large, x, options.tau, large_initial_decoder, large_codes, residual_small)
    control_classes, control_extra, control_path = _control_analysis(
        small, large, control, x, large_codes, residual_small, large_initial_decoder, options)
    path = stitching_path(small, large, x, groups, small_codes, large_codes, progress=progress,
                          residual_small=residual_small)
    extra: dict[str, Any] = {
        "spread": definition_chunk_spread(classes, spread_chunks),
        "consistency": consistency_summary(small.W_dec, large.W_dec),  # how much of S the wider L keeps
        **({"granularity": granularity_curve(small, large, x[:granularity_tokens])} if granularity else {})}
    ce = _path_ce(spliced_loss, options.ce_points, path, groups, raw_small, small, large)
    control_summary = None if control_classes is None else {"name": control_name, **control_classes.summary(),
                                                           **control_extra}
    summary = _summary(raw_small, raw_large, names, swapped, int(x.shape[0]), options, match, groups, classes, path,
                       control_summary, extra, ce)
    return StitchingResult(summary, match, groups, path, classes.delta_mse, classes.fire_count, ce, classes,
                           control_classes, control_path)


def _checked_pair(small: SparseAutoencoder, large: SparseAutoencoder, activations: Tensor,
                  names: tuple[str | None, str | None], large_initial_decoder: Tensor | None,
                  small_initial_decoder: Tensor | None) -> tuple[SparseAutoencoder, SparseAutoencoder, bool,
                                                                 tuple[str | None, str | None], Tensor | None]:
    """The pair in order (swapped, with its names and initial decoder, when given the wrong way round) and its
    ``activations [N, d_in]`` checked: the right width, some tokens, all finite."""
    small, large, swapped = check_pair(small, large, names[0] or "small", names[1] or "large")
    if swapped:
        names, large_initial_decoder = (names[1], names[0]), small_initial_decoder
    if activations.dim() != 2 or activations.shape[1] != small.d_in:
        raise StitchingError(f"activations must be [tokens, {small.d_in}], got {tuple(activations.shape)}")
    if activations.shape[0] == 0:
        raise StitchingError("no activations to stitch on: the data source gave 0 tokens")
    if not torch.isfinite(activations).all():
        raise StitchingError("the activations contain NaN or Inf: check the data source")
    return small, large, swapped, names, large_initial_decoder


def _control_analysis(small: SparseAutoencoder, large: SparseAutoencoder, control: SparseAutoencoder | None,
                      x: Tensor, large_codes: Any, residual_small: Tensor, large_initial_decoder: Tensor | None,
                      options: PairOptions) -> tuple[LatentClasses | None, dict[str, Any], StitchingPath | None]:
    """The cross-seed control of L (``control``, L's width from another init seed; ``x [N, d_in]``): L's latents
    classified against it, the matched consistency of the two seeds, and with ``options.control_extras`` the same
    path between the two seeds, the replicate (the other seed in L's place, against S and against L) and the spread;
    ``(None, {}, None)`` without a control."""
    if control is None:
        return None, {}, None
    if control.d_sae != large.d_sae or control.d_in != large.d_in:
        raise StitchingError(f"the cross-seed control must have L's shape ({large.d_sae} x {large.d_in}), got "
                             f"{control.d_sae} x {control.d_in}")
    tau = options.tau
    residual_control = x - reconstruction(control, x)
    classes = classify_latents(control, large, x, tau, large_initial_decoder, large_codes, residual_control)
    extra: dict[str, Any] = {}
    control_path = None
    if options.control_extras:
        # the same path between two seeds of L's width: how far a path rises when only the seed differs
        control_codes = sparse_codes(control, x)
        residual_large = x - reconstruction(large, x)
        control_path = stitching_path(large, control, x, latent_groups(match_latents(large.W_dec, control.W_dec, tau)),
                                      large_codes, control_codes, residual_small=residual_large)
        # the replicate: the other seed's SAE of L's width in L's place, against S and against L (its own control)
        replicate = classify_latents(small, control, x, tau, large_codes=control_codes, residual_small=residual_small)
        replicate_control = classify_latents(large, control, x, tau, large_codes=control_codes,
                                             residual_small=residual_large)
        extra = {"spread": definition_chunk_spread(classes, options.spread_chunks),
                 "path_excess": control_path.excess_over_endpoints(),
                 "path_monotone_fraction": control_path.monotone_fraction(),
                 "replicate": {
                     "novel_fraction_definition": replicate.summary()["novel_fraction_definition"],
                     "control_novel_fraction_definition": replicate_control.summary()["novel_fraction_definition"]}}
        if options.granularity:
            extra["granularity"] = granularity_curve(large, control, x[:options.granularity_tokens])
    # matched consistency (Hungarian on decoder cosine) between the two seeds of L's width
    extra["consistency"] = consistency_summary(large.W_dec, control.W_dec)
    return classes, extra, control_path


def _path_ce(spliced_loss: SplicedLoss | None, ce_points: int, path: StitchingPath, groups: LatentGroups,
             raw_small: SparseAutoencoder, small: SparseAutoencoder, large: SparseAutoencoder) -> dict[str, Any]:
    """The next-token loss at ``ce_points`` points along the path (endpoints included), each stitched SAE spliced
    into the model by ``spliced_loss`` on the raw stream (``raw_small``'s normalisation, restored after); ``{}``
    without them."""
    if spliced_loss is None or ce_points <= 0:
        return {}
    points = _downsample(path.n_points, max(ce_points, 2)).tolist()

    def stitched_at(point: int) -> Reconstruction:  # built when called: one stitched SAE in memory at a time
        def reconstruct(h: Tensor) -> Tensor:
            normalized = raw_small.normalize_input(h.float())  # the raw stream's statistics, restored after
            return normalized.restore(StitchedSAE.from_pair(small, large, *path.masks_at(point, groups))(
                normalized.x))
        return reconstruct

    losses = spliced_loss({str(p): stitched_at(p) for p in points})
    first = losses[str(points[0])]
    return {"point": points, "n_latents": path.n_latents[points].tolist(),
            "ce_loss": [losses[str(p)]["ce_sae"] for p in points],
            "ce_recovered": [losses[str(p)]["ce_recovered"] for p in points],
            "ce_clean": first["ce_clean"], "ce_zero": first["ce_zero"]}


def _summary(raw_small: SparseAutoencoder, raw_large: SparseAutoencoder, names: tuple[str | None, str | None],
             swapped: bool, n_tokens: int, options: PairOptions, match: LatentMatch, groups: LatentGroups,
             classes: LatentClasses, path: StitchingPath, control: dict[str, Any] | None, extra: dict[str, Any],
             ce: dict[str, Any]) -> dict[str, Any]:
    """The results document's summary (docs/stitching_results.md): the pair, its settings, the classes by cosine
    and by the definition, the control, the groups, the path's endpoints and shape, ``SUMMARY_POINTS`` of its
    points, and the spliced loss along it."""
    is_novel, fires = match.is_novel, classes.fire_count > 0
    keep = _downsample(path.n_points, SUMMARY_POINTS)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "small": describe_sae(raw_small, names[0]),
        "large": describe_sae(raw_large, names[1]),
        "swapped": swapped,
        "tau": options.tau,
        "n_tokens": n_tokens,
        "data": options.data,
        "novel_fraction": float(is_novel.float().mean()),
        "n_novel": int(is_novel.sum()),
        "n_reconstruction": int((~is_novel).sum()),
        "novel_fraction_active": float(is_novel[fires].float().mean()) if bool(fires.any()) else None,
        "novel_fraction_definition": classes.summary()["novel_fraction_definition"],
        "classes": classes.summary(),
        "control": control,
        **extra,
        "groups": groups.kind_counts(),
        "proxy": proxy_agreement(is_novel, classes.delta_mse, fires),
        "mse_small": float(path.mse[0]),
        "mse_large": float(path.mse[-1]),
        "fvu_small": float(path.fvu[0]),
        "fvu_large": float(path.fvu[-1]),
        "path_auc": path.normalized_auc(),
        "path_monotone_fraction": path.monotone_fraction(),
        "path_excess": path.excess_over_endpoints(),
        "path_points": path.n_points,
        "path": {
            "point": keep.tolist(),
            "kind": [STEP_KINDS[int(k)] for k in path.kind[keep]],
            "n_latents": path.n_latents[keep].tolist(),
            "mse": path.mse[keep].tolist(),
            "fvu": path.fvu[keep].tolist(),
            "l0": path.l0[keep].tolist(),
        },
        "path_ce": ce or None,
    }


def _arrays(result: StitchingResult) -> dict[str, Tensor]:
    m, g, p = result.match, result.groups, result.path
    tensors = {
        "large_max_cos": m.large_max_cos, "large_nearest": m.large_nearest, "small_max_cos": m.small_max_cos,
        "small_nearest": m.small_nearest, "large_group": g.large_group, "small_group": g.small_group,
        "large_delta_mse": result.large_delta_mse, "large_fire_count": result.large_fire_count,
        "edges_large": m.edges_large, "edges_small": m.edges_small, "edges_cos": m.edges_cos,
        "path_order": p.order, "path_kind": p.kind, "path_group": p.group, "path_n_latents": p.n_latents,
        "path_mse": p.mse, "path_fvu": p.fvu, "path_l0": p.l0,
    }
    if result.classes is not None:
        # the classes as the analysis decided them (readers use these, never a threshold of their own)
        tensors["large_novel_cosine"] = result.classes.match.is_novel.to(torch.uint8)
        tensors["large_novel_definition"] = result.classes.novel_by_definition.to(torch.uint8)
        if result.classes.init_cos is not None:
            tensors["large_init_cos"] = result.classes.init_cos
    if result.control is not None:
        tensors["control_max_cos"] = result.control.match.large_max_cos
        tensors["control_delta_mse"] = result.control.delta_mse
        tensors["control_novel_definition"] = result.control.novel_by_definition.to(torch.uint8)
    if result.control_path is not None:
        c = result.control_path
        tensors.update({"control_path_kind": c.kind, "control_path_n_latents": c.n_latents, "control_path_mse": c.mse,
                        "control_path_fvu": c.fvu, "control_path_l0": c.l0})
    return tensors


SETTINGS = ("tau", "n_tokens", "data")
"""The keys of a results summary that say how a pair was analysed: results that differ in one are not comparable."""


def settings_mismatch(summaries: dict[str, dict[str, Any]]) -> str | None:
    """``None`` when every summary (by file or pair name) was analysed with the same :data:`SETTINGS`, else a
    sentence naming each setting that differs and its value per name (for example after a family ``stitch`` that
    was stopped midway and re-run with other settings)."""
    differing = []
    for key in SETTINGS:
        values = {name: summary.get(key) for name, summary in summaries.items()}
        if len({repr(v) for v in values.values()}) > 1:
            differing.append(f"{key} " + ", ".join(f"{v!r} ({name})" for name, v in values.items()))
    if not differing:
        return None
    return ("these stitching results were analysed with different settings and are not comparable: "
            + "; ".join(differing) + ". Re-run canon-pl stitch on the family to make them one set")


def write_stitching_results(result: StitchingResult, directory: str | os.PathLike, name: str | None = None) -> Path:
    """Write ``<name>.safetensors`` then ``<name>.json`` (default name ``<d_small>_<d_large>``); returns the JSON."""
    name = name or RunLayout.pair_name(result.summary["small"]["d_sae"], result.summary["large"]["d_sae"])
    return write_results(directory, name, result.summary, _arrays(result), STITCHING_RESULTS)


def latent_classes(summary: dict[str, Any], arrays: dict[str, Any]) -> dict[str, list[str]]:
    """Each large latent's class as the results file states it: ``cosine`` (no small decoder row within the file's
    ``tau``) and ``definition`` (fires and lowers S's MSE when added alone), ``novel`` or ``reconstruction``. A file
    written before the classes were stored gets them from its own ``tau`` and arrays, by the same rules."""
    def named(novel: Any) -> list[str]:
        return ["novel" if bool(v) else "reconstruction" for v in novel.tolist()]

    if "large_novel_cosine" in arrays:
        return {"cosine": named(arrays["large_novel_cosine"]), "definition": named(arrays["large_novel_definition"])}
    return {"cosine": named(arrays["large_max_cos"] < summary["tau"]),
            "definition": named((arrays["large_fire_count"] > 0) & (arrays["large_delta_mse"] < 0))}


def read_stitching_results(path: str | os.PathLike, arrays: bool = False) -> dict[str, Any]:
    """The summary of a results JSON; with ``arrays=True`` also ``summary["arrays"]`` as a dict of tensors."""
    return read_results(path, STITCHING_RESULTS, arrays)
