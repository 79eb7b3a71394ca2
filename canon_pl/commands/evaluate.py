"""``canon-pl evaluate``: SAEBench's core metrics for every SAE of a family (members and seed controls), side by side
(the work is :func:`canon_pl.study.evaluate.evaluate_run`)."""

from __future__ import annotations

DESCRIPTION = """SAEBench's core metrics (reconstruction, shrinkage, sparsity, alive latents, encoder/decoder cosines,
and with text data the spliced CE and KL) for every SAE of a family or for one export, one SAEBench-shaped JSON each
and a family summary: which width reconstructs how well, how sparse, how much of it is alive, and how far two seeds of
one width differ."""


def evaluate(run: str, *, data: str, tokens: int = 65536, out: str | None = None, details: bool = True,
             device: str | None = None) -> int:
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
    from canon_pl.study.evaluate import evaluate_run

    return evaluate_run(run, data=data, tokens=tokens, out=out, details=details, device=device)


__all__ = ["evaluate"]
