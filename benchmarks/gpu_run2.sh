# Device calls of the second perf session (issue 9): bash benchmarks/gpu_run2.sh PART
set -x
source benchmarks/gpu_env.sh
TT="python3 benchmarks/train_throughput.py --steps 5 --warmup 3 --timeout 300"
case "$1" in
moe)  # MoE routing parity + layer time; MoE shape HF vs ours old/new (same call); profiles
  python3 benchmarks/moe_routing_check.py --out $OUT/moe_routing.json 2>&1 | tail -25
  $TT --models 30B-A3B-8L --impls qwen3-trainer-bf16-compile,qwen3-trainer-bf16-compile-titanmoe,hf-eager --out $OUT/tp_moe.json 2>&1 | grep -v Warning | tail -8
  python3 benchmarks/profile_step.py --models 30B-A3B-8L,8B --out $OUT/prof 2>&1 | tail -4
  timeout 170 $TT --timeout 160 --models 30B-A3B-8L --impls hf-compile --out $OUT/tp_moe_hfcompile.json 2>&1 | grep -v Warning | tail -3
  ;;
fp8)
  python3 benchmarks/fp8_loss_check.py --model 8B --steps 100 --out $OUT/fp8_loss.json 2>&1 | tail -20
  python3 benchmarks/profile_step.py --models 1.7B --out $OUT/prof 2>&1 | tail -4
  ;;
final)  # after the fused-clip change: MoE and 1.7B against HF compile in one call, then float8 loss
  $TT --models 30B-A3B-8L,1.7B --impls qwen3-trainer-bf16-compile,hf-compile --out $OUT/tp_final.json 2>&1 | grep -v Warning | tail -8
  timeout 330 python3 benchmarks/fp8_loss_check.py --model 8B --steps 100 --out $OUT/fp8_loss.json 2>&1 | grep -v Warning | tail -12
  ;;
dense)
  $TT --models 1.7B,8B --mb 1.7B:2,8B:1 --impls hf-compile,qwen3-trainer-bf16-compile,hf-eager --out $OUT/tp_dense.json 2>&1 | grep -v Warning | tail -8
  python3 benchmarks/profile_step.py --models 1.7B,8B --out $OUT/prof 2>&1 | tail -4
  ;;
esac
