"""How far the opt-in fp8 KV cache moves greedy answers at 0.6B on one GPU (issue 19): the 32 seeded rows of
``decode_throughput.py --suite h200``'s parity check, 64 greedy tokens, bf16 weights, fp8 cache vs bf16 cache.

    python benchmarks/fp8_kv_agreement.py --out $OUT/fp8-kv-agreement.json
    python benchmarks/fp8_kv_agreement.py --flavor debugmodel --device cpu --rows 2 --new-tokens 8 --out /tmp/a.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from decode_throughput import fp8_kv_agreement, prompts_of, seeded_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--flavor", default="0.6B")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    model = seeded_model(a.flavor, dev, torch.bfloat16)
    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "flavor": a.flavor,
        "dtype": "bfloat16",
        "prompts": f"{a.rows} x 128 random ids, seed 1",
        **fp8_kv_agreement(model, prompts_of(a.rows, 128, seed=1), a.new_tokens),
    }
    print(json.dumps(res))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
