"""Benchmarks stay runnable and keep their contract: the last line is `ratio: <number>`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_sae_step_runs_and_ends_with_a_ratio() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_sae_step.py"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d+", lines[-1])
    assert any("one-matmul limit" in line for line in lines)


def test_bench_lightning_overhead_runs_and_ends_with_a_ratio() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_lightning_overhead.py"), "--steps", "3"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d+", lines[-1])
    assert any(line.startswith("bare PyTorch loop") for line in lines)


def test_bench_stitch_runs_and_ends_with_a_ratio() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_stitch.py"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d+", lines[-1])
    assert any(line.startswith("chunked") and "8192 x 4096" in line for line in lines)


def test_bench_meta_sae_runs_and_ends_with_a_ratio() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_meta_sae.py"), "--steps", "1",
                             "--base", "4096"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d+", lines[-1])
    assert any(line.startswith("meta-SAE") for line in lines)


def test_bench_stats_runs_and_ends_with_a_ratio() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_stats.py"), "--contexts", "4",
                             "--per-forward", "2", "--widths", "64", "128"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d+", lines[-1])
    assert any(line.startswith("statistics pass") for line in lines)


def test_bench_viewer_times_every_page_and_ends_with_a_ratio(tmp_path: Path) -> None:
    from tests.viewer_data import build_analysed_run

    root = build_analysed_run(tmp_path)["root"]
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_viewer.py"), "--checkpoints", str(root),
                             "--query", "PLANTED"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d+", lines[-1])
    assert {line.split()[0] for line in lines} >= {"Runs", "Stitching", "Latent", "Meta-latent", "Search"}


def test_bench_step_mfu_reports_the_fraction_of_peak_and_ends_with_a_ratio() -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_step_mfu.py"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d+", lines[-1])
    assert sum("TFLOP/s" in line for line in lines) >= 2
