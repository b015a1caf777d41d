set -x
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
python3 benchmarks/gpu_smoke.py 2>&1 | tail -30 | tee $OUT/gpu_smoke.txt
python3 benchmarks/decode_throughput.py --flavor 0.6B --device cuda --dtype bfloat16 --out $OUT/decode_0.6B_h200.json 2>&1 | tail -5
python3 benchmarks/train_throughput.py --models 1.7B --impls hf-eager,hf-compile,qwen3-trainer-bf16-compile,qwen3-trainer-mp-compile --steps 6 --warmup 3 --timeout 240 --out $OUT/tp_1.7B.json 2>&1 | tail -12
