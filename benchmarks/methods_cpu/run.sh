#!/usr/bin/env bash
# MTAN x every multi-task optimisation method on the procedural scenes at CPU scale, 2 seeds,
# with the single-task baselines (Δm primary), then the step cost per method at width 1.
# Usage: bash benchmarks/methods_cpu/run.sh OUT   (about an hour on 2 cores)
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
BIN=${BIN:-.venv/bin}
METHODS=$($BIN/python -c "from densemtl.weighting import list_weightings; print(','.join(m for m in list_weightings() if not m.startswith('_') and m != 'fixed'))")  # fixed = equal with its default weights
mkdir -p "$OUT"
[ -d "$OUT/data" ] || $BIN/densemtl data synth --out "$OUT/data" --train 96 --val 48 --size 64x64 --seed 0
COMMON="--data synthetic --data-root $OUT/data --size 64x64 --width 0.0625 --lr 5e-3 --batch-size 8 --epochs 10
        --last-k 2 --models single,mtan --weightings $METHODS --out $OUT/cmp --no-progress"
# the two seeds as two processes, one core each, into the same folder; then the 2-seed table
OMP_NUM_THREADS=1 $BIN/densemtl compare $COMMON --seed 0 --seeds 1 > "$OUT/log_seed0.txt" 2>&1 &
OMP_NUM_THREADS=1 $BIN/densemtl compare $COMMON --seed 1 --seeds 1 > "$OUT/log_seed1.txt" 2>&1 &
wait
OMP_NUM_THREADS=1 $BIN/densemtl compare $COMMON --seed 0 --seeds 2 > "$OUT/log_table.txt" 2>&1
