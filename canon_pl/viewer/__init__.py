"""Read-only access to runs under ``checkpoints/`` for the Streamlit viewer (no Streamlit imports here).
Its names are imported on first use (:mod:`canon_pl.lazy`)."""

from canon_pl.lazy import lazy_exports

_EXPORTS = {
    "RunSummary": "canon_pl.viewer.runs",
    "StitchingPair": "canon_pl.viewer.stitching",
    "find_runs": "canon_pl.viewer.runs",
    "find_stitching_results": "canon_pl.viewer.stitching",
    "load_pair": "canon_pl.viewer.stitching",
    "member_metrics": "canon_pl.viewer.runs",
    "read_metrics": "canon_pl.viewer.runs",
}
"""Public name -> the module that defines it (imported on first use)."""

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
