"""How long the study's stages take: each stage's wall time recorded in the run folder with the machine it ran on
(``<run>/stage_times.json``), and the time a pipeline has left, estimated from the stages it has run so far.

The estimate scales a config's ``reference_seconds`` (each stage's time on the machine the README was timed on) by how
much slower or faster this machine ran the stages behind it: ``left = sum(reference of the stages to come) x
sum(measured) / sum(reference of the measured)``. It is printed after every stage; a config without reference times,
or a run whose first stage was skipped, prints none until a stage with a reference has run here.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from canon_pl.io.atomic import atomic_write_json
from canon_pl.io.layout import RunLayout


def this_machine(device: str) -> dict[str, Any]:
    """What the times were measured on: processor, cores, torch and the analysis device."""
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or None, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": device}


def read_stage_times(run: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``<run>/stage_times.json`` as ``{stage: {"seconds", "finished", "machine"}}`` in the study's order of the
    stages' last runs; empty when absent or unreadable (a record of times is never worth refusing a run over)."""
    try:
        record = json.loads(RunLayout(run).stage_times.read_text())
    except (OSError, ValueError):
        return {}
    stages = record.get("stages") if isinstance(record, dict) else None
    if not isinstance(stages, list):
        return {}
    return {entry["stage"]: {k: v for k, v in entry.items() if k != "stage"} for entry in stages
            if isinstance(entry, dict) and isinstance(entry.get("stage"), str)
            and isinstance(entry.get("seconds"), (int, float))}


def record_stage_time(run: str | os.PathLike, stage: str, seconds: float, machine: dict[str, Any]) -> None:
    """Add (or replace) ``stage``'s time in ``<run>/stage_times.json``, written atomically (a list: the file's JSON
    keys are sorted, the stages keep the order they ran in)."""
    stages = read_stage_times(run)
    stages.pop(stage, None)
    stages[stage] = {"seconds": round(float(seconds), 1), "machine": machine,
                     "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(run).mkdir(parents=True, exist_ok=True)
    atomic_write_json(RunLayout(run).stage_times,
                      {"stages": [{"stage": name, **entry} for name, entry in stages.items()]})


def estimate_left(reference: dict[str, float], measured: dict[str, float],
                  to_come: list[str]) -> tuple[float, float] | None:
    """(seconds the stages ``to_come`` should take here, this machine's pace): their reference times scaled by the
    pace, the ``measured`` stages' time over their reference times; ``None`` when no measured stage has a reference
    time."""
    known = [stage for stage in measured if reference.get(stage)]
    if not known:
        return None
    pace = sum(measured[stage] for stage in known) / sum(reference[stage] for stage in known)
    return pace * sum(reference.get(stage, 0.0) for stage in to_come), pace


def stage_times_lines(run: str | os.PathLike) -> list[str]:
    """The report's section: each stage's recorded time, its share, and the machine it ran on."""
    stages = read_stage_times(run)
    if not stages:
        return []
    total = sum(entry["seconds"] for entry in stages.values())
    machines = {json.dumps(entry.get("machine"), sort_keys=True) for entry in stages.values()}
    lines = ["## How long each stage took", "",
             f"Wall time of each stage the last time it ran (`{RunLayout.STAGE_TIMES}`); {total / 60:.1f} minutes in "
             f"all.", "", "| stage | time | share | finished |", "|---|---|---|---|"]
    lines += [f"| {name} | {entry['seconds']:,.1f} s | {entry['seconds'] / max(total, 1e-9):.1%} | "
              f"{entry.get('finished', '—')} |" for name, entry in stages.items()]
    described = [json.loads(m) for m in machines if m != "null"]
    lines += ["", "Measured on " + "; ".join(
        f"{m.get('machine')} ({m.get('cpus')} CPU cores, {m.get('torch_threads')} torch threads), torch "
        f"{m.get('torch')}, analyses on {m.get('device')}" for m in described) + "." if described else "", ""]
    return lines


__all__ = ["estimate_left", "read_stage_times", "record_stage_time", "stage_times_lines", "this_machine"]
