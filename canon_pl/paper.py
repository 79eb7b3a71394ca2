"""Settings the paper fixes (Leask et al. 2025, docs/design.md 1.2) that command lines show as defaults: stated once
here, in a module that imports nothing, so that ``canon-pl <command> --help`` answers without importing torch."""

DEFAULT_TAU = 0.7
"""The decoder cosine at or above which a larger SAE's latent counts as a match of a smaller one's (the paper's
threshold for the cosine proxy and for the stitching groups)."""

__all__ = ["DEFAULT_TAU"]
