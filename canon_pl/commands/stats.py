"""``canon-pl stats``: one pass of held-out text through the LM and every SAE of a run; per-latent statistics (the
work is :func:`canon_pl.stats.run.statistics_of_run`)."""

from __future__ import annotations

DESCRIPTION = """Per-latent statistics of every SAE of a run (an export folder, a family folder, or a multi-hook run:
each hook point's family): top activating
contexts with a window of activations, a uniform sample of firing examples (for quantiles), firing frequency, a
log10 activation histogram, and the tokens each decoder direction promotes and suppresses through the unembedding.
Writes <run>/stats/ (stats.json, contexts.safetensors, one <member>.safetensors per SAE)."""


def stats(*, run: str, tokens: int = 65536, text: str | None = None, model: str | None = None,
          hook_point: str | None = None, top: int = 10, samples: int = 20, window: int = 8,
          context_length: int | None = None, contexts_per_forward: int = 32, out: str | None = None,
          device: str | None = None) -> int:
    """Per-latent statistics of every SAE of a run, from one pass of held-out text.

    Args:
        run: export folder (cfg.json), family folder (family.json) or multi-hook run (hooks.json: each family)
        tokens: held-out tokens to pass
        text: text source (default: the run's training text, else python-docs; its held-out documents, split,
            ordered and selected as the run's training was)
        model: language model (default: the run's model_id; must match it)
        hook_point: hook point (default: the run's hook_point; must match it)
        top: top examples per latent
        samples: uniform firing examples per latent
        window: tokens each side of an example
        context_length: tokens per context (default: the run's, else 128)
        contexts_per_forward: contexts per LM forward and per statistics update
        out: output folder (default <run>/stats)
        device: cpu, cuda, cuda:1, ... (default: cuda when a GPU is present)
    """
    from canon_pl.stats.run import statistics_of_run

    return statistics_of_run(run=run, tokens=tokens, text=text, model=model, hook_point=hook_point, top=top,
                             samples=samples, window=window, context_length=context_length,
                             contexts_per_forward=contexts_per_forward, out=out, device=device)


__all__ = ["stats"]
