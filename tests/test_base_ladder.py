"""The meta-SAE's base-width ladder (`canon-pl ladder --bases`) on a tiny config: bases trained to equal firings per
latent (the training ladder's own member where it has that width and step), meta-SAEs on their moved rows against
every floor, one committed file per base never recomputed, and the rule's verdict on known curves."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from canon_pl.commands.base_ladder import base_ladder_verdict, finished_bases
from canon_pl.meta.analysis import FLOOR_NAMES
from tests.helpers import run_here
from tests.test_ladder import ladder_config
from tests.test_pipeline import tiny_configs


def test_bases_train_to_equal_firings_and_each_is_measured_against_every_floor_once(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ladder_config(tmp_path, tiny_configs(tmp_path), "bases", [2])
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["bases"] = {"widths": [1152, 2304], "reference_steps": 2, "reference_width": 1152, "meta_steps": 5,
                    "meta_batch_size": 64, "per_d_in": 0.1, "moved_tau": 0.9999, "k": 2}
    config.write_text(yaml.safe_dump(raw))
    rung = run_here("ladder", "--config", str(config), capsys=capsys)
    assert rung.returncode == 0, rung.stderr[-3000:]
    results = tmp_path / "bases" / "results"
    out = run_here("ladder", "--config", str(config), "--bases", capsys=capsys)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "base 1152: the training ladder's member at step 2" in out.stdout  # equal firings: the rung's own member
    assert "base 2304: training to step 4" in out.stdout  # twice the width, twice the steps
    entries = finished_bases(results)
    assert [(e["width"], e["steps"]) for e in entries] == [(1152, 2), (2304, 4)]
    assert entries[0]["firings_per_latent"] == pytest.approx(entries[1]["firings_per_latent"])
    for e in entries:
        assert 0 < e["rows_moved"] <= e["width"]
        n_metas = sorted(m["n_meta"] for m in e["meta"])
        assert n_metas == sorted({round(e["rows_moved"] / 21), min(58, e["rows_moved"])})  # 21 rows each; 0.1 x d_in
        for m in e["meta"]:
            assert set(FLOOR_NAMES) <= {k for k, v in m["floors"].items() if isinstance(v, float)}
            assert m["excess_over_highest_floor"] == pytest.approx(m["fve"] - m["highest_floor"])
    # a base validates once, at its last step (its figures are measured after training)
    with open(tmp_path / "bases" / "run" / "base_2304" / "logs" / "version_0" / "metrics.csv") as log:
        validated = [row for row in csv.DictReader(log) if any(v for k, v in row.items() if "val/" in k)]
    assert [row["step"] for row in validated] == ["3"]  # Lightning logs the step before the last one's increment
    verdict, why = base_ladder_verdict(entries)
    assert verdict in ("supported", "refuted", "inconclusive") and "per doubling" in why
    summary = (results / "summary.md").read_text()  # redrawn: the bases' table and the rule's verdict
    assert "### The meta-SAE's base-width ladder" in summary and f"**{verdict}**" in summary
    again = run_here("ladder", "--config", str(config), "--bases", capsys=capsys)
    assert again.returncode == 0 and again.stdout.count("committed, skipped") == 2


def test_the_base_ladder_rule_on_known_curves() -> None:
    from canon_pl.commands.base_ladder import base_ladder_verdict

    def entry(width: int, excess: float) -> dict:
        return {"width": width, "meta": [{"n_meta": width // 21, "excess_over_highest_floor": excess},
                                         {"n_meta": 1728, "excess_over_highest_floor": 0.0}]}

    assert base_ladder_verdict([entry(2304, 0.0), entry(4608, 0.04), entry(9216, 0.08)])[0] == "supported"
    assert base_ladder_verdict([entry(2304, 0.08), entry(9216, 0.11)])[0] == "supported"  # reaches 0.10
    assert base_ladder_verdict([entry(2304, 0.01), entry(4608, -0.01), entry(9216, 0.015)])[0] == "refuted"
    assert base_ladder_verdict([entry(2304, 0.03), entry(9216, 0.05)])[0] == "inconclusive"
    assert base_ladder_verdict([entry(2304, 0.03)])[0] == "inconclusive"
