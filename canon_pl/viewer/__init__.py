"""Read-only access to runs under ``checkpoints/`` for the Streamlit viewer (no Streamlit imports here)."""

from canon_pl.viewer.runs import RunSummary, find_runs, member_metrics, read_metrics
from canon_pl.viewer.stitching import StitchingPair, find_stitching_results, load_pair

__all__ = ["RunSummary", "StitchingPair", "find_runs", "find_stitching_results", "load_pair", "member_metrics",
           "read_metrics"]
