"""Benchmarks stay runnable and keep their contract: the last line is `ratio: <number>`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


STARTS_PROCESSES = {"bench_stitch.py", "bench_ddp.py", "run_folder_size.py"}
"""Scripts that start processes of their own (peak memory per arm, DDP ranks, ``lightning fit``): run as a process.
The others run in the test's own interpreter as ``python benchmarks/<script>`` would run them (``__main__``, their
folder first on ``sys.path``): a fresh interpreter would import torch and Lightning again for each."""


def run_benchmark(script: str, *args: str, timeout: int = 300) -> list[str]:
    """Run ``benchmarks/<script>`` with ``args``; its output lines, after checking it ends with ``ratio: <number>``."""
    path = REPO / "benchmarks" / script
    if script in STARTS_PROCESSES:
        result = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stderr[-2000:]
        stdout = result.stdout
    else:
        stdout = run_in_this_process(path, list(args))
    lines = stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d+", lines[-1])
    return lines


def run_in_this_process(path: Path, args: list[str]) -> str:
    """``python <path> <args>`` in this interpreter: its standard output (a non-zero exit fails the test)."""
    import contextlib
    import io
    import runpy

    out = io.StringIO()
    argv, sys_path = sys.argv[:], sys.path[:]
    sys.argv, sys.path[:0] = [str(path), *args], [str(path.parent)]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code in (None, 0), f"{path.name} exited {exit_.code}: {out.getvalue()[-2000:]}"
    finally:
        sys.argv, sys.path[:] = argv, sys_path
    return out.getvalue()


def test_bench_sae_step_runs_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_sae_step.py", "--quick")
    assert any("one-matmul limit" in line for line in lines)


def test_bench_relu_step_compares_the_sparse_and_dense_relu_steps_at_the_same_l0() -> None:
    """Both canon-pl kernels start from the same weights: after the same steps they fire on the same latents."""
    lines = run_benchmark("bench_relu_step.py", "--quick")
    assert any(line.startswith("one-matmul limit") for line in lines)
    kernels = [line for line in lines if line.startswith("canon-pl ReLU + L1 step")]
    assert len(kernels) == 2 and kernels[0].rsplit(None, 1)[-1] == kernels[1].rsplit(None, 1)[-1]


def test_bench_lightning_overhead_runs_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_lightning_overhead.py", "--steps", "3")
    assert any(line.startswith("bare PyTorch loop") for line in lines)


def test_bench_stitch_runs_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_stitch.py", "--quick")
    assert any(line.startswith("chunked") and "8192 x 4096" in line for line in lines)


def test_bench_meta_sae_runs_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_meta_sae.py", "--steps", "1", "--base", "4096")
    assert any(line.startswith("meta-SAE") for line in lines)


def test_bench_stats_runs_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_stats.py", "--contexts", "4", "--per-forward", "2", "--widths", "64", "128")
    assert any(line.startswith("statistics pass") for line in lines)


def test_bench_viewer_times_every_page_and_ends_with_a_ratio(tmp_path: Path) -> None:
    from tests.viewer_data import build_analysed_run

    root = build_analysed_run(tmp_path)["root"]
    lines = run_benchmark("bench_viewer.py", "--checkpoints", str(root), "--query", "PLANTED", "--warm-visits", "1",
                          timeout=600)
    assert {line.split()[0] for line in lines} >= {"Runs", "Stitching", "Latent", "Meta-latent", "Search"}


def test_bench_step_mfu_reports_the_fraction_of_peak_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_step_mfu.py", "--quick")
    assert sum("TFLOP/s" in line for line in lines) >= 2


def test_bench_ddp_compares_one_process_with_two_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_ddp.py", "--quick")
    assert any(line.startswith("one device") for line in lines) and any("ddp" in line for line in lines)


def test_a_run_folder_holds_each_checkpoint_once() -> None:
    """The shipped configs' ``save_last: link``: ``last.ckpt`` is a link to the newest step checkpoint, so the
    checkpoint folder holds half the bytes of Lightning's copying default (the exports are the same either way)."""
    lines = run_benchmark("run_folder_size.py")
    sizes = {line.split()[1]: line for line in lines if line.startswith("save_last:")}
    assert set(sizes) == {"link", "copy"}
    ckpt = {label: float(line.split("ckpt/ ")[1].split()[0]) for label, line in sizes.items()}
    assert ckpt["link"] == pytest.approx(ckpt["copy"] / 2, rel=0.02)
    assert float(lines[-1].split()[-1]) < 0.8


def test_bench_evaluate_times_the_core_metrics_beside_the_ev_pass_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_evaluate.py", "--tokens", "8192")
    assert any(line.startswith("SAEBench core metrics") for line in lines)
    assert any(line.startswith("co-firing counts 2304 x 2304_seed1") for line in lines)


def test_bench_path_scores_every_group_both_ways_and_ends_with_a_ratio() -> None:
    lines = run_benchmark("bench_path.py", "--quick")
    assert any(line.startswith("all groups scored, old") for line in lines)
    assert "gains agree" in "\n".join(lines)


def test_bench_stitch_floor_times_each_step_of_the_stage_beside_its_encoder_passes() -> None:
    lines = run_benchmark("bench_stitch_floor.py", "--quick")
    steps = {line.split()[0] for line in lines if line[:1].isalpha() and len(line.split()) == 4}
    assert {"stitching_path", "classify_latents", "granularity_curve", "definition_chunk_spread"} <= steps
    assert any(line.startswith("the floor (each SAE's codes") for line in lines)


def test_bench_calibrate_times_the_fits_and_the_scoring_of_the_calibrate_stage() -> None:
    lines = run_benchmark("bench_calibrate.py", "--steps", "10", "--meta-steps", "2")
    phases = {line.rsplit(None, 2)[0] for line in lines if line.endswith("%")}
    assert {"fit (both worlds)", "scoring (both worlds)", "meta-SAE on the true dictionaries"} <= phases
