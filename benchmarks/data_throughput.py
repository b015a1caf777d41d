"""Data pipeline throughput on this CPU: tokenising (cold cache) and packing (rows per second).

Writes a procedural corpus (``tiny_corpus``), then measures, each best of ``--repeats``:
  - tokenise: jsonl -> Qwen3 ids -> cached shard (``prepare_cache`` with an empty cache), tokens/s;
  - cache load: reopening the cached shards (``build_loader`` on a warm cache), seconds;
  - pack: ``Loader.next_step()`` for one rank, tokens/s of model input, for pretrain rows at each
    ``--seq-lens``;
  - sft: chats (a corpus document as the answer) rendered with Qwen3's chat template + loss mask and
    cached, chats/s and tokens/s; then packed into padded rows, tokens/s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_throughput.py --megabytes 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from qwen3_trainer.model import load_tokenizer
from qwen3_trainer.platform.data import DataConfig, DataSource, build_loader, prepare_cache
from qwen3_trainer.platform.data.tiny_corpus import generate_documents, write_tiny_corpus


def _sft(work: Path, tok, chats: int, seq_len: int, repeats: int) -> dict:
    path = work / "chats" / "chats.jsonl"
    path.parent.mkdir(parents=True)
    with path.open("w") as fh:
        for i, doc in enumerate(generate_documents(chats, seed=11)):
            question = f"Write something about item {i}. /no_think" if i % 2 else f"Tell me about item {i}."
            fh.write(json.dumps({"messages": [{"role": "user", "content": question},
                                              {"role": "assistant", "content": doc}]}) + "\n")
    cfg = DataConfig(kind="sft", seq_len=seq_len,
                     sources=[DataSource(name="chats", paths=[str(path.parent)], field="messages")])

    def cold():
        for cache in path.parent.glob("*.qwen3-tokens"):
            shutil.rmtree(cache)
        return prepare_cache(cfg, tok)

    secs, infos = _best(cold, repeats)
    loader = build_loader(cfg, tok, micro_batch_size=8)
    steps = max(1, 500_000 // (8 * seq_len))
    pack_s, _ = _best(lambda: [loader.next_step() for _ in range(steps)], repeats)
    return {"chats": chats, "tokens": infos[0].tokens, "render_and_cache_seconds": round(secs, 3),
            "chats_per_s": round(chats / secs), "tokens_per_s": round(infos[0].tokens / secs),
            "pack_seq_len": seq_len, "pack_tokens_per_s": round(steps * 8 * seq_len / pack_s)}


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=8.0)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096, 32768])
    parser.add_argument("--tokens-per-pack", type=int, default=2_000_000, help="input tokens per pack run")
    parser.add_argument("--sft-chats", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_throughput.json"))
    args = parser.parse_args()

    tok = load_tokenizer()
    work = Path(tempfile.mkdtemp(prefix="qwen3-data-bench-"))
    try:
        write_tiny_corpus(str(work / "corpus"), megabytes=args.megabytes, shards=4)
        corpus_bytes = sum(p.stat().st_size for p in (work / "corpus").glob("*.jsonl"))
        cfg = DataConfig(seq_len=args.seq_lens[0], sources=[DataSource(name="tiny", paths=[str(work / "corpus")])])

        def cold():
            for cache in (work / "corpus").glob("*.qwen3-tokens"):
                shutil.rmtree(cache)
            return prepare_cache(cfg, tok)

        tok_s, infos = _best(cold, args.repeats)
        tokens = infos[0].tokens
        load_s, _ = _best(lambda: build_loader(cfg, tok, micro_batch_size=1), args.repeats)
        pack = {}
        for seq_len in args.seq_lens:
            loader = build_loader(cfg.model_copy(update={"seq_len": seq_len}), tok, micro_batch_size=8,
                                  grad_accum=1)
            steps = max(1, args.tokens_per_pack // (8 * seq_len))
            secs, _ = _best(lambda loader=loader, steps=steps: [loader.next_step() for _ in range(steps)],
                            args.repeats)
            pack[str(seq_len)] = {"tokens_per_s": round(steps * 8 * seq_len / secs), "steps": steps,
                                  "micro_batch_size": 8}
        result = {
            "benchmark": "data_throughput",
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                        # a shared machine: other jobs' load makes numbers vary by up to ~2x
                        "load_average_1min": round(os.getloadavg()[0], 2)},
            "corpus": {"megabytes": round(corpus_bytes / 1e6, 2), "documents": infos[0].docs, "tokens": tokens,
                       "bytes_per_token": round(corpus_bytes / tokens, 2)},
            "tokenise_and_cache": {"seconds": round(tok_s, 3), "tokens_per_s": round(tokens / tok_s),
                                   "megabytes_per_s": round(corpus_bytes / 1e6 / tok_s, 2)},
            "warm_cache_build_seconds": round(load_s, 4),
            "pack_pretrain": pack,
            "sft": _sft(work, tok, args.sft_chats, 4096, args.repeats),
            "repeats": args.repeats,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
