"""Per-latent statistics of every SAE of a run from one pass of held-out text through the LM (``canon-pl stats`` is
the command line of :func:`statistics_of_run`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from canon_pl.checks import check_counts, check_device, check_output_folder
from canon_pl.io import load_sae, training_data
from canon_pl.io.export import CONFIG_FILE
from canon_pl.io.family import MANIFEST_FILE, hook_families, is_multi_hook_run, read_family_manifest
from canon_pl.io.load import load_family
from canon_pl.io.layout import RunLayout
from canon_pl.lm.loading import LoadedModel
from canon_pl.meta import read_meta_analysis
from canon_pl.sae import SparseAutoencoder
from canon_pl.stats import (
    StatsError,
    collect_statistics,
    unembedding_directions,
    write_statistics,
)
from canon_pl.stats.files import write_meta_statistics

def first_export(path: Path) -> Path:
    """The export folder of a run: itself, or for a family the smallest member's (members share their data)."""
    if (path / MANIFEST_FILE).is_file():
        manifest = read_family_manifest(path)
        return path / manifest["members"][str(manifest["widths"][0])]
    return path


def load_run(path: Path, device: str) -> dict[str, SparseAutoencoder]:
    """Every SAE of a run, by member name (the width for a family, ``sae`` for a single export)."""
    if (path / MANIFEST_FILE).is_file():
        return {str(w): sae for w, sae in load_family(path, device).saes.items()}
    if (path / CONFIG_FILE).is_file():
        return {"sae": load_sae(path, device)}
    raise StatsError(f"{path} is neither an export folder ({CONFIG_FILE}) nor a family folder ({MANIFEST_FILE})")


def cofiring_pairs(run_dir: Path, saes: dict[str, SparseAutoencoder],
                   device: str) -> dict[tuple[str, str], SparseAutoencoder | None]:
    """Which co-firing partners a family's statistics record: each member against the next smaller member (value
    ``None``: both are in ``saes``) and against its width's first seed control (loaded here, encoded only for this);
    pairs too wide to count (:data:`canon_pl.stats.cofiring.MAX_PAIRS`) are left out. Nothing outside a family."""
    from canon_pl.stats.cofiring import MAX_PAIRS

    if not (run_dir / MANIFEST_FILE).is_file():
        return {}
    manifest = read_family_manifest(run_dir)
    widths = sorted(int(w) for w in manifest["members"])
    pairs: dict[tuple[str, str], SparseAutoencoder | None] = {}
    for smaller, width in zip(widths, widths[1:]):
        if width * smaller <= MAX_PAIRS:
            pairs[(str(width), str(smaller))] = None
    seeded: set[str] = set()
    for folder, control in sorted(manifest["controls"].items()):
        width = str(control["width"])
        if width in saes and width not in seeded and int(width) ** 2 <= MAX_PAIRS:
            pairs[(width, folder)] = load_sae(run_dir / folder, device)
            seeded.add(width)
    return pairs


def check_source(saes: dict[str, SparseAutoencoder], model: str | None, hook_point: str | None) -> tuple[str, str]:
    """The run's model and hook point; asking for others is an error (the SAEs would read the wrong activations)."""
    first = next(iter(saes.values())).cfg
    run_model, run_hook = first.model_id, first.hook_point
    if model and run_model and model != run_model:
        raise StatsError(f"the run was exported for model {run_model!r} but --model {model!r} was asked for; "
                         f"statistics must use the activations the SAEs were trained on")
    if hook_point and run_hook and hook_point != run_hook:
        raise StatsError(f"the run was exported for hook point {run_hook!r} but --hook_point {hook_point!r} was "
                         f"asked for; statistics must use the activations the SAEs were trained on")
    model, hook_point = model or run_model, hook_point or run_hook
    if not model or not hook_point:
        raise StatsError("the run records no model_id/hook_point: pass --model and --hook_point")
    return model, hook_point


def statistics_of_run(*, run: str, tokens: int, text: str | None, model: str | None, hook_point: str | None, top: int,
                      samples: int, window: int, context_length: int | None, contexts_per_forward: int, out: str | None,
                      device: str | None) -> int:
    """``canon-pl stats`` (:func:`canon_pl.commands.stats.stats`, whose docstring says what each argument is): the
    statistics of every SAE of ``run`` (each hook point's family of a multi-hook run; a meta-SAE's from its
    analysis) written to ``out``."""
    from canon_pl.lm import check_text_source
    from canon_pl.lm.source import ActivationSource, CaptureSettings

    check_counts(**{"--tokens": tokens, "--top": top, "--samples": samples,
                    "--contexts_per_forward": contexts_per_forward})
    check_counts(0, **{"--window": window})
    device = check_device(device)
    run_dir = Path(run)
    if is_multi_hook_run(run_dir):
        if hook_point is not None:
            raise StatsError(f"{run_dir} is a multi-hook run: each hook point's family is read at its own hook point; "
                             f"leave out --hook_point")
        for hook, folder in hook_families(run_dir).items():  # <run>/<hook point>/stats/ each
            print(f"hook point {hook}:")
            statistics_of_run(run=str(folder), tokens=tokens, text=text, model=model, hook_point=None, top=top,
                              samples=samples, window=window, context_length=context_length,
                              contexts_per_forward=contexts_per_forward,
                              out=str(Path(out) / folder.name) if out else None, device=device)
        return 0
    out_dir = Path(out) if out else RunLayout(run_dir).stats
    check_output_folder(out_dir)
    if (run_dir / "analysis.json").is_file():
        return meta_stats(run_dir, out_dir, model, top, device)
    saes = load_run(run_dir, device)
    model_id, hook_point = check_source(saes, model, hook_point)
    provenance = training_data(first_export(run_dir))
    if context_length is not None and context_length < 2:  # None: the run's; 0 is the user's, refused
        raise StatsError(f"--context_length must be at least 2 (BOS and one token), got {context_length}")
    settings = CaptureSettings.like_training(provenance, model=model_id, hook_point=hook_point,
                                             text=text or provenance.get("text") or CaptureSettings.text,
                                             context_length=context_length)
    check_text_source(settings.text)
    source = ActivationSource(settings)
    loaded = source.load(device).loaded
    n_contexts = math.ceil(tokens / settings.context_length)

    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for batch in source.take("val", n_contexts, contexts_per_forward, progress="statistics"):
            yield batch.tokens, batch.activations, batch.mask

    pairs = cofiring_pairs(run_dir, saes, device)
    with torch.inference_mode():
        collectors, contexts, cofiring = collect_statistics(saes, batches(), cofiring=pairs, n_top=top,
                                                            n_sample=samples, window=window)
    if not contexts:
        raise StatsError(f"the text source {settings.text!r} gave no held-out contexts")
    index, n_tokens = _write_family_statistics(out_dir, saes, loaded, collectors, contexts, cofiring, meta={
        "model_id": model_id, "hook_point": hook_point, "text": settings.text, "n_top": top, "n_sample": samples,
        "context_length": settings.context_length, "n_layers": loaded.n_layers})
    print(f"statistics of {len(saes)} SAE(s) over {n_tokens} tokens written to {index}")
    return 0


def _write_family_statistics(out_dir: Path, saes: dict, loaded: LoadedModel, collectors: Any, contexts: list[Tensor],
                             cofiring: dict, meta: dict[str, Any]) -> tuple[Path, int]:
    """Write the statistics of ``saes`` (their collectors, the held-out ``contexts`` ``[n, context_length]`` each,
    the co-firing counts of each pair) with every SAE's unembedded decoder directions and the strings of every
    token mentioned; returns the index's path and the number of tokens passed."""
    unembed, norm_weight = _unembedding(loaded)
    unembedded = {name: unembedding_directions(sae.W_dec.detach(), unembed, norm_weight)
                  for name, sae in saes.items()}
    all_contexts = torch.cat(contexts)
    mentioned = torch.cat([all_contexts.flatten()] + [torch.cat([u[0].flatten(), u[2].flatten()])
                                                      for u in unembedded.values()]).unique().tolist()
    token_strings = {i: loaded.tokenizer.decode([i]) for i in mentioned}
    partners = {(a, kind): (b, *cofiring[(a, b)].best_partners()) for (a, b), kind in
                ((pair, "smaller" if pair[1] in saes else "seed") for pair in cofiring)}
    index = write_statistics(out_dir, collectors, all_contexts, unembedded, token_strings=token_strings,
                             cofiring=partners, meta=meta)
    return index, all_contexts.numel()


def _unembedding(loaded: LoadedModel) -> tuple[Tensor, Tensor | None]:
    """The LM's unembedding ``[vocab, d]`` and final-norm weight ``[d]`` (or ``None``)."""
    norm = getattr(getattr(loaded.model, "model", None), "norm", None)
    return loaded.model.lm_head.weight.detach(), getattr(norm, "weight", None)


def meta_stats(run: Path, out: Path, model: str | None, top: int, device: str) -> int:
    """A meta-SAE run: each meta-latent's member latents (from its analysis) and promoted tokens; no text pass
    (a meta-SAE reads decoder rows, not activations)."""
    analysis = read_meta_analysis(run, arrays=True)
    model_id = model or (analysis.get("base") or {}).get("model_id")
    if not model_id:
        raise StatsError(f"{run}/analysis.json records no base model: pass --model")
    meta = load_sae(run, device)
    from canon_pl.lm import load_causal_lm

    loaded = load_causal_lm(model_id, device=device)
    unembed, norm_weight = _unembedding(loaded)
    unembedded = unembedding_directions(meta.W_dec.detach(), unembed, norm_weight)
    mentioned = torch.cat([unembedded[0].flatten(), unembedded[2].flatten()]).unique().tolist()
    index = write_meta_statistics(out, analysis["decomposition"], unembedded,
                                  {"model_id": model_id, "base": analysis.get("base"), "n_layers": loaded.n_layers},
                                  n_members=top * 2,
                                  token_strings={i: loaded.tokenizer.decode([i]) for i in mentioned})
    print(f"statistics of {meta.d_sae} meta-latents written to {index}")
    return 0


__all__ = ["cofiring_pairs", "load_run", "meta_stats", "statistics_of_run"]
