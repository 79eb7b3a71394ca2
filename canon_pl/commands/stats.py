"""``canon-pl stats``: one pass of held-out text through the LM and every SAE of a run; per-latent statistics."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from canon_pl.checks import check_counts, check_device, check_output_folder
from canon_pl.errors import CanonError
from canon_pl.io import load_sae, training_data
from canon_pl.io.export import CONFIG_FILE
from canon_pl.io.family import MANIFEST_FILE, load_family, read_family_manifest
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

DESCRIPTION = """Per-latent statistics of every SAE of a run (an export folder or a family folder): top activating
contexts with a window of activations, a uniform sample of firing examples (for quantiles), firing frequency, a
log10 activation histogram, and the tokens each decoder direction promotes and suppresses through the unembedding.
Writes <run>/stats/ (stats.json, contexts.safetensors, one <member>.safetensors per SAE)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canon-pl stats", description=DESCRIPTION)
    parser.add_argument("--run", required=True, help="export folder (cfg.json) or family folder (family.json)")
    parser.add_argument("--tokens", type=int, default=65536, help="held-out tokens to pass (default 65536)")
    parser.add_argument("--text", help="text source (default: the run's training text, else python-docs; its "
                                       "held-out documents, split, ordered and selected as the run's training was)")
    parser.add_argument("--model", help="language model (default: the run's model_id; must match it)")
    parser.add_argument("--hook-point", help="hook point (default: the run's hook_point; must match it)")
    parser.add_argument("--top", type=int, default=10, help="top examples per latent (default 10)")
    parser.add_argument("--samples", type=int, default=20, help="uniform firing examples per latent (default 20)")
    parser.add_argument("--window", type=int, default=8, help="tokens each side of an example (default 8)")
    parser.add_argument("--context-length", type=int, help="tokens per context (default: the run's, else 128)")
    parser.add_argument("--contexts-per-forward", type=int, default=32,
                        help="contexts per LM forward and per statistics update (default 32)")
    parser.add_argument("--out", help="output folder (default <run>/stats)")
    parser.add_argument("--device", default="cpu")
    return parser


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


def check_source(saes: dict[str, SparseAutoencoder], model: str | None, hook_point: str | None) -> tuple[str, str]:
    """The run's model and hook point; asking for others is an error (the SAEs would read the wrong activations)."""
    first = next(iter(saes.values())).cfg
    run_model, run_hook = first.model_id, first.hook_point
    if model and run_model and model != run_model:
        raise StatsError(f"the run was exported for model {run_model!r} but --model {model!r} was asked for; "
                         f"statistics must use the activations the SAEs were trained on")
    if hook_point and run_hook and hook_point != run_hook:
        raise StatsError(f"the run was exported for hook point {run_hook!r} but --hook-point {hook_point!r} was "
                         f"asked for; statistics must use the activations the SAEs were trained on")
    model, hook_point = model or run_model, hook_point or run_hook
    if not model or not hook_point:
        raise StatsError("the run records no model_id/hook_point: pass --model and --hook-point")
    return model, hook_point


def stats_command(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    from canon_pl.lm import check_text_source
    from canon_pl.lm.source import ActivationSource, CaptureSettings

    try:
        check_counts(**{"--tokens": ns.tokens, "--top": ns.top, "--samples": ns.samples,
                        "--contexts-per-forward": ns.contexts_per_forward})
        check_counts(0, **{"--window": ns.window})
        check_device(ns.device)
        run = Path(ns.run)
        check_output_folder(ns.out or RunLayout(run).stats)
        if (run / "analysis.json").is_file():
            return meta_stats(run, ns)
        saes = load_run(run, ns.device)
        model_id, hook_point = check_source(saes, ns.model, ns.hook_point)
        provenance = training_data(first_export(run))
        if ns.context_length is not None and ns.context_length < 2:  # None: the run's; 0 is the user's, refused
            raise StatsError(f"--context-length must be at least 2 (BOS and one token), got {ns.context_length}")
        settings = CaptureSettings.like_training(provenance, model=model_id, hook_point=hook_point,
                                                 text=ns.text or provenance.get("text") or CaptureSettings.text,
                                                 context_length=ns.context_length)
        check_text_source(settings.text)
    except CanonError as err:
        print(f"canon-pl stats: error: {err}", file=sys.stderr)
        return 2
    ns.text, ns.context_length = settings.text, settings.context_length
    source = ActivationSource(settings)
    loaded = source.load(ns.device).loaded
    n_contexts = math.ceil(ns.tokens / ns.context_length)

    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for batch in source.take("val", n_contexts, ns.contexts_per_forward, progress="statistics"):
            yield batch.tokens, batch.activations, batch.mask

    with torch.inference_mode():
        collectors, contexts = collect_statistics(saes, batches(), n_top=ns.top, n_sample=ns.samples,
                                                  window=ns.window)
    if not contexts:
        print(f"canon-pl stats: error: the text source {ns.text!r} gave no held-out contexts", file=sys.stderr)
        return 2
    unembed, norm_weight = _unembedding(loaded)
    unembedded = {name: unembedding_directions(sae.W_dec.detach(), unembed, norm_weight)
                  for name, sae in saes.items()}
    out = Path(ns.out or RunLayout(run).stats)
    all_contexts = torch.cat(contexts)
    mentioned = torch.cat([all_contexts.flatten()] + [torch.cat([u[0].flatten(), u[2].flatten()])
                                                      for u in unembedded.values()]).unique().tolist()
    token_strings = {i: loaded.tokenizer.decode([i]) for i in mentioned}
    index = write_statistics(out, collectors, all_contexts, unembedded, token_strings=token_strings, meta={
        "model_id": model_id, "hook_point": hook_point, "text": ns.text, "n_top": ns.top, "n_sample": ns.samples,
        "context_length": ns.context_length})
    print(f"statistics of {len(saes)} SAE(s) over {all_contexts.numel()} tokens written to {index}")
    return 0


def _unembedding(loaded: LoadedModel) -> tuple[Tensor, Tensor | None]:
    """The LM's unembedding ``[vocab, d]`` and final-norm weight ``[d]`` (or ``None``)."""
    norm = getattr(getattr(loaded.model, "model", None), "norm", None)
    return loaded.model.lm_head.weight.detach(), getattr(norm, "weight", None)


def meta_stats(run: Path, ns: argparse.Namespace) -> int:
    """A meta-SAE run: each meta-latent's member latents (from its analysis) and promoted tokens; no text pass
    (a meta-SAE reads decoder rows, not activations)."""
    analysis = read_meta_analysis(run, arrays=True)
    model_id = ns.model or (analysis.get("base") or {}).get("model_id")
    if not model_id:
        raise StatsError(f"{run}/analysis.json records no base model: pass --model")
    meta = load_sae(run, ns.device)
    from canon_pl.lm import load_causal_lm

    loaded = load_causal_lm(model_id, device=ns.device)
    unembed, norm_weight = _unembedding(loaded)
    unembedded = unembedding_directions(meta.W_dec.detach(), unembed, norm_weight)
    mentioned = torch.cat([unembedded[0].flatten(), unembedded[2].flatten()]).unique().tolist()
    out = Path(ns.out or RunLayout(run).stats)
    index = write_meta_statistics(out, analysis["decomposition"], unembedded,
                                  {"model_id": model_id, "base": analysis.get("base")}, n_members=ns.top * 2,
                                  token_strings={i: loaded.tokenizer.decode([i]) for i in mentioned})
    print(f"statistics of {meta.d_sae} meta-latents written to {index}")
    return 0
