# Device calls of issue 10 on nvidia-h200-x2 (2 GPUs of one host): bash benchmarks/gpu_run4.sh PART
# NVLink multicast stays off (the machine's NCCL_NVLS_ENABLE=0 etc. pass through to every process).
set -x -o pipefail
source benchmarks/gpu_env.sh
export OMP_NUM_THREADS=4
MG="python3 benchmarks/multigpu.py"
left() { local t=$((${LIMIT:-570} - SECONDS)); echo $((t > 1 ? t : 1)); }  # what is left of this call (LIMIT: its seconds, less a margin)
case "$1" in
a)  # the host, then loss parity of every 2-GPU layout against one GPU: 1.7B, then the MoE shape
  nvidia-smi topo -m; python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count(), torch.cuda.nccl.version())'
  timeout $(left) $MG parity --models 1.7B --gpus 2 --steps 20 --out $OUT/parity_1.7B.json 2>&1 | grep -v Warning
  timeout $(left) $MG parity --models 30B-A3B-8L --gpus 2 --steps 20 --out $OUT/parity_moe.json 2>&1 | grep -v Warning
  ;;
b)  # weak scaling of FSDP (8B, seq 4096, mb 1 per GPU), 1 then 2 GPUs; MoE 30B-A3B at 24 of 48 layers with EP2
  timeout $(left) $MG scaling --model 8B --gpus 1,2 --mb 1 --steps 10 --warmup 4 --out $OUT/scaling_8b.json 2>&1 | grep -v Warning
  timeout $(left) $MG scaling --model 30B-A3B --n-layers 24 --layout ep --gpus 2 --mb 2 --steps 10 --warmup 4 --out $OUT/scaling_moe.json 2>&1 | grep -v Warning
  ;;
m)  # the 2-GPU layouts alone, against the one-GPU references of part s (committed): MoE first, then 1.7B
  REF=benchmarks/results/2026-11-29-h200-parity-single.json
  timeout $(left) $MG parity --only multi --reference $REF --models 30B-A3B-8L --gpus 2 --steps 20 --out $OUT/parity_moe.json 2>&1 | grep -v Warning
  timeout $(left) $MG parity --only multi --reference $REF --models 1.7B --gpus 2 --steps 20 --out $OUT/parity_1.7B.json 2>&1 | grep -v Warning
  ;;
p)  # session 5: every 1.7B run (references and 2-GPU layouts) from one shared DCP init (write_init), PP under autocast
  timeout $(left) $MG parity --models 1.7B --gpus 2 --steps 20 --out $OUT/parity_1.7B_init.json 2>&1 | grep -v Warning
  ;;
q)  # session 5: the same for the MoE shape
  timeout $(left) $MG parity --models 30B-A3B-8L --gpus 2 --steps 20 --out $OUT/parity_moe_init.json 2>&1 | grep -v Warning
  ;;
t)  # session 5: MoE tp2 against one GPU in fp32 compute, 6 steps (bf16: tp2 left the reference at step 4)
  timeout $(left) $MG parity --models 30B-A3B-8L --gpus 2 --steps 6 --fp32 --layouts single,single-repeat,tp2 --workdir /tmp/qwen3-mg-fp32 --out $OUT/parity_moe_tp2_fp32.json 2>&1 | grep -v Warning
  ;;
r)  # session 5, after the TP router-gradient fix: MoE tp2 against one GPU (bf16 compute, shared init), 10 steps
  timeout $(left) $MG parity --models 30B-A3B-8L --gpus 2 --steps 10 --layouts single,single-repeat,tp2 --workdir /tmp/qwen3-mg-r --out $OUT/parity_moe_tp2_fixed.json 2>&1 | grep -v Warning
  ;;
s)  # on a one-GPU machine (x2 withdrawn): the one-GPU references of the parity runs, then part c with 1 GPU
  nvidia-smi -L; python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count())'
  timeout $(left) $MG parity --only single --models 1.7B,30B-A3B-8L --gpus 2 --steps 20 --out $OUT/parity_single.json 2>&1 | grep -v Warning
  source benchmarks/gpu_services.sh || exit 1
  export QTRAIN_HOME=/tmp/qtrain-home
  timeout $(left) python3 benchmarks/gpu_job_resume.py --gpus 1 --model 0.6B --steps 24 --interval 8 --kill-after 11 --out $OUT/resume_1gpu.json 2>&1 | grep -v Warning
  ;;
c1) # part c on a one-GPU machine: 1 master x 1 GPU (session 4's call 4 ran full-depth 0.6B: moto failed its 7.2 GB shard;
    # since 99641bd each rank writes 4 files, and the model is cut to 4 layers: 2.6 GB in 4 objects)
  source benchmarks/gpu_services.sh || exit 1
  export QTRAIN_HOME=/tmp/qtrain-home
  timeout $(left) python3 benchmarks/gpu_job_resume.py --gpus 1 --model 0.6B --n-layers 4 --steps 16 --interval 8 --kill-after 10 --out $OUT/resume_1gpu.json 2>&1 | grep -v Warning
  ;;
c)  # a pretraining stage as a local PyTorchJob (1 master x 2 GPUs), S3 (moto) + MLflow, one rank killed, resumed;
    # 0.6B cut to 4 layers: 2.6 GB of checkpoint, 1.3 GB per rank (moto failed a 7.2 GB object, took 1.5 GB here)
  source benchmarks/gpu_services.sh || exit 1
  export QTRAIN_HOME=/tmp/qtrain-home
  timeout $(left) python3 benchmarks/gpu_job_resume.py --gpus 2 --model 0.6B --n-layers 4 --steps 24 --interval 8 --kill-after 11 --out $OUT/resume.json 2>&1 | grep -v Warning
  ;;
esac
# every run's log and metrics come back (one file)
tar czf $OUT/logs_$1.tgz $(find /tmp/qwen3-multigpu /tmp/qwen3-resume /tmp/qtrain-home /tmp/svc-logs -name train.log -o -name metrics.jsonl -o -name '*.log' 2>/dev/null) 2>/dev/null
