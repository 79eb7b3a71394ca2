"""Read-only access to runs under ``checkpoints/`` for the Streamlit viewer (no Streamlit imports here)."""

from canon_pl.viewer.runs import RunSummary, find_runs, member_metrics, read_metrics

__all__ = ["RunSummary", "find_runs", "member_metrics", "read_metrics"]
