"""Qwen3 tokenizer throughput on this CPU: tokens/s and MB/s of ``encode_batch`` (the data pipeline's
call) and of single-text ``encode``, for the built-in tiktoken backend and the HF ``tokenizer.json``
backend (``tokenizers``), on real text found on the machine: Python sources and English prose
(license texts, package READMEs/docs) from the venv and /usr/share.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenizer_throughput.py --megabytes 16
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import tiktoken
import tokenizers

from qwen3_trainer.model.tokenizer import load_tokenizer, write_hf_tokenizer

RESULT = Path(__file__).parent / "results" / "tokenizer_throughput.json"


def corpus(megabytes: float, seed: int = 0) -> tuple[list[str], dict]:
    """Documents of real text, half code and half prose by bytes, shuffled."""
    roots = [Path(sys.prefix) / "lib", Path("/usr/share/common-licenses"), Path("/usr/share/doc")]
    code, prose = [], []
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or path.stat().st_size > 400_000 or path.stat().st_size < 200:
                continue
            if path.suffix == ".py":
                code.append(path)
            elif path.suffix in (".md", ".rst", ".txt") or path.name.startswith(
                ("LICENSE", "COPYING", "README")
            ):
                prose.append(path)
    rng = random.Random(seed)
    docs, stats = [], {}
    for name, files in (("code", code), ("prose", prose)):
        rng.shuffle(files)
        size = 0
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            docs.append(text)
            size += len(text.encode())
            if size >= megabytes * 1e6 / 2:
                break
        stats[name] = {"files": len(files), "megabytes": round(size / 1e6, 2)}
    rng.shuffle(docs)
    return docs, stats


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megabytes", type=float, default=16.0, help="corpus size")
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs")
    ap.add_argument("--out", type=Path, default=RESULT)
    a = ap.parse_args()

    docs, stats = corpus(a.megabytes)
    nbytes = sum(len(d.encode()) for d in docs)
    builtin = load_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        write_hf_tokenizer(tmp)
        hf = load_tokenizer(tmp)
    results = {}
    for name, tok in (("tiktoken", builtin), ("hf_tokenizers", hf)):
        secs, ids = best_of(lambda tok=tok: tok.encode_batch(docs), a.repeats)
        n = sum(map(len, ids))
        one_s, _ = best_of(lambda tok=tok: [tok.encode(d) for d in docs], a.repeats)
        results[name] = {
            "encode_batch_tokens_per_s": round(n / secs),
            "encode_batch_megabytes_per_s": round(nbytes / secs / 1e6, 2),
            "encode_loop_tokens_per_s": round(n / one_s),
            "tokens": n,
        }
    if results["tiktoken"]["tokens"] != results["hf_tokenizers"]["tokens"]:
        raise SystemExit("backends disagree on the token count")
    report = {
        "benchmark": "tokenizer_throughput",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "note": "shared machine: other jobs were running",
        },  # fmt: skip
        "versions": {
            "python": platform.python_version(),
            "tiktoken": tiktoken.__version__,
            "tokenizers": tokenizers.__version__,
        },  # fmt: skip
        "corpus": {
            "documents": len(docs),
            "megabytes": round(nbytes / 1e6, 2),
            **stats,
            "bytes_per_token": round(nbytes / results["tiktoken"]["tokens"], 2),
        },  # fmt: skip
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
