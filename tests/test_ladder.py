"""`canon-pl ladder` on a tiny config: each rung's figures are committed once, the curves are drawn, an interrupted
rung (SIGKILL while training) resumes to the same result as an uninterrupted ladder, and a bad config is refused
before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from canon_pl.commands.ladder import RUNG, finished_rungs, read_ladder_config
from canon_pl.errors import SettingError
from tests.helpers import REPO, run_here
from tests.test_pipeline import tiny_configs


def ladder_config(root: Path, pipeline: Path, name: str, rungs: list[int], cache: dict | None = None) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"pipeline": str(pipeline), "run": str(root / name / "run"),
                                    "results": str(root / name / "results"), "rungs": rungs, "tokens": 512,
                                    **({"cache": cache} if cache else {})}))
    return path


def figures(document: dict) -> dict:
    """The measured figures of a rung (not its wall time, date or where it resumed from)."""
    return {k: v for k, v in document.items() if k in ("steps", "tokens", "members", "pairs")}


def assert_close(got: object, want: object, where: str = "") -> None:
    """Nested dicts / lists equal, floats to a relative 1e-5."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), where
    else:
        assert got == want, where


def test_the_ladder_commits_each_rung_once_and_a_killed_rung_resumes_to_the_same_result(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = tiny_configs(tmp_path)
    monkeypatch.chdir(tmp_path)

    def ladder_here(config: Path, *flags: str) -> tuple[int, str, str]:
        done = run_here("ladder", "--config", str(config), *flags, capsys=capsys)
        return done.returncode, done.stdout, done.stderr

    from pydoc_data.topics import topics

    notes = tmp_path / "notes"  # another text than the pipeline's: a folder of files
    notes.mkdir()
    for name in sorted(topics)[:40]:
        (notes / f"{name}.txt").write_text(topics[name])
    own_cache = {"path": str(tmp_path / "own_cache"), "config": str(tmp_path / "capture.yaml"), "text": str(notes),
                 "tokens": 4096, "val_tokens": 1024, "piece_documents": 3}  # a cache of its own, in pieces
    reference = ladder_config(tmp_path, pipeline, "reference", [2, 6], own_cache)
    code, _, err = ladder_here(reference)
    assert code == 0, err[-3000:]
    index = json.loads((tmp_path / "own_cache" / "index.json").read_text())
    assert index["metadata"]["text"] == str(notes) and len(index["pieces"]) > 1 and not (tmp_path / "cache").exists()
    trained_on = json.loads((tmp_path / "reference" / "run" / "576" / "cfg.json").read_text())
    assert trained_on["data"]["text"] == str(notes)  # the family read the ladder's cache, not the pipeline's
    results = tmp_path / "reference" / "results"
    documents = finished_rungs(results)
    assert [d["steps"] for d in documents] == [2, 6] and documents[1]["tokens"] == 6 * 256
    for d in documents:
        assert sorted(d["members"]) == ["1152", "1152_seed1", "576"]
        for member in d["members"].values():
            assert 0 < member["l0_held_out"] and -1 < member["ev_held_out"] <= 1 and -1 < member["ev_training"] <= 1
            assert member["rows_at_init"] is not None
        (pair,) = d["pairs"]
        assert (pair["small"], pair["large"]) == (576, 1152) and pair["control_definition"] is not None
        assert 0 <= pair["replicate_definition"] <= 1 and 0 <= pair["replicate_control_definition"] <= 1
        assert pair["consistency"]["n_smaller"] == 576 and pair["control_consistency"]["n_smaller"] == 1152
        assert pair["path_peak_over_worse_endpoint"] == pytest.approx(1 + pair["path_excess"])
    assert documents[0]["members"] != documents[1]["members"]  # the second rung trained on
    assert (results / "curves.png").stat().st_size > 5000
    summary = (results / "summary.md").read_text()
    assert "## Does scale close the gap?" in summary and "Monotone path, 576 → 1152" in summary
    from canon_pl.study.report import _ladder_lines  # the study's report carries the same section, figure beside it

    report_figures = tmp_path / "report_figures"
    report_figures.mkdir()
    section = "\n".join(_ladder_lines(results, report_figures))
    assert "## Does scale close the gap?" in section and "](report/curves.png)" in section
    assert (report_figures / "curves.png").stat().st_size > 5000 and not (report_figures / "summary.md").exists()

    # a committed rung is never recomputed: a re-run climbs nothing and leaves the files as they were
    stamps = {p.name: p.stat().st_mtime_ns for p in results.glob("rung_*.json")}
    code, out, _ = ladder_here(reference)
    assert code == 0 and "2 of 2 rungs committed" in out and "0 to climb" in out
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("rung_*.json")} == stamps

    code, out, err = ladder_here(reference, "--draw")
    assert code == 0 and "redrew" in out and "Epoch" not in err
    assert "the same path between two seeds of 1152 goes from" in (results / "summary.md").read_text()

    # measured again from the kept families (no training): the same figures, the rung's training record kept
    code, out, err = ladder_here(reference, "--remeasure")
    assert code == 0, err[-3000:]
    assert "Epoch" not in err and out.count("measured again") == 2
    again_documents = finished_rungs(results)
    assert_close([figures(d) for d in again_documents], [figures(d) for d in documents])
    assert [d["wall_seconds"]["train"] for d in again_documents] == [d["wall_seconds"]["train"] for d in documents]

    # the same ladder, killed (SIGKILL) once rung 6 has a checkpoint past rung 2, then run again
    killed = ladder_config(tmp_path, pipeline, "killed", [2, 6], own_cache)  # the same cache, already written
    import torch

    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}  # as this process trains the rest: the same sums
    process = subprocess.Popen([str(Path(sys.executable).parent / "canon-pl"), "ladder", "--config", str(killed)],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env={**os.environ, **threads})
    ckpt = tmp_path / "killed" / "run" / "ckpt"
    deadline = time.monotonic() + 300
    while not list(ckpt.glob("*step=4*.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "results" / "rung_6.json").exists(), "killed too late to test a resume"
    code, out, err = ladder_here(killed)
    assert code == 0, err[-3000:]
    assert "resuming from" in out
    got = finished_rungs(tmp_path / "killed" / "results")
    assert_close([figures(d) for d in got], [figures(d) for d in documents])


def test_a_bad_ladder_config_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = tiny_configs(tmp_path)
    for rungs, words in (([6, 2], "increasing"), ([], "increasing"), ([0, 2], "positive"), ("5", "increasing")):
        with pytest.raises(SettingError, match=words):
            read_ladder_config(ladder_config(tmp_path, pipeline, "bad", rungs))
    config = ladder_config(tmp_path, pipeline, "bad", [2])
    raw = yaml.safe_load(config.read_text())
    raw["run"] = str(tmp_path / "checkpoints" / "tiny")  # the study's own run folder
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingError, match="folder of its own"):
        read_ladder_config(config)
    monkeypatch.chdir(tmp_path)
    out = run_here("ladder", "--config", str(config), capsys=capsys)
    assert out.returncode == 2 and "folder of its own" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # refused before the cache stage


def test_a_damaged_committed_rung_is_an_error_naming_it_not_silently_redone(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = tiny_configs(tmp_path)
    config = ladder_config(tmp_path, pipeline, "damaged", [2])
    results = tmp_path / "damaged" / "results"
    results.mkdir(parents=True)
    (results / "rung_2.json").write_text('{"format": "canon_pl.ladder_rung", "format_version": 1, "steps": ')
    monkeypatch.chdir(tmp_path)
    out = run_here("ladder", "--config", str(config), capsys=capsys)
    assert out.returncode == 2 and "rung_2.json" in out.stderr and "delete it" in out.stderr
    assert not (tmp_path / "cache").exists()
    assert RUNG.format == "canon_pl.ladder_rung"


@pytest.mark.parametrize("edit, message", [
    ({"steps": None}, "'steps' must be int, got None"),
    ({"steps": 4}, "it says steps 4 but its name says 2"),
    ({"pairs": "none"}, "'pairs' must be list"),
])
def test_an_edited_committed_rung_is_refused_naming_it(tmp_path: Path, edit: dict, message: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    from canon_pl.cli import main

    pipeline = tiny_configs(tmp_path)
    config = ladder_config(tmp_path, pipeline, "edited", [2])
    results = tmp_path / "edited" / "results"
    results.mkdir(parents=True)
    rung = RUNG.stamp({"steps": 2, "tokens": 512, "members": {}, "pairs": [], **edit})
    (results / "rung_2.json").write_text(json.dumps(rung))
    assert main(["ladder", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "rung_2.json" in err and message in err and "delete it to measure the rung again" in err
    assert "Traceback" not in err and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name, tokens", [("ladder_smollm2.yaml", 24_000_000), ("gpu/ladder_smollm2_gpu.yaml", 9e7),
                                          ("ladder_smollm2_docs.yaml", 1e8)])
def test_the_shipped_ladder_configs_parse_and_reach_their_token_counts(name: str, tokens: float,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = read_ladder_config(REPO / "configs" / name)
    assert cfg.rungs[-1] * cfg.batch_size >= tokens
    assert all(r % cfg.checkpoint_every == 0 for r in cfg.rungs)


def test_convergence_is_read_where_two_seeds_stop_agreeing_more_with_training() -> None:
    """The plateau rule: the first rung where, for every width, the share of latents its other seed holds rose by
    less than 2 points per doubling of training since the rung before."""
    from canon_pl.study.ladder_results import consistency_plateau

    def rung(tokens: int, shares: dict[int, float]) -> dict:
        return {"tokens": tokens, "pairs": [{"large": width, "control_consistency": {"shared_at": {"0.7": share}}}
                                            for width, share in shares.items()]}

    rising = [rung(2**20 * 2**i, {1152: 0.1 * (i + 1), 2304: 0.08 * (i + 1)}) for i in range(4)]
    assert consistency_plateau(rising)[0] is None and "+10.0 points per doubling" in consistency_plateau(rising)[1]
    one_still_rising = rising + [rung(2**24, {1152: 0.41, 2304: 0.35})]  # 2304 rose 3 points: not yet
    assert consistency_plateau(one_still_rising)[0] is None
    flat = one_still_rising + [rung(2**25, {1152: 0.415, 2304: 0.36})]
    assert consistency_plateau(flat)[0] == 2**25
    assert consistency_plateau(rising[:1])[0] is None
