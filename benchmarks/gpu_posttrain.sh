# One device call on nvidia-h200 (issue 18, item 7): the single-gpu preset's GRPO (T2) and on-policy
# distillation (D, 8B teacher -> 0.6B student) at real size; results to $OUT. Carry .whl (gpu_env.sh's
# set plus math-verify, latex2sympy2-extended, antlr4-python3-runtime).
set -x -o pipefail
source benchmarks/gpu_env.sh
export OMP_NUM_THREADS=4
timeout $((${LIMIT:-560} - SECONDS)) python3 benchmarks/posttrain_gpu.py --budget-s $((${LIMIT:-560} - SECONDS - 20)) \
  --out "$OUT/$(date +%F)-h200-posttrain.json" 2>&1 | grep -v Warning | tail -60
