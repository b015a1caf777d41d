# Device calls of the third perf session (issue 9): bash benchmarks/gpu_run3.sh PART
# (part a's -adamw rows need commit 06c5f2c, where the compiled AdamW still exists)
set -x
source benchmarks/gpu_env.sh
TT="python3 benchmarks/train_throughput.py --steps 10 --warmup 3 --timeout 200"
case "$1" in
a)  # compiled AdamW and the fused-clip A/B on the MoE shape, then 1.7B; HF compile in the same call
  $TT --models 30B-A3B-8L --impls qwen3-trainer-bf16-compile-adamw,qwen3-trainer-bf16-compile,qwen3-trainer-bf16-compile-sepclip,hf-compile --out $OUT/tp_moe.json 2>&1 | grep -v Warning | tail -6
  $TT --models 1.7B --impls qwen3-trainer-bf16-compile-adamw,qwen3-trainer-bf16-compile,hf-compile --out $OUT/tp_17b.json 2>&1 | grep -v Warning | tail -5
  ;;
b)  # MoE without the load-balancing loss (HF's rows compute none); 8B ours vs HF compile at mb 1; 1.7B profile
  $TT --models 30B-A3B-8L --impls qwen3-trainer-bf16-compile-nolbl --out $OUT/tp_moe_nolbl.json 2>&1 | grep -v Warning | tail -2
  $TT --models 8B --mb 1 --impls qwen3-trainer-bf16-compile,hf-compile --out $OUT/tp_8b.json 2>&1 | grep -v Warning | tail -3
  python3 benchmarks/profile_step.py --models 1.7B --out $OUT/prof 2>&1 | tail -4
  ;;
c)  # where the GPU idles (1.7B, MoE); 8B float8 against our bf16 at micro-batch 2 and 1, same call
  python3 benchmarks/profile_step.py --models 1.7B,30B-A3B-8L --mb 1.7B:2,30B-A3B-8L:2 --out $OUT/prof 2>&1 | grep -v Warning | tail -3 | cut -c1-1500
  $TT --models 8B --mb 2 --impls qwen3-trainer-fp8-compile,qwen3-trainer-bf16-compile --out $OUT/tp_8b_mb2.json 2>&1 | grep -v Warning | tail -3
  $TT --models 8B --mb 1 --impls qwen3-trainer-fp8-compile --out $OUT/tp_8b_fp8_mb1.json 2>&1 | grep -v Warning | tail -2
  ;;
d)  # GPU parity of the gather routing + unpadded experts; 1.7B idle accounting
  timeout 200 python3 benchmarks/moe_routing_check.py --out $OUT/moe_routing.json 2>&1 | grep -v Warning | tail -12
  python3 benchmarks/profile_step.py --models 1.7B --mb 2 --out $OUT/prof 2>&1 | grep -v Warning | tail -1 | cut -c1-2500
  ;;
e)  # float8 with the output projection in float8 too: throughput at mb 2 (same call as fp8 and bf16), 100-step loss
  $TT --models 8B --mb 2 --impls qwen3-trainer-fp8-out-compile,qwen3-trainer-fp8-compile,qwen3-trainer-bf16-compile --out $OUT/tp_8b_fp8out.json 2>&1 | grep -v Warning | tail -4
  timeout 300 python3 benchmarks/fp8_loss_check.py --model 8B --steps 100 --impls qwen3-trainer-bf16-compile,qwen3-trainer-fp8-out-compile --out $OUT/fp8out_loss.json 2>&1 | grep -v Warning | tail -8
  ;;
esac
