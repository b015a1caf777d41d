"""Training data: jsonl/parquet sources (local or s3://) tokenised with the Qwen3 tokenizer, cached
next to the source, packed into fixed-length rows with per-document positions, mixed by weight,
sliced by data-parallel rank and resumable exactly.

    cfg = DataConfig(sources=[DataSource(name="web", paths=["s3://corpus/web/*.jsonl"], weight=3),
                              DataSource(name="code", paths=["data/code/"], weight=1)], seq_len=4096)
    validate_sources(cfg)                      # before any process group: one-line error if missing
    loader = build_loader(cfg, load_tokenizer(), micro_batch_size=2, grad_accum=4,
                          dp_rank=rank, dp_world=world)
    for batch in loader.next_step(): ...       # grad_accum dicts of int64 [mb, seq_len] tensors
    ckpt["data"] = loader.state_dict()         # JSON-able; loader.load_state_dict(...) resumes exactly

Modules: config (pydantic), sources (file discovery + record readers), token_cache (pre-tokenised
shards), packing (rows of one source), mixture (global order), loader (rank slices + state),
tiny_corpus (procedural English-like text for tests and the tiny pipeline).
"""

from .config import DataConfig, DataSource
from .loader import Batch, Loader, build_loader, prepare_cache
from .packing import IGNORE
from .sources import DataError, validate_sources

__all__ = ["IGNORE", "Batch", "DataConfig", "DataError", "DataSource", "Loader", "build_loader",
           "prepare_cache", "validate_sources"]
