#!/usr/bin/env bash
# The test suite in one process and in TEST_WORKERS pytest-xdist workers (what `make test` runs), one after the
# other on this machine, nothing else running: `bash benchmarks/test_suite_workers.sh` after `make setup browser`.
# Ends with `ratio:` one process's wall time over the workers'.
set -euo pipefail
cd "$(dirname "$0")/.."
workers="${TEST_WORKERS:-2}"
run() {
  local start end
  start=$(date +%s)
  .venv/bin/pytest -q -n "$1" --dist loadfile -p no:cacheprovider >"/tmp/canon_pl_suite_$1.log" 2>&1 || {
    tail -20 "/tmp/canon_pl_suite_$1.log"; exit 1; }
  end=$(date +%s)
  echo $((end - start))
}
one=$(run 0)
many=$(run "$workers")
echo "one process: ${one} s; ${workers} workers: ${many} s"
python3 -c "print(f'ratio: {$one / $many:.2f}')"
