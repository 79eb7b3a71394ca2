"""SAEBench's core metrics for every SAE of a family (members and seed controls), side by side (``canon-pl evaluate``
is the command line of :func:`evaluate_run`).

Each SAE gets ``<out>/<folder>.core.json`` in the shape of SAEBench's ``core`` evaluation output (``eval_type_id``,
``eval_config``, ``eval_result_metrics`` by category, ``eval_result_details`` per latent; the metrics are defined in
:mod:`canon_pl.metrics.core`), and the family one ``<out>/summary.json``: a row per SAE (width, whether it is a seed
control, the headline metrics) and, per width with a seed control, the spread between the seeds. The language-model
figures (CE and KL with the SAE spliced in against zero-ablation) need text data: with an activation cache they are
``null``.

With text data each SAE also gets ``<out>/<folder>.sparse_probing.json`` in the shape of SAEBench's
``sparse_probing`` output: k-sparse probes (:mod:`canon_pl.metrics.probing`) on token labels the text gives for free
(:mod:`canon_pl.lm.token_labels`), the raw-activation probe as the ceiling, and per task the latent that carries the
best single-latent probe with its class in the family's stitching (novel or reconstruction, by definition) and its
nearest decoder row in the other seed of its width; the summary adds per task the absorption of that latent
(:mod:`canon_pl.metrics.absorption`: how often it is silent on a positive token while a latent along the label's
direction fires in its place).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from canon_pl.checks import check_counts, check_device, check_output_folder
from canon_pl.errors import CanonError
from canon_pl.io import load_sae, training_data
from canon_pl.io.family import MANIFEST_FILE, read_family_manifest
from canon_pl.io.layout import RunLayout
from canon_pl.metrics.absorption import absorption_per_task
from canon_pl.metrics.core import CoreMetrics, weight_metrics
from canon_pl.metrics.summary import SUMMARY, read_summary
from canon_pl.metrics.probing import KS, activation_probes, sae_encoder, saebench_probing_metrics, sparse_probes
from canon_pl.sae import SparseAutoencoder

HEADLINE = (("reconstruction_quality", "explained_variance"), ("reconstruction_quality", "cossim"),
            ("shrinkage", "l2_ratio"), ("shrinkage", "relative_reconstruction_bias"), ("sparsity", "l0"),
            ("misc_metrics", "frac_alive"), ("misc_metrics", "average_max_decoder_cosine_sim"),
            ("model_performance_preservation", "ce_loss_score"), ("model_behavior_preservation", "kl_div_score"))
"""The metrics a summary row carries (category, SAEBench field)."""
PROBE_HEADLINE = ("sae_top_1_test_accuracy", "sae_top_5_test_accuracy")
"""With text data, a summary row also carries these means over the probing tasks (SAEBench's ``sparse_probing``)."""


@dataclass(frozen=True)
class Evaluated:
    """One SAE to evaluate: its export folder, its width, whether it is a seed control in its family and, for a
    sparsity variant (width × L0), the settings it changes."""

    folder: Path
    width: int
    seed_control: bool
    variant: dict[str, Any] | None = None

    @property
    def is_member(self) -> bool:
        """One of the family's widths itself (neither a seed control nor a sparsity variant)."""
        return not self.seed_control and self.variant is None


def saes_of(run: Path) -> list[Evaluated]:
    """A family's members, seed controls and sparsity variants (widest last), or the one export ``run`` is."""
    if not (run / MANIFEST_FILE).is_file():
        if not (run / "cfg.json").is_file():
            raise CanonError(f"{run} is neither a family folder ({MANIFEST_FILE}) nor an SAE export (cfg.json): pass "
                             f"a run folder written by lightning fit or canon-pl export")
        return [Evaluated(run, 0, False)]
    manifest = read_family_manifest(run)
    found = [Evaluated(run / folder, int(width), False) for width, folder in manifest["members"].items()]
    found += [Evaluated(run / folder, int(c["width"]), True) for folder, c in manifest["controls"].items()]
    found += [Evaluated(run / folder, int(v["width"]), False, {k: x for k, x in v.items() if k != "width"})
              for folder, v in manifest["variants"].items()]
    return sorted(found, key=lambda e: (e.width, e.variant is not None, e.seed_control, e.folder.name))


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


def saebench_probing_document(probes: dict[str, dict[str, Any]], llm: dict[str, dict[str, Any]],
                              config: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """SAEBench's ``sparse_probing`` output shape: the mean accuracies (``llm``, ``sae``) and a row per task."""
    details = []
    for task, result in probes.items():
        row = {"dataset_name": task, "llm_test_accuracy": llm.get(task, {}).get("accuracy")}
        row.update({f"sae_top_{k}_test_accuracy": result.get("top_k_accuracy", {}).get(str(k)) for k in KS})
        details.append(row)
    return {"eval_type_id": "sparse_probing", "eval_config": config, "eval_id": str(uuid.uuid4()),
            "datetime_epoch_millis": int(time.time() * 1000),
            "eval_result_metrics": saebench_probing_metrics(probes, llm), "eval_result_details": details,
            "eval_result_unstructured": probes, "sae_bench_commit_hash": None, "sae_lens_id": None,
            "sae_lens_release_id": None, "sae_lens_version": None, "sae_cfg_dict": cfg}


def novel_by_definition(run: Path, widths: list[int], width: int) -> list[str] | None:
    """The class (``novel`` / ``reconstruction``, by definition) of each latent of the member of ``width`` in its
    stitching against the next narrower member (``stitching/<narrower>_<width>``), ``None`` when there is none."""
    from canon_pl.stitching import latent_classes, read_stitching_results

    narrower = [w for w in widths if w < width]
    path = RunLayout(run).stitching_pair(max(narrower), width) if narrower else None
    if path is None or not path.is_file():
        return None
    summary = read_stitching_results(path, arrays=True)
    return latent_classes(summary, summary.pop("arrays"))["definition"]


def nearest_rows(decoder: torch.Tensor, other: torch.Tensor, latents: list[int]) -> list[tuple[int, float]]:
    """For each of ``latents`` (rows of ``decoder [d_sae, d_in]``): the nearest row of ``other [d_other, d_in]`` by
    cosine, and that cosine."""
    unit = torch.nn.functional.normalize(decoder[latents].float(), dim=-1)
    values, index = (unit @ torch.nn.functional.normalize(other.float(), dim=-1).T).max(dim=1)
    return list(zip(index.tolist(), values.tolist()))


def probe_carriers(run: Path, evaluated: list[Evaluated], saes: dict[Path, SparseAutoencoder],
                   probes: dict[Path, dict[str, dict[str, Any]]]) -> dict[Path, dict[str, dict[str, Any]]]:
    """Per SAE and task, the latent of the best single-latent probe: its index, its class in the family's stitching
    (members only) and its seed partner (the nearest decoder row in the other seed of the width: whether that row
    is the other seed's own best latent for the task, and their cosine)."""
    widths = sorted({e.width for e in evaluated if e.is_member})
    carriers: dict[Path, dict[str, dict[str, Any]]] = {}
    for entry in evaluated:
        classes = novel_by_definition(run, widths, entry.width) if entry.is_member and entry.width else None
        others = [e for e in evaluated if e.width == entry.width and e.variant is None and entry.variant is None
                  and e.seed_control != entry.seed_control]
        carriers[entry.folder] = {}
        for task, result in probes[entry.folder].items():
            if "top_latents" not in result:
                continue
            best = result["top_latents"][0]
            carrier: dict[str, Any] = {"latent": best, "class": classes[best] if classes else None,
                                       "seed_partner": None}
            if others:
                other = others[0].folder
                (partner, cosine), = nearest_rows(saes[entry.folder].W_dec.detach(),
                                                  saes[other].W_dec.detach(), [best])
                other_best = (probes[other].get(task) or {}).get("top_latents", [None])[0]
                carrier["seed_partner"] = {"sae": other.name, "latent": partner, "cosine": cosine,
                                           "is_its_best_latent": partner == other_best}
            carriers[entry.folder][task] = carrier
    return carriers


def seed_spread(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per width with a seed control: each headline metric's range over the seeds (``max − min``; the sparsity
    variants left out)."""
    spread: dict[str, dict[str, float]] = {}
    for width in sorted({r["width"] for r in rows}):
        seeds = [r for r in rows if r["width"] == width and not r.get("variant")]
        if len(seeds) < 2:
            continue
        spread[str(width)] = {name: max(values) - min(values) for name in seeds[0]["metrics"]
                              if None not in (values := [r["metrics"][name] for r in seeds])}
    return spread


def evaluate_run(run: str, *, data: str, tokens: int, out: str | None, details: bool, device: str | None) -> int:
    """``canon-pl evaluate`` (:func:`canon_pl.commands.evaluate.evaluate`, whose docstring says what each argument
    is): every SAE of ``run``'s core metrics, and with text data its k-sparse probes, written to ``out``."""
    from canon_pl.io.atomic import atomic_write_json
    from canon_pl.training.analysis_data import analysis_activations

    check_counts(**{"--tokens": tokens})
    device = check_device(device)
    run_path = Path(run)
    evaluated = saes_of(run_path)
    out_dir = check_output_folder(out or RunLayout(run_path).evaluation)  # before any model is loaded
    saes = {entry.folder: load_sae(entry.folder, device) for entry in evaluated}
    x, spliced, labels = analysis_activations(data, tokens, saes[evaluated[0].folder], ce=True, device=device,
                                              provenance=training_data(evaluated[0].folder), labels=True)
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
    probing: dict[str, Any] | None = None
    if labels is not None:  # text data: k-sparse probes on the tokens' labels
        llm = activation_probes(x, labels)
        probes = {folder: sparse_probes(sae_encoder(sae), x, labels) for folder, sae in saes.items()}
        carriers = probe_carriers(run_path, evaluated, saes, probes)
        absorbed = {folder: absorption_per_task(saes[folder], x, labels, found) for folder, found in probes.items()}
        probing = {"ks": list(KS), "tasks": {task: {"llm_test_accuracy": result.get("accuracy"),
                                                    "skipped": result.get("skipped")}
                                             for task, result in llm.items()}}
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
        rows.append({"name": name, "width": width, "seed_control": entry.seed_control, "variant": entry.variant,
                     "metrics": {f"{field}": metrics[category][field] for category, field in HEADLINE}})
        if probing is not None:
            probe_config = {**config, "ks": list(KS), "tasks": list(labels)}
            atomic_write_json(out_dir / f"{name}.sparse_probing.json",
                              saebench_probing_document(probes[entry.folder], llm, probe_config, sae.cfg.to_dict()))
            rows[-1]["probing"] = {task: {"top_k_accuracy": result.get("top_k_accuracy"),
                                          "carrier": carriers[entry.folder].get(task),
                                          "absorption": absorbed[entry.folder].get(task)}
                                   for task, result in probes[entry.folder].items()}
            means = saebench_probing_metrics(probes[entry.folder], llm)["sae"]
            rates = [a["absorption_rate"] for a in absorbed[entry.folder].values() if a["absorption_rate"] is not None]
            rows[-1]["metrics"].update({name: means[name] for name in PROBE_HEADLINE})
            rows[-1]["metrics"]["mean_full_absorption_score"] = sum(rates) / len(rates) if rates else None
        shown = ", ".join(f"{k} {v:.4g}" for k, v in rows[-1]["metrics"].items() if v is not None)
        print(f"{name} ({width} latents{', seed control' if entry.seed_control else ''}): {shown}", flush=True)
    summary = SUMMARY.stamp({"run": str(run_path), "data": data, "n_tokens": int(x.shape[0]), "rows": rows,
                             "seed_spread": seed_spread(rows), "probing": probing})
    atomic_write_json(out_dir / "summary.json", summary)
    print(f"wrote {len(rows)} SAEBench core files and {out_dir / 'summary.json'}")
    return 0


__all__ = ["PROBE_HEADLINE", "core_metrics", "evaluate_run", "nearest_rows", "novel_by_definition",
           "probe_carriers", "saebench_probing_document", "saes_of", "seed_spread"]
