# Device calls for issues 21 and 19 on nvidia-h200 (`auto`: whichever card comes, H200 or H100):
#   bash benchmarks/gpu_run5.sh PART        (LIMIT: the call's seconds, less a margin; default 570)
# Each part fits one call; results land in $OUT with today's date.
set -x -o pipefail
[[ $PYTHONPATH == /tmp/pkg:* ]] || source benchmarks/gpu_env.sh  # once, also for a nested part
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$card" in *H200*) card=h200 ;; *H100*) card=h100 ;; *) card=$(echo "$card" | tr -cs 'A-Za-z0-9' '-' | tr A-Z a-z) ;; esac
D=$(date +%F)-${card%-}
left() { local t=$((${LIMIT:-570} - SECONDS)); echo $((t > 1 ? t : 1)); }
case "$1" in
moe)  # issue 21: the MoE rows at mb 4 first (ours was never timed there), then the A/B of this session's changes
  timeout $(left) python3 benchmarks/train_throughput.py --peers --models 30B-A3B-8L --budget-s 300 \
    --out $OUT/$D-peers-moe.json 2>&1 | grep -v Warning
  timeout $(left) python3 benchmarks/train_throughput.py --models 30B-A3B-8L --mb 4 \
    --impls qwen3-trainer-bf16-compile-regions,qwen3-trainer-bf16-compile-adamw-compiled \
    --out $OUT/$D-moe-ab.json 2>&1 | grep -v Warning
  ;;
dense)  # issue 21: the compiled optimizer step at 1.7B (pure bf16 and FSDP mixed), beside the default rows
  timeout $(left) python3 benchmarks/train_throughput.py --models 1.7B --mb 4 \
    --impls qwen3-trainer-bf16-compile,qwen3-trainer-bf16-compile-adamw-compiled,qwen3-trainer-fsdp-mixed-compile,qwen3-trainer-fsdp-mixed-compile-adamw-compiled \
    --out $OUT/$D-optim-ab.json 2>&1 | grep -v Warning
  ;;
decode)  # issue 19: the fp8 KV cache beside the default engine at 0.6B b32 / b256, then the GEMM-tuning A/B
  for b in 32 256; do
    for kv in auto float8_e4m3fn; do
      timeout $(left) python3 benchmarks/decode_throughput.py --flavor 0.6B --device cuda --dtype bfloat16 \
        --batch $b --kv-dtype $kv --out $OUT/$D-decode-b$b-$kv.json 2>&1 | grep -v Warning | tail -3
    done
  done
  timeout $(left) python3 benchmarks/decode_diag.py --parts options --options default,max_autotune_gemm,coordinate_descent \
    --out $OUT/$D-decode-options.json 2>&1 | grep -v Warning
  ;;
auto)  # one call on whichever card comes: the H200 tables of issues 19 and 21 (decode with the fp8 rows, then the
       # 1.7B peers with the float8 rows), or on an H100 the part H100_PART names (default: `fp8` below)
  if [[ $D == *h200 ]]; then  # the tables of record; the loop columns come with the peers rows
    timeout $(left) python3 benchmarks/decode_throughput.py --suite h200 --out $OUT/$D-decode.json 2>&1 \
      | grep -v Warning | tail -25
    timeout $(left) python3 benchmarks/train_throughput.py --peers --models 1.7B --mb 1.7B:4 \
      --impls qwen3-trainer-bf16-compile,torchtitan-bf16-compile,hf-compile,qwen3-trainer-fp8-compile,torchtitan-fp8-compile \
      --budget-s $(($(left) - 25)) --out $OUT/$D-peers-1.7B.json 2>&1 | grep -v Warning | tail -25
  else  # on an H100 (the HF ratios and the fp8 KV agreement were taken there in session 14)
    LIMIT=$(left) bash benchmarks/gpu_run5.sh ${H100_PART:-fp8}
  fi
  ;;
loop)  # issue 21, session 15: the step that queues the next before reading its numbers (Trainer.launch_step):
       # 1.7B and MoE ours vs torchtitan, per-step and back-to-back loop timing, host syncs per loop step;
       # then both profiled in that loop order
  timeout $(left) python3 benchmarks/train_throughput.py --peers --models 1.7B,30B-A3B-8L \
    --impls qwen3-trainer-bf16-compile,torchtitan-bf16-compile --mb 1.7B:4,30B-A3B-8L:4 \
    --budget-s $(($(left) - 120)) --out $OUT/$D-peers-loop.json 2>&1 | grep -v Warning | tail -12
  timeout $(left) python3 benchmarks/profile_step.py --models 1.7B,30B-A3B-8L --mb 1.7B:4,30B-A3B-8L:4 --steps 3 --warmup 3 \
    --out $OUT/prof 2>&1 | grep -v Warning | tail -30
  ;;
fp8)  # issue 21, session 16: float8 linears, ours against torchtitan's own float8 converter (the same precision),
      # beside both bf16 rows of the same call; MODELS (default 1.7B) and MB pick the shapes
  timeout $(left) python3 benchmarks/train_throughput.py --models ${MODELS:-1.7B} --mb ${MB:-1.7B:4,8B:1} \
    --impls qwen3-trainer-fp8-compile,torchtitan-fp8-compile,qwen3-trainer-bf16-compile,torchtitan-bf16-compile \
    --budget-s $(($(left) - ${PROFILE_S:-150})) --out $OUT/$D-peers-fp8-$(echo ${MODELS:-1.7B} | tr , -).json 2>&1 \
    | grep -v Warning | tail -12
  m=${MODELS:-1.7B}; m=${m%%,*}  # then our float8 row of the first model profiled, in fit's order
  timeout $(left) python3 benchmarks/profile_step.py --models $m --mb ${MB:-1.7B:4,8B:1} --steps 3 --warmup 3 \
    --impls qwen3-trainer-fp8-compile --out $OUT/prof 2>&1 | grep -v Warning | tail -30
  ;;
decode_opts)  # issue 19, session 16: the fp8 KV cache with and without inductor's combo kernels, b32 / b256
  timeout $(left) python3 benchmarks/decode_diag.py --parts options \
    --options default,fp8_kv,combo_kernels,fp8_kv_combo_kernels --out $OUT/$D-decode-options-fp8kv.json 2>&1 | grep -v Warning
  ;;
*) echo "usage: bash benchmarks/gpu_run5.sh moe|dense|decode|auto|loop|fp8|decode_opts"; exit 2 ;;
esac
