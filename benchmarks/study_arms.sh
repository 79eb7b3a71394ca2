#!/usr/bin/env bash
# The study's paper-faithful arms and checks, after `make main` (which writes the cache and the BatchTopK family):
#   1. the ReLU + L1 recipe: L1 coefficients beside BatchTopK at one width (benchmarks/relu_recipe.py);
#   2. the meta-SAE with canon-pl's and the authors' initialisation, at 0.5 and 3 x d_in, with floors;
#   3. the family on text it never saw (benchmarks/held_out_source.py);
#   4. the ReLU + L1 family (configs/family_smollm2_relu.yaml) for ARM_STEPS steps, then its curves beside the
#      BatchTopK family's at equal steps (benchmarks/study_curves.py).
# Each step logs to $LOGS/<step>.log. Usage: bash benchmarks/study_arms.sh [steps...] (default: all four).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
LIGHTNING=${LIGHTNING:-.venv/bin/lightning}
RUN=${RUN:-checkpoints/family_smollm2}
CACHE=${CACHE:-checkpoints/cache_smollm2_l6}
LOGS=${LOGS:-checkpoints/study_arms_logs}
L1=${L1:-"1.5 3"}
ARM_STEPS=${ARM_STEPS:-750}
mkdir -p "$LOGS"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(relu meta source family)
for step in "${steps[@]}"; do
  echo "== $step ($(date -u +%H:%M:%S))"
  case $step in
    relu)   $PYTHON benchmarks/relu_recipe.py --cache "$CACHE" --width 2304 --steps 300 --coefficients $L1 ;;
    meta)   $PYTHON benchmarks/meta_width_sweep.py "$RUN/2304" --multiples 0.5 3 --steps 1000 --inits canon authors ;;
    source) $PYTHON benchmarks/held_out_source.py "$RUN" --cache "$CACHE" --tokens 32768 ;;
    family) $LIGHTNING fit --config configs/family_smollm2_relu.yaml --trainer.max_steps "$ARM_STEPS" \
              --model.init_args.sae.init_args.l1_warmup_steps $(( ARM_STEPS / 4 )) ${ARM_ARGS:-}
            $PYTHON benchmarks/study_curves.py "$RUN" checkpoints/family_smollm2_relu ;;
    *) echo "unknown step $step (relu, meta, source, family)"; exit 2 ;;
  esac > "$LOGS/$step.log" 2>&1
  tail -n 25 "$LOGS/$step.log"
done
