"""``canon-pl evaluate``: SAEBench's core metrics for every SAE of a family (members and seed controls), side by side.

Each SAE gets ``<out>/<folder>.core.json`` in the shape of SAEBench's ``core`` evaluation output (``eval_type_id``,
``eval_config``, ``eval_result_metrics`` by category, ``eval_result_details`` per latent; the metrics are defined in
:mod:`canon_pl.metrics.core`), and the family one ``<out>/summary.json``: a row per SAE (width, whether it is a seed
control, the headline metrics) and, per width with a seed control, the spread between the seeds. The language-model
figures (CE and KL with the SAE spliced in against zero-ablation) need text data: with an activation cache they are
``null``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from canon_pl.checks import check_counts, check_device, check_output_folder, default_device
from canon_pl.commands.args import run_command
from canon_pl.errors import CanonError
from canon_pl.io import load_sae, training_data
from canon_pl.io.document import DocumentKind
from canon_pl.io.family import MANIFEST_FILE, read_family_manifest
from canon_pl.io.layout import RunLayout
from canon_pl.metrics.core import CoreMetrics, weight_metrics
from canon_pl.sae import SparseAutoencoder

DESCRIPTION = """SAEBench's core metrics (reconstruction, shrinkage, sparsity, alive latents, encoder/decoder cosines,
and with text data the spliced CE and KL) for every SAE of a family or for one export, one SAEBench-shaped JSON each
and a family summary: which width reconstructs how well, how sparse, how much of it is alive, and how far two seeds of
one width differ."""

SUMMARY = DocumentKind("canon_pl.evaluation", 1, "evaluation summary", CanonError,
                       rebuild="write it again with `canon-pl evaluate <run> --data <held-out data>`")
HEADLINE = (("reconstruction_quality", "explained_variance"), ("reconstruction_quality", "cossim"),
            ("shrinkage", "l2_ratio"), ("shrinkage", "relative_reconstruction_bias"), ("sparsity", "l0"),
            ("misc_metrics", "frac_alive"), ("misc_metrics", "average_max_decoder_cosine_sim"),
            ("model_performance_preservation", "ce_loss_score"), ("model_behavior_preservation", "kl_div_score"))
"""The metrics a summary row carries (category, SAEBench field)."""


@dataclass(frozen=True)
class Evaluated:
    """One SAE to evaluate: its export folder, its width and whether it is a seed control in its family."""

    folder: Path
    width: int
    seed_control: bool


def saes_of(run: Path) -> list[Evaluated]:
    """A family's members and seed controls (widest last), or the one export ``run`` is."""
    if not (run / MANIFEST_FILE).is_file():
        if not (run / "cfg.json").is_file():
            raise CanonError(f"{run} is neither a family folder ({MANIFEST_FILE}) nor an SAE export (cfg.json): pass "
                             f"a run folder written by lightning fit or canon-pl export")
        return [Evaluated(run, 0, False)]
    manifest = read_family_manifest(run)
    found = [Evaluated(run / folder, int(width), False) for width, folder in manifest["members"].items()]
    found += [Evaluated(run / folder, int(c["width"]), True) for folder, c in manifest["controls"].items()]
    return sorted(found, key=lambda e: (e.width, e.seed_control, e.folder.name))


@torch.no_grad()
def core_metrics(sae: SparseAutoencoder, x: torch.Tensor, batch_size: int = 4096) -> tuple[dict[str, Any], Any]:
    """(SAEBench's categories for ``sae`` on activations ``x [n, d_in]``, the :class:`CoreMetrics` that made them)."""
    metric = CoreMetrics(sae.d_sae).to(x.device)
    for batch in x.split(batch_size):
        normalized = sae.normalize_input(batch)
        acts = sae.encode(normalized.x, inference=True)
        metric.update(batch, normalized.restore(sae.decode(acts)), acts)
    return metric.compute(), metric


def language_model_metrics(spliced: dict[str, float] | None) -> dict[str, dict[str, float | None]]:
    """SAEBench's model-preservation categories from a :data:`canon_pl.stitching.analysis.SplicedLoss` result (all
    ``None`` without text data)."""
    s = spliced or {}
    return {"model_behavior_preservation": {"kl_div_score": s.get("kl_recovered"),
                                            "kl_div_with_ablation": s.get("kl_zero"), "kl_div_with_sae": s.get("kl")},
            "model_performance_preservation": {"ce_loss_score": s.get("ce_recovered"),
                                               "ce_loss_with_ablation": s.get("ce_zero"),
                                               "ce_loss_with_sae": s.get("ce_sae"),
                                               "ce_loss_without_sae": s.get("ce_clean")}}


def saebench_document(sae: SparseAutoencoder, metrics: dict[str, Any], details: dict[str, torch.Tensor],
                      densities: torch.Tensor, config: dict[str, Any]) -> dict[str, Any]:
    """SAEBench's ``core`` output shape: its top-level keys, metric categories and per-latent details."""
    columns = {"feature_density": densities, "encoder_bias": sae.encoder_bias().detach().float(), **details}
    rows = [{"index": j, **{name: float(values[j]) for name, values in columns.items()}} for j in range(sae.d_sae)]
    return {"eval_type_id": "core", "eval_config": config, "eval_id": str(uuid.uuid4()),
            "datetime_epoch_millis": int(time.time() * 1000), "eval_result_metrics": metrics,
            "eval_result_details": rows, "eval_result_unstructured": None, "sae_bench_commit_hash": None,
            "sae_lens_id": None, "sae_lens_release_id": None, "sae_lens_version": None,
            "sae_cfg_dict": sae.cfg.to_dict()}


def seed_spread(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per width with a seed control: each headline metric's range over the seeds (``max − min``)."""
    spread: dict[str, dict[str, float]] = {}
    for width in sorted({r["width"] for r in rows}):
        seeds = [r for r in rows if r["width"] == width]
        if len(seeds) < 2:
            continue
        spread[str(width)] = {name: max(values) - min(values) for name in seeds[0]["metrics"]
                              if None not in (values := [r["metrics"][name] for r in seeds])}
    return spread


def evaluate(run: str, *, data: str, tokens: int = 65536, out: str | None = None, details: bool = True,
             device: str = default_device()) -> int:
    """SAEBench's core metrics for every SAE of a family (members and seed controls) or for one export.

    Args:
        run: a family folder (family.json) or one SAE export (cfg.json)
        data: held-out activations: an activation cache (folder with index.json; no CE/KL), or a text source
            (python-docs, a local file/glob, a hub dataset) captured through the SAEs' model, with CE and KL
        tokens: held-out tokens to evaluate on
        out: results folder (default <run>/evaluation)
        details: write the per-latent details (density, encoder bias and norm, cosines) into each JSON
        device: cpu, cuda, cuda:1, ... (default: cuda when a GPU is present)
    """
    from canon_pl.io.atomic import atomic_write_json
    from canon_pl.training.analysis_data import analysis_activations

    check_counts(**{"--tokens": tokens})
    check_device(device)
    run_path = Path(run)
    evaluated = saes_of(run_path)
    out_dir = check_output_folder(out or RunLayout(run_path).evaluation)  # before any model is loaded
    saes = {entry.folder: load_sae(entry.folder, device) for entry in evaluated}
    x, spliced = analysis_activations(data, tokens, saes[evaluated[0].folder], ce=True, device=device,
                                      provenance=training_data(evaluated[0].folder))
    x = x.to(device)
    for folder, sae in saes.items():
        if sae.d_in != x.shape[1]:
            raise CanonError(f"{folder} takes d_in {sae.d_in} but the evaluation data has {x.shape[1]}")
    # the LM with each SAE's reconstruction spliced in (raw activations in and out, as sae(x) takes them): one call,
    # so the clean and zero-ablated passes run once for the whole family
    lm = {} if spliced is None else spliced({str(folder): (lambda h, sae=sae: sae(h.float(), inference=True))
                                             for folder, sae in saes.items()})
    config = {"data": data, "n_tokens": int(x.shape[0]), "ce_on_text": spliced is not None,
              "evaluated_by": "canon-pl evaluate"}
    rows = []
    for entry in evaluated:
        sae = saes[entry.folder]
        metrics, metric = core_metrics(sae, x)
        weights = weight_metrics(sae.W_enc, sae.W_dec)
        metrics["misc_metrics"].update({"average_max_encoder_cosine_sim": float(weights["max_encoder_cosine_sim"].mean()),
                                        "average_max_decoder_cosine_sim": float(weights["max_decoder_cosine_sim"].mean())})
        metrics.update(language_model_metrics(lm.get(str(entry.folder))))
        document = saebench_document(sae, metrics, weights if details else {}, metric.densities(), config)
        if not details:
            document["eval_result_details"] = []
        name = entry.folder.name if entry.folder != run_path else "sae"
        atomic_write_json(out_dir / f"{name}.core.json", document)
        width = entry.width or sae.d_sae
        rows.append({"name": name, "width": width, "seed_control": entry.seed_control,
                     "metrics": {f"{field}": metrics[category][field] for category, field in HEADLINE}})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in rows[-1]["metrics"].items() if v is not None)
        print(f"{name} ({width} latents{', seed control' if entry.seed_control else ''}): {shown}", flush=True)
    summary = SUMMARY.stamp({"run": str(run_path), "data": data, "n_tokens": int(x.shape[0]), "rows": rows,
                             "seed_spread": seed_spread(rows)})
    atomic_write_json(out_dir / "summary.json", summary)
    print(f"wrote {len(rows)} SAEBench core files and {out_dir / 'summary.json'}")
    return 0


def evaluate_command(argv: list[str]) -> int:
    return run_command(evaluate, argv, "evaluate", DESCRIPTION)


__all__ = ["SUMMARY", "core_metrics", "evaluate", "saes_of", "seed_spread"]
