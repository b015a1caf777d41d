"""How far the opt-in fp8 KV cache moves greedy answers at 0.6B on one GPU (issue 19): the 32 seeded rows of
``decode_throughput.py --suite h200``'s parity check, 64 greedy tokens, bf16 weights, fp8 cache vs bf16 cache.

    python benchmarks/fp8_kv_agreement.py --out $OUT/fp8-kv-agreement.json
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
    a = ap.parse_args()
    model = seeded_model("0.6B", torch.device("cuda"), torch.bfloat16)
    res = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "flavor": "0.6B",
        "dtype": "bfloat16",
        "prompts": f"{a.rows} x 128 random ids, seed 1",
        **fp8_kv_agreement(model, prompts_of(a.rows, 128, seed=1), 64),
    }
    print(json.dumps(res))
    a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
