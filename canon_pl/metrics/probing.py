"""k-sparse probing: how well the k most class-separating latents of an SAE predict a token label (docs/design.md 1.4).

The method is Gurnee et al. (2023, "Finding Neurons in a Haystack", arXiv 2305.01610) as SAEBench's
``sparse_probing`` evaluation runs it: on the training tokens, rank latents by the difference of their mean
activation on positive and on negative tokens (positive minus negative, largest first), keep the top k, fit a
logistic regression (scikit-learn's ``LogisticRegression``) on those k activations and score it on held-out tokens.
The ceiling beside it is the same regression on the raw activations (all ``d_in`` dimensions). Differences from
SAEBench, stated: the labels are per token (:mod:`canon_pl.lm.token_labels`) where SAEBench's are per text, classes
are not subsampled to balance but weighted (``class_weight="balanced"``) and the score is the *balanced* accuracy
(the mean of the two classes' recall; 0.5 is chance), and the split is by position: the first
:data:`TRAIN_FRACTION` of the tokens (whole contexts, in the order they were read) train, the rest test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

KS = (1, 2, 5, 20)
"""The k of the k-sparse probes."""
TRAIN_FRACTION = 0.8
"""The leading share of the tokens that trains the probes (the rest scores them)."""
MIN_PER_CLASS = 10
"""Fewer positive or negative tokens than this in either split and a task is not probed (its result says why)."""


def train_mask(n: int) -> Tensor:
    """``bool [n]``: the first :data:`TRAIN_FRACTION` of ``n`` tokens."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[: int(n * TRAIN_FRACTION)] = True
    return mask


def unprobeable(labels: Tensor, train: Tensor) -> str | None:
    """Why a task with ``labels int8 [n]`` (1 / 0 / -1 outside) cannot be probed on this split, or ``None``."""
    for split, where in (("training", train), ("test", ~train)):
        for name, value in (("positive", 1), ("negative", 0)):
            count = int((labels[where] == value).sum())
            if count < MIN_PER_CLASS:
                return f"{count} {name} tokens in the {split} split (at least {MIN_PER_CLASS} needed)"
    return None


def balanced_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Balanced accuracy on ``test_x [m, f]`` of a class-weighted logistic regression fitted on ``train_x [n, f]``
    (features standardised on the training tokens)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
    probe.fit(train_x.double().numpy(), train_y.numpy())
    return float(balanced_accuracy_score(test_y.numpy(), probe.predict(test_x.double().numpy())))


@torch.no_grad()
def class_mean_differences(encode: Callable[[Tensor], Tensor], x: Tensor, labels: dict[str, Tensor],
                           train: Tensor, batch_size: int = 4096) -> dict[str, Tensor]:
    """Per task, ``[d_sae]``: each latent's mean activation on the positive training tokens minus its mean on the
    negative ones. ``encode``: activations ``[b, d_in]`` -> codes ``[b, d_sae]``; ``x [n, d_in]``; ``labels``: task
    -> ``int8 [n]``."""
    sums: dict[str, list[Tensor]] = {}
    for start in range(0, x.shape[0], batch_size):
        codes = encode(x[start:start + batch_size]).double()
        in_train = train[start:start + batch_size]
        for name, task in labels.items():
            part = task[start:start + batch_size]
            pos = ((part == 1) & in_train).to(codes.device, codes.dtype)
            neg = ((part == 0) & in_train).to(codes.device, codes.dtype)
            if name not in sums:
                sums[name] = [torch.zeros(codes.shape[1], dtype=torch.float64, device=codes.device)] * 2
            sums[name] = [sums[name][0] + pos @ codes, sums[name][1] + neg @ codes]
    differences = {}
    for name, (pos, neg) in sums.items():
        n_pos = int(((labels[name] == 1) & train).sum())
        n_neg = int(((labels[name] == 0) & train).sum())
        differences[name] = (pos / max(n_pos, 1) - neg / max(n_neg, 1)).float().cpu()
    return differences


@torch.no_grad()
def latent_columns(encode: Callable[[Tensor], Tensor], x: Tensor, columns: Tensor,
                   batch_size: int = 4096) -> Tensor:
    """``[n, len(columns)]``: the activations of the latents ``columns`` on every token of ``x [n, d_in]``."""
    index = columns.to(x.device)
    return torch.cat([encode(x[s:s + batch_size])[:, index].float().cpu()
                      for s in range(0, x.shape[0], batch_size)])


def sae_encoder(sae: Any) -> Callable[[Tensor], Tensor]:
    """What the probes read of an SAE: raw activations ``[b, d_in]`` -> its codes ``[b, d_sae]`` (its input
    normalisation applied, inference mode)."""
    return lambda batch: sae.encode(sae.normalize_input(batch).x, inference=True)


def sparse_probes(encode: Callable[[Tensor], Tensor], x: Tensor, labels: dict[str, Tensor],
                  ks: Sequence[int] = KS) -> dict[str, dict[str, Any]]:
    """Per task: the held-out balanced accuracy of the k-sparse probe for each k of ``ks`` (``top_k_accuracy``,
    keys ``str(k)``), the latents ranked first (``top_latents``, best first) and the best one's mean-activation
    difference; or ``{"skipped": why}``. ``x [n, d_in]``; ``labels``: task -> ``int8 [n]``."""
    train = train_mask(x.shape[0])
    results: dict[str, dict[str, Any]] = {}
    probed = {}
    for name, task in labels.items():
        why = unprobeable(task, train)
        if why is not None:
            results[name] = {"skipped": why}
        else:
            probed[name] = task
    differences = class_mean_differences(encode, x, probed, train) if probed else {}
    k_max = max(ks)
    tops = {name: diff.topk(min(k_max, diff.numel())).indices for name, diff in differences.items()}
    if not tops:
        return results
    union = torch.cat(list(tops.values())).unique()
    gathered = latent_columns(encode, x, union)
    position = {int(c): i for i, c in enumerate(union.tolist())}
    for name, task in probed.items():
        inside = task >= 0
        y = task.long()
        accuracy = {}
        for k in ks:
            chosen = [position[int(c)] for c in tops[name][:k].tolist()]
            features = gathered[:, chosen]
            accuracy[str(k)] = balanced_probe_accuracy(features[inside & train], y[inside & train],
                                                       features[inside & ~train], y[inside & ~train])
        results[name] = {"top_k_accuracy": accuracy, "top_latents": tops[name][:k_max].tolist(),
                         "best_latent_mean_difference": float(differences[name][tops[name][0]]),
                         "n_train": int((inside & train).sum()), "n_test": int((inside & ~train).sum()),
                         "positive_share": float((task[inside] == 1).float().mean())}
    return results


def activation_probes(x: Tensor, labels: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """Per task: the held-out balanced accuracy of the probe on the raw activations ``x [n, d_in]`` (the ceiling the
    sparse probes are read against), or ``{"skipped": why}``."""
    train = train_mask(x.shape[0])
    results: dict[str, dict[str, Any]] = {}
    for name, task in labels.items():
        why = unprobeable(task, train)
        if why is not None:
            results[name] = {"skipped": why}
            continue
        inside, y, features = task >= 0, task.long(), x.float().cpu()
        results[name] = {"accuracy": balanced_probe_accuracy(features[inside & train], y[inside & train],
                                                             features[inside & ~train], y[inside & ~train])}
    return results


def saebench_probing_metrics(sae: dict[str, dict[str, Any]], llm: dict[str, dict[str, Any]],
                             ks: Sequence[int] = KS) -> dict[str, dict[str, float | None]]:
    """SAEBench's ``sparse_probing`` metric categories (the mean over the probed tasks): ``llm`` with
    ``llm_test_accuracy`` and ``sae`` with ``sae_top_<k>_test_accuracy``."""
    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    probed = [r for r in sae.values() if "top_k_accuracy" in r]
    return {"llm": {"llm_test_accuracy": mean([r["accuracy"] for r in llm.values() if "accuracy" in r])},
            "sae": {f"sae_top_{k}_test_accuracy": mean([r["top_k_accuracy"][str(k)] for r in probed]) for k in ks}}


__all__ = ["KS", "MIN_PER_CLASS", "TRAIN_FRACTION", "activation_probes", "balanced_probe_accuracy",
           "class_mean_differences", "latent_columns", "sae_encoder", "saebench_probing_metrics", "sparse_probes",
           "train_mask",
           "unprobeable"]
