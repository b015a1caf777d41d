"""``decode_throughput.py --suite fp8-agreement`` runs end to end before it reaches the GPU: the tiny config on
CPU, bf16 weights, the fp8 KV cache against the bf16 cache, and the JSON it writes holds a consistent count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fp8_kv_agreement_cpu(tmp_path):
    out = tmp_path / "agreement.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "decode_throughput.py"), "--suite", "fp8-agreement",
           "--flavor", "debugmodel", "--device", "cpu", "--dtype", "bfloat16", "--batch", "2", "--new-tokens", "6",
           "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=300)
    report = json.loads(out.read_text())
    res = report["parity"]["debugmodel_bfloat16_fp8_kv"]
    assert (res["rows"], res["new_tokens"]) == (2, 6)
    assert 0 <= res["identical_rows"] <= 2
    assert 0 <= res["mean_first_difference"] <= 6
    # rows that never part count as parting at new_tokens: all identical <=> the mean is new_tokens
    assert (res["identical_rows"] == 2) == (res["mean_first_difference"] == 6)
