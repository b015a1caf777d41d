"""Data of the miniature pipeline, made locally (no downloads) under ``<root>/data/``:

- ``web/``: the procedural English-like corpus of ``platform.data.tiny_corpus`` (S1-S3);
- ``reasoning/``: generated arithmetic and word problems with worked solutions
  (``platform.data.synthetic``), written as plain documents — question, ``<think>`` steps, boxed
  answer — the STEM/reasoning share that S2 and S3 mix in.

The post-training stages prepare their own data (``platform.posttrain.prepare``, run as a job).
A ``READY.json`` marker, written last, makes preparation idempotent and safe to interrupt.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from qwen3_trainer.model import storage

MARKER = "READY.json"


def reasoning_documents(n: int, seed: int = 0) -> list[dict]:
    from qwen3_trainer.platform.data import synthetic

    docs = []
    for p in synthetic.problems(n, seed=seed, difficulties=(0, 1, 2, 3)):
        docs.append({"text": f"Question: {p.question}\n{p.thinking()}"})
    return docs


def prepare(root: str, megabytes: float, seed: int = 0) -> str:
    """Write the tiny corpora under ``<root>/data`` unless already there; returns the data root."""
    from qwen3_trainer.platform.data.tiny_corpus import write_tiny_corpus

    data_root = storage.join(root, "data")
    marker = storage.join(data_root, MARKER)
    spec = {"megabytes": megabytes, "seed": seed, "sources": ["web", "reasoning"]}
    if storage.exists(marker) and json.loads(storage.read_text(marker)) == spec:
        return data_root
    with tempfile.TemporaryDirectory(prefix="qwen3-tiny-data-") as tmp:
        local = Path(tmp)
        write_tiny_corpus(str(local / "web"), megabytes=megabytes, shards=2, seed=seed)
        (local / "reasoning").mkdir()
        n = max(int(megabytes * 2500), 200)  # ~100-byte documents: about the corpus's size
        with open(local / "reasoning" / "problems-000.jsonl", "w") as f:
            for doc in reasoning_documents(n, seed):
                f.write(json.dumps(doc) + "\n")
        fs, target = storage.filesystem(data_root)
        for sub in ("web", "reasoning"):
            for file in sorted((local / sub).iterdir()):
                dest = f"{target.rstrip('/')}/{sub}/{file.name}"
                if not storage.is_remote(data_root):
                    Path(dest).parent.mkdir(parents=True, exist_ok=True)
                fs.put_file(str(file), dest)
    fs.pipe(f"{target.rstrip('/')}/{MARKER}", json.dumps(spec).encode())
    return data_root
