#!/usr/bin/env bash
# The study's stitch stage (canon-pl stitch <family> --data <cache> --tokens 131072 --granularity) timed at two
# revisions of canon-pl, one after the other, on the same family and held-out tokens.
# Usage: benchmarks/stitch_stage_time.sh <family folder> <activation cache> <old revision> [new revision, default HEAD]
# Each revision runs from a git worktree under /tmp (PYTHONPATH), writing its results under /tmp/stitch_stage_<rev>.
# Ends with "ratio: <old seconds / new seconds>".
set -euo pipefail
family=$1; cache=$2; old=$3; new=${4:-HEAD}
repo=$(cd "$(dirname "$0")/.." && pwd)
declare -A seconds
for rev in "$old" "$new"; do
  tree=/tmp/stitch_stage_tree_$rev
  rm -rf "$tree" "/tmp/stitch_stage_$rev"; git -C "$repo" worktree prune
  git -C "$repo" worktree add -q --detach "$tree" "$rev"
  start=$(date +%s.%N)
  PYTHONPATH=$tree "$repo/.venv/bin/canon-pl" stitch "$family" --data "$cache" --tokens 131072 --granularity \
    --out "/tmp/stitch_stage_$rev" > "/tmp/stitch_stage_$rev.log" 2>&1
  seconds[$rev]=$(python3 -c "import time; print(round(time.time() - $start, 1))")
  git -C "$repo" worktree remove --force "$tree"
  echo "$rev: ${seconds[$rev]} s ($(grep -c 'novel' "/tmp/stitch_stage_$rev.log") result lines; log /tmp/stitch_stage_$rev.log)"
done
for pair in /tmp/stitch_stage_"$new"/*.json; do
  python3 - "$pair" "/tmp/stitch_stage_$old/$(basename "$pair")" <<'PY'
import json, sys
new, old = (json.load(open(p)) for p in sys.argv[1:])
keys = ("novel_fraction", "path_excess", "path_monotone_fraction")
print(sys.argv[1].rsplit("/", 1)[1], {k: (old.get(k), new.get(k)) for k in keys})
PY
done
python3 -c "print(f'ratio: {${seconds[$old]} / ${seconds[$new]}:.2f}')"
