"""The loader's batches against torchtitan: document ids equal the ones torchtitan's document mask
derives from <|endoftext|> (pretraining), and a batch runs through the debug Qwen3 model with its
per-document positions and a -100-ignoring cross entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qwen3_trainer.model import build_model
from qwen3_trainer.model import titan as _titan  # noqa: F401 - CPU patches before torchtitan imports
from qwen3_trainer.platform.data import IGNORE, DataConfig, DataSource, build_loader
from qwen3_trainer.platform.data.tiny_corpus import write_tiny_corpus


def _loader(tmp_path, tok, seq_len=64, mb=4):
    write_tiny_corpus(str(tmp_path / "c"), megabytes=0.03, shards=1, seed=2)
    cfg = DataConfig(seq_len=seq_len, sources=[DataSource(name="c", paths=[str(tmp_path / "c")])])
    return build_loader(cfg, tok, micro_batch_size=mb)


def test_document_ids_match_torchtitans_document_mask(tmp_path, tok):
    from torchtitan.models.attention import get_document_mask_mod

    loader = _loader(tmp_path, tok)
    seen_boundaries = 0
    for _ in range(5):
        (batch,) = loader.next_step()
        ids, docs = batch["input_ids"], batch["document_ids"]
        mask_mod = get_document_mask_mod(ids, tok.endoftext)
        q = torch.arange(ids.shape[1])[:, None]
        kv = torch.arange(ids.shape[1])[None, :]
        for b in range(ids.shape[0]):
            theirs = mask_mod(torch.tensor(b), torch.tensor(0), q, kv)
            ours = docs[b][:, None] == docs[b][None, :]
            assert torch.equal(theirs, ours)
        seen_boundaries += int((docs[:, -1] > 0).sum())
    assert seen_boundaries > 0


def test_batch_through_debugmodel(tmp_path, tok):
    torch.manual_seed(0)
    model = build_model("debugmodel", device="cpu", seed=0)
    (batch,) = _loader(tmp_path, tok, seq_len=32, mb=2).next_step()
    logits = model(batch["input_ids"], positions=batch["positions"])
    assert logits.shape == (2, 32, 151936)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE)
    assert torch.isfinite(loss) and 10.0 < loss.item() < 14.0  # ~ln(151936) = 11.9 at init
