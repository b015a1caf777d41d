"""Packing against hand-computed rows: document separators, labels across boundaries, positions and
document ids, SFT loss masks from Qwen3's chat template, padding, truncation, epochs."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3_trainer.model.chat_template import render_for_training
from qwen3_trainer.platform.data import IGNORE, DataConfig, DataSource, build_loader
from qwen3_trainer.platform.data.packing import PretrainRows, SftRows, SourceDocs, rows_to_batch
from qwen3_trainer.platform.data.token_cache import TokenShard

E = 151643  # <|endoftext|>
X = IGNORE
HELLO = [9707, 11, 1879, 0]  # "Hello, world!" (FACTS.md)


def _docs(*docs: list[int], masks: list[list[int]] | None = None) -> SourceDocs:
    offsets = np.cumsum([0] + [len(d) for d in docs])
    mask = np.concatenate([np.asarray(m, np.uint8) for m in masks]) if masks else None
    return SourceDocs([TokenShard(np.concatenate([np.asarray(d, np.uint32) for d in docs]), offsets, mask, "", False)])


def _batch(rows, *ks):
    return {k: v.tolist() for k, v in rows_to_batch(*(np.stack(p) for p in zip(*[rows.row(k) for k in ks],
                                                                                     strict=True))).items()}


def test_one_document_stream_by_hand(tmp_path, tok, write_jsonl):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "Hello, world!"}])
    cfg = DataConfig(sources=[DataSource(name="a", paths=[str(tmp_path / "a.jsonl")])], seq_len=6)
    (b0, b1) = build_loader(cfg, tok, micro_batch_size=1, grad_accum=2).next_step()
    # stream: H , w ! E H , w ! E ...; rows of 7 tokens: [H , w ! E H ,] [w ! E H , w !]
    assert b0["input_ids"].tolist() == [[9707, 11, 1879, 0, E, 9707]]
    assert b0["labels"].tolist() == [[11, 1879, 0, E, X, 11]]  # EOS predicted; next doc's first token not
    assert b0["positions"].tolist() == [[0, 1, 2, 3, 4, 0]]
    assert b0["document_ids"].tolist() == [[0, 0, 0, 0, 0, 1]]
    assert b1["input_ids"].tolist() == [[1879, 0, E, 9707, 11, 1879]]
    assert b1["labels"].tolist() == [[0, E, X, 11, 1879, 0]]
    assert b1["positions"].tolist() == [[0, 1, 2, 0, 1, 2]]  # a continued document restarts at 0
    assert b1["document_ids"].tolist() == [[0, 0, 0, 1, 1, 1]]
    assert all(v.dtype.is_floating_point is False and v.dtype.itemsize == 8 for v in b0.values())


def test_row_starting_at_a_separator_by_hand():
    rows = PretrainRows(_docs(HELLO), "a", seq_len=3, seed=0, eos=E)
    # stream H , w ! E H , w ! E ...; rows of 4: [H , w !] [E H , w] [! E H ,]
    assert [rows.row(k)[0].tolist() for k in range(3)] == [HELLO, [E, *HELLO[:3]], [HELLO[3], E, *HELLO[:2]]]
    out = _batch(rows, 1, 2)
    assert out["labels"] == [[X, 11, 1879], [E, X, 11]]
    assert out["positions"] == [[0, 0, 1], [0, 1, 0]]
    assert out["document_ids"] == [[0, 1, 1], [0, 0, 1]]


def test_pretrain_rows_follow_the_epoch_order(tok):
    a, b, c = [1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11, 12, 13]
    rows = PretrainRows(_docs(a, b, c), "src", seq_len=4, seed=3, eos=E)
    stream = []
    for epoch in range(3):
        order, _ = rows._epoch(epoch)
        stream += sum(([[a, b, c][i] + [E]] for i in order), [])
    flat = sum(stream, [])  # the documents of each epoch in its shuffled order, each closed by EOS
    got = [rows.row(k)[0].tolist() for k in range(8)]
    assert got == [flat[5 * k:5 * k + 5] for k in range(8)]
    orders = {tuple(rows._epoch(e)[0]) for e in range(6)}
    assert len(orders) > 1, "epochs are reshuffled"
    # seg_start: at the row start and at every document start inside the row
    for k in range(8):
        tokens, mask, seg = rows.row(k)
        starts = [0] + [i for i in range(1, 5) if flat[5 * k + i - 1] == E]
        assert np.flatnonzero(seg).tolist() == starts and mask.all()


def test_rows_to_batch_by_hand():
    tokens = np.array([[10, 11, E, 20, 21, 22, E, 30]])
    seg = np.array([[1, 0, 0, 1, 0, 0, 0, 1]], bool)
    out = rows_to_batch(tokens, np.ones_like(seg), seg)
    assert out["input_ids"].tolist() == [[10, 11, E, 20, 21, 22, E]]
    assert out["labels"].tolist() == [[11, E, X, 21, 22, E, X]]
    assert out["positions"].tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert out["document_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 1]]


def test_sft_rows_pack_whole_chats_and_pad_by_hand():
    # chat ids with masks (1 = assistant tokens); widths: 4, 3, 5; row width 8
    a, am = [1, 2, 3, 4], [0, 0, 1, 1]
    b, bm = [5, 6, 7], [0, 1, 1]
    c, cm = [8, 9, 10, 11, 12], [0, 0, 1, 1, 1]
    rows = SftRows(_docs(a, b, c, masks=[am, bm, cm]), "chat", seq_len=7, seed=0, pad=E)
    order, starts = rows._epoch(0)
    by_doc = {0: (a, am), 1: (b, bm), 2: (c, cm)}
    expected_rows, current = [], []
    for i in order:  # greedy, never splitting a chat
        if sum(len(by_doc[j][0]) for j in current) + len(by_doc[i][0]) > 8:
            expected_rows.append(current)
            current = []
        current.append(int(i))
    expected_rows.append(current)
    assert [list(order[starts[r]:starts[r + 1]]) for r in range(len(starts) - 1)] == expected_rows
    tokens, mask, seg = rows.row(0)
    ids = sum((by_doc[j][0] for j in expected_rows[0]), [])
    loss = sum((by_doc[j][1] for j in expected_rows[0]), [])
    pad = 8 - len(ids)
    assert tokens.tolist() == ids + [E] * pad
    assert mask.tolist() == [bool(v) for v in loss] + [False] * pad
    seg_at = np.cumsum([0] + [len(by_doc[j][0]) for j in expected_rows[0]]).tolist()
    assert np.flatnonzero(seg).tolist() == [s for s in seg_at if s < 8]


def test_sft_labels_positions_by_hand():
    a, am = [1, 2, 3, 4], [0, 0, 1, 1]
    b, bm = [5, 6, 7], [0, 1, 1]
    tokens = np.array([a + b + [E]])
    out = rows_to_batch(tokens, np.array([am + bm + [0]], bool), np.array([[1, 0, 0, 0, 1, 0, 0, 1]], bool))
    assert out["labels"].tolist() == [[X, 3, 4, X, 6, 7, X]]
    assert out["positions"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert out["document_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]


def test_sft_end_to_end_with_qwen3_chat_template(tmp_path, tok, write_jsonl):
    chats = [[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
             [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in chats])
    rendered = [render_for_training(m, tok) for m in chats]
    width = sum(len(ids) for ids, _ in rendered) + 3  # both chats fit in one row, 3 pad tokens
    cfg = DataConfig(kind="sft", seq_len=width - 1,
                     sources=[DataSource(name="chat", paths=[str(tmp_path / "c.jsonl")], field="messages")])
    loader = build_loader(cfg, tok, micro_batch_size=1)
    (batch,) = loader.next_step()
    order = loader._rows[0]._epoch(0)[0]
    ids = sum((rendered[i][0] for i in order), []) + [E] * 3
    mask = sum((rendered[i][1] for i in order), []) + [0] * 3
    first = len(rendered[order[0]][0])
    labels = [t if m and i + 1 != first else X for i, (t, m) in enumerate(zip(ids[1:], mask[1:], strict=True))]
    assert batch["input_ids"][0].tolist() == ids[:-1]
    assert batch["labels"][0].tolist() == labels
    trained = tok.decode([t for t in batch["labels"][0].tolist() if t != X])
    assert trained in ("<think>\n\n</think>\n\nHello.<|im_end|><think>\n\n</think>\n\n4<|im_end|>",
                       "<think>\n\n</think>\n\n4<|im_end|><think>\n\n</think>\n\nHello.<|im_end|>")
    n0, n1 = len(rendered[order[0]][0]), len(rendered[order[1]][0])
    assert batch["document_ids"][0].tolist() == [0] * n0 + [1] * n1 + [2] * 2
    assert batch["positions"][0].tolist() == list(range(n0)) + list(range(n1)) + [0, 1]


def test_sft_long_chat_is_truncated_to_the_row(tmp_path, tok, write_jsonl):
    long = [{"role": "user", "content": "Tell me. " * 40}, {"role": "assistant", "content": "Fine. " * 40}]
    write_jsonl(tmp_path / "c.jsonl", [{"messages": long}])
    cfg = DataConfig(kind="sft", seq_len=31,
                     sources=[DataSource(name="chat", paths=[str(tmp_path / "c.jsonl")], field="messages")])
    loader = build_loader(cfg, tok, micro_batch_size=2)
    assert loader.sources_info[0].truncated == 1
    (batch,) = loader.next_step()
    ids, _ = render_for_training(long, tok)
    assert batch["input_ids"].tolist() == [ids[:31], ids[:31]]  # one chat per epoch, epochs repeat it
    assert (batch["labels"] == X).all(), "the cut-off chat keeps only prompt tokens in its first 32"


def test_sft_chat_without_answer_is_one_line_error(tmp_path, tok, write_jsonl):
    write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    cfg = DataConfig(kind="sft", seq_len=8,
                     sources=[DataSource(name="chat", paths=[str(tmp_path / "c.jsonl")], field="messages")])
    with pytest.raises(ValueError, match=r"'chat': .*c\.jsonl record 1: cannot render chat: no assistant turn"):
        build_loader(cfg, tok, micro_batch_size=1)


def test_sft_train_on_all_turns_gets_its_own_cache(tmp_path, tok, write_jsonl):
    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    write_jsonl(tmp_path / "c.jsonl", [{"messages": chat}])
    base = DataConfig(kind="sft", seq_len=63,
                      sources=[DataSource(name="chat", paths=[str(tmp_path / "c.jsonl")], field="messages")])
    trained = {}
    for train_on in ("final", "all"):
        loader = build_loader(base.model_copy(update={"sft_train_on": train_on}), tok, micro_batch_size=1)
        assert loader.sources_info[0].built == 1, "a different mask is a different shard"
        labels = loader.next_step()[0]["labels"][0].tolist()
        trained[train_on] = tok.decode([t for t in labels if t != X])
    assert trained["final"] == "<think>\n\n</think>\n\n4<|im_end|>"
    assert trained["all"] == "Hello.<|im_end|><think>\n\n</think>\n\n4<|im_end|>"
