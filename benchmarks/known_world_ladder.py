"""Every instrument against the truth over training, on the known-answer world of the study's shape (issue 52).

The study's family on `configs/family_known_world.yaml` (3,328 true features in 576 dimensions, never a repeated
token) is trained rung by rung in its own run folder; at each rung its export is kept under `<run>/rungs/<steps>/`
and every instrument is scored against the truth (`canon_pl.calibration.score.score_family`): what each width holds
of the truth, the stitching classification's precision and recall, matched consistency against the truth's share,
the study's verdicts against the truth's, the meta-SAE on the widest decoder. Each rung writes one small JSON,
`results/calibration/study_shape/rung_<steps>.json`, committed and never recomputed; an interrupted rung resumes
from the run's newest checkpoint. A rung of 500 steps takes about 10 minutes on 2 CPU cores.

    python benchmarks/known_world_ladder.py [--rungs 500 1000 1500] [--run checkpoints/family_known_world]

The last line is `ratio: <number>`: at the last rung, the matched share across seeds among the widest member's latents
that are true directions, over the truth's share (1.0: the consistency instrument reads what is there).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "family_known_world.yaml"
RESULTS = REPO / "results" / "calibration" / "study_shape"


def rung_family(run: Path, steps: int) -> Path:
    """The family exported at ``steps`` (trained there from the run's newest checkpoint when not kept yet)."""
    from canon_pl.cli.lightning import run_lightning_cli
    from canon_pl.commands.derived_config import resume_arguments

    kept = run / "rungs" / str(steps)
    if (kept / "family.json").is_file():
        return kept
    run_lightning_cli(["fit", "--config", str(CONFIG), "--trainer.max_steps", str(steps),
                       "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
                       *resume_arguments(run)])
    staging = kept.with_name(f"{steps}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run, staging, ignore=shutil.ignore_patterns("ckpt", "logs", "rungs", "*.partial"))
    staging.rename(kept)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rungs", type=int, nargs="+", default=[500, 1000, 1500])
    parser.add_argument("--run", default=str(REPO / "checkpoints" / "family_known_world"))
    parser.add_argument("--meta-steps", type=int, default=300)
    args = parser.parse_args()
    from canon_pl.calibration.score import score_family

    RESULTS.mkdir(parents=True, exist_ok=True)
    run = Path(args.run)
    last = None
    for steps in sorted(args.rungs):
        path = RESULTS / f"rung_{steps}.json"
        if not path.is_file():
            started = time.perf_counter()
            family = rung_family(run, steps)
            trained = time.perf_counter() - started
            scored = score_family(family, held_out_tokens=16_384, meta_steps=args.meta_steps)
            scored.update({"steps": steps, "tokens": steps * 4096, "date": date.today().isoformat(),
                           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                           "seconds": {"train_and_export": trained,
                                       "score": time.perf_counter() - started - trained}})
            path.write_text(json.dumps(scored, indent=1, default=float) + "\n")
        last = json.loads(path.read_text())
        held = {w: round(m["features_held"], 3) for w, m in last["members"].items()}
        print(f"rung {steps} ({steps * 4096 / 1e6:.1f}M tokens): true features held {held}")
        for pair in last["pairs"]:
            d, c = pair["definition"], pair["consistency"]
            print(f"  {pair['small']} -> {pair['large']}: truth novel {pair['truth_novel_fraction']:.1%} (other seed "
                  f"{pair['truth_control_novel_fraction']:.1%}); the definition says "
                  f"{pair['study']['novel_fraction_definition']:.1%} (other seed "
                  f"{pair['study']['control_novel_fraction_definition']:.1%}); its calls: novel P "
                  f"{d['novel']['precision']} R {d['novel']['recall']}; consistency on truth "
                  f"{c['shared_on_truth']:.1%} vs the truth's {c['truth_shared']:.1%}")
        print(f"  verdicts: study {last['verdicts']}, truth {last['truth_verdicts']}; meta-SAE excess "
              f"{last['meta']['excess']:+.3f}")
    c = last["pairs"][-1]["consistency"]
    print(f"ratio: {c['shared_on_truth'] / c['truth_shared']:.3f}")


if __name__ == "__main__":
    main()
