"""The loader: weighted mixtures, data-parallel slices whose union is the one-process global batch,
exact resume from a JSON state, cache reuse without re-tokenising, epochs."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from qwen3_trainer.platform.data import DataConfig, DataError, DataSource, build_loader, validate_sources
from qwen3_trainer.platform.data.mixture import Mixture
from qwen3_trainer.platform.data.tiny_corpus import generate_documents, write_tiny_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_tiny_corpus(str(root / "web"), megabytes=0.12, shards=2, seed=1)
    write_tiny_corpus(str(root / "books"), megabytes=0.05, shards=1, seed=2)
    write_tiny_corpus(str(root / "code"), megabytes=0.03, shards=1, seed=3)
    return root


def _cfg(corpus, seq_len=32, seed=0, weights=(5, 3, 2)) -> DataConfig:
    return DataConfig(seq_len=seq_len, seed=seed, sources=[
        DataSource(name=n, paths=[str(corpus / n)], weight=w) for n, w in zip(("web", "books", "code"), weights,
                                                                            strict=True)])


def _steps(loader, n) -> list[list[dict]]:
    return [loader.next_step() for _ in range(n)]


def _cat(batches: list[dict], key: str) -> torch.Tensor:
    return torch.cat([b[key] for b in batches])


def test_dp_union_equals_one_process(corpus, tok):
    cfg = _cfg(corpus)
    single = build_loader(cfg, tok, micro_batch_size=6, grad_accum=2)
    ranks = [build_loader(cfg, tok, micro_batch_size=2, grad_accum=2, dp_rank=r, dp_world=3) for r in range(3)]
    for _ in range(4):
        one = single.next_step()
        per_rank = [r.next_step() for r in ranks]
        for m in range(2):  # micro-batch m of all ranks, concatenated = the one process's micro-batch m
            for key in ("input_ids", "labels", "positions", "document_ids"):
                assert torch.equal(torch.cat([per_rank[r][m][key] for r in range(3)]), one[m][key])
    # rank slices are disjoint: no row seen by two ranks within a step
    ids = [ranks[r].rank_row_ids(0) for r in range(3)]
    flat = np.concatenate([np.concatenate(x) for x in ids])
    assert sorted(flat.tolist()) == list(range(12))


def test_same_global_batch_as_a_set_under_other_splits(corpus, tok):
    cfg = _cfg(corpus)
    a = build_loader(cfg, tok, micro_batch_size=4, grad_accum=3)  # 12 rows
    b = [build_loader(cfg, tok, micro_batch_size=3, grad_accum=2, dp_rank=r, dp_world=2) for r in range(2)]
    for _ in range(3):
        rows_a = {tuple(x) for x in _cat(a.next_step(), "input_ids").tolist()}
        rows_b = {tuple(x) for r in b for x in _cat(r.next_step(), "input_ids").tolist()}
        assert rows_a == rows_b and len(rows_a) == 12


def test_resume_is_exact_through_json(corpus, tok):
    cfg = _cfg(corpus)
    straight = build_loader(cfg, tok, micro_batch_size=2, grad_accum=2, dp_rank=1, dp_world=2)
    expected = _steps(straight, 7)
    first = build_loader(cfg, tok, micro_batch_size=2, grad_accum=2, dp_rank=1, dp_world=2)
    _steps(first, 3)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = build_loader(cfg, tok, micro_batch_size=2, grad_accum=2, dp_rank=1, dp_world=2)
    resumed.load_state_dict(state)
    assert resumed.step == 3
    for want, got in zip(expected[3:], _steps(resumed, 4), strict=True):
        for w, g in zip(want, got, strict=True):
            assert all(torch.equal(w[k], g[k]) for k in w)


def test_resume_onto_another_dp_world(corpus, tok):
    """Same global batch, different split: the rows after the restore are the same set."""
    cfg = _cfg(corpus)
    one = build_loader(cfg, tok, micro_batch_size=4, grad_accum=1)
    _steps(one, 2)
    state = one.state_dict()
    expected = _cat(one.next_step(), "input_ids")
    two = [build_loader(cfg, tok, micro_batch_size=2, grad_accum=1, dp_rank=r, dp_world=2) for r in range(2)]
    for r in two:
        r.load_state_dict(state)
    assert torch.equal(torch.cat([_cat(r.next_step(), "input_ids") for r in two]), expected)


def test_state_of_other_data_is_refused(corpus, tok):
    state = build_loader(_cfg(corpus), tok, micro_batch_size=1).state_dict()
    other = build_loader(_cfg(corpus, seq_len=16), tok, micro_batch_size=1)
    with pytest.raises(DataError, match=r"other data \(seq_len: saved 32, now 16\)"):
        other.load_state_dict(state)
    with pytest.raises(DataError, match="not a data-loader state"):
        other.load_state_dict({"rows": 3})


def test_different_seed_different_order_same_seed_same(corpus, tok):
    a = _cat(build_loader(_cfg(corpus), tok, micro_batch_size=8).next_step(), "input_ids")
    b = _cat(build_loader(_cfg(corpus), tok, micro_batch_size=8).next_step(), "input_ids")
    c = _cat(build_loader(_cfg(corpus, seed=1), tok, micro_batch_size=8).next_step(), "input_ids")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_realized_mix_tracks_weights(corpus, tok):
    loader = build_loader(_cfg(corpus), tok, micro_batch_size=16, grad_accum=2)
    _steps(loader, 32)  # 1024 rows = 4 mixture blocks
    report = loader.mix_report()
    assert {n: r["rows"] for n, r in report.items()} == {"web": 512, "books": 307, "code": 205}
    assert sum(r["rows"] for r in report.values()) == loader.rows_consumed == 1024
    assert report["code"]["epoch"] >= 1, "the small source cycled into a new epoch"


def test_mixture_counts_are_exact_and_rows_consecutive():
    mix = Mixture([0.7, 0.2, 0.1], seed=5)
    sources, local = mix.rows(0, 3000)
    for s in range(3):  # each source's rows are consumed in order 0, 1, 2, ...
        assert local[sources == s].tolist() == list(range(int((sources == s).sum())))
    for n in range(0, 3000, mix.block):  # within one row of weight * n at block boundaries
        counts = np.bincount(sources[:n], minlength=3)
        assert (np.abs(counts - np.array([0.7, 0.2, 0.1]) * n) < 1).all()
        assert counts.tolist() == mix.counts(n).tolist()
    assert mix.counts(1234).tolist() == np.bincount(sources[:1234], minlength=3).tolist()
    s2, l2 = mix.rows(1000, 1300)  # random access equals the sequential order
    assert s2.tolist() == sources[1000:1300].tolist() and l2.tolist() == local[1000:1300].tolist()
    tiny = Mixture([1000, 1], seed=0)  # a rare source still appears, blocks grow to keep counts monotone
    assert tiny.block >= 1001 and np.bincount(tiny.rows(0, 3 * tiny.block)[0]).tolist()[1] == 3


def test_epochs_cover_every_document_then_reshuffle(tmp_path, tok, write_jsonl):
    texts = [f"Document number {i} says {'ha ' * (i % 5)}" for i in range(13)]
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    cfg = DataConfig(seq_len=15, sources=[DataSource(name="a", paths=[str(tmp_path / "a.jsonl")])])
    loader = build_loader(cfg, tok, micro_batch_size=4)
    rows = loader._rows[0]
    epoch_tokens = rows.epoch_tokens
    n_steps = 3 * epoch_tokens // (4 * 16) + 1
    stream = torch.cat([_cat(loader.next_step(), "input_ids") for _ in range(n_steps)])
    # rebuild the token stream (inputs drop each row's last token; take it from the next rows' view)
    full = np.concatenate([rows.row(k)[0] for k in range(len(stream))])
    assert np.array_equal(full.reshape(-1, 16)[:, :-1], stream.numpy())
    eos = tok.endoftext
    docs = [tuple(d) for d in np.split(full, np.flatnonzero(full == eos) + 1) if len(d)]
    encoded = {tuple(tok.encode(t)) + (eos,) for t in texts}
    epochs = [docs[i * 13:(i + 1) * 13] for i in range(3)]
    for epoch in epochs:
        assert set(epoch) == encoded  # every document exactly once per epoch
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2], "a new order each epoch"
    assert loader.mix_report()["a"]["epoch"] >= 2


class CountingTokenizer:
    """The real tokenizer, counting the texts it is asked to encode."""

    def __init__(self, tok):
        self._tok, self.texts = tok, 0

    def encode_batch(self, texts, allow_special=True):
        self.texts += len(texts)
        return self._tok.encode_batch(texts, allow_special=allow_special)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_second_run_reuses_the_cache(corpus, tok, tmp_path):
    write_tiny_corpus(str(tmp_path / "c"), megabytes=0.05, shards=2, seed=9)
    cfg = DataConfig(seq_len=32, sources=[DataSource(name="c", paths=[str(tmp_path / "c")])])
    counting = CountingTokenizer(tok)
    first = build_loader(cfg, counting, micro_batch_size=2)
    # every build encodes one probe text (the tokenizer fingerprint), plus the documents when caching
    assert counting.texts == first.sources_info[0].docs + 1 and first.sources_info[0].built == 2
    counting.texts = 0
    second = build_loader(cfg, counting, micro_batch_size=2)
    assert counting.texts == 1, "only the probe: no document was tokenised again"
    assert second.sources_info[0].cached == 2 and second.sources_info[0].built == 0
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first.next_step(), second.next_step(), strict=True)
               for k in a)
    nocache = build_loader(cfg.model_copy(update={"cache": False}), counting, micro_batch_size=2)
    assert nocache.sources_info[0].built == 2


def test_tiny_corpus_is_deterministic_and_varied(tmp_path):
    a = write_tiny_corpus(str(tmp_path / "a"), megabytes=0.2, shards=2, seed=4)
    b = write_tiny_corpus(str(tmp_path / "b"), megabytes=0.2, shards=2, seed=4)
    assert [open(x).read() for x in a] == [open(x).read() for x in b]
    docs = list(generate_documents(500, seed=4))
    lengths = sorted(len(d) for d in docs)
    assert len(set(docs)) == 500 and lengths[-1] > 8 * lengths[len(lengths) // 2]
    assert sum(len(open(x, "rb").read()) for x in a) >= 200_000


def test_bad_loader_arguments(corpus, tok):
    with pytest.raises(DataError, match="dp_rank 2 outside 0..1"):
        build_loader(_cfg(corpus), tok, micro_batch_size=1, dp_rank=2, dp_world=2)
    with pytest.raises(DataError, match="micro_batch_size must be a positive integer"):
        build_loader(_cfg(corpus), tok, micro_batch_size=0)


def test_next_stage_continues_shared_sources(corpus, tok):
    stage1 = build_loader(_cfg(corpus, weights=(1, 1, 1)), tok, micro_batch_size=4, grad_accum=2)
    _steps(stage1, 5)
    prev = json.loads(json.dumps(stage1.state_dict()))
    used = {name: s["rows"] for name, s in prev["sources"].items()}
    assert sum(used.values()) == 40 and min(used.values()) > 0
    stage2_cfg = DataConfig(seq_len=32, sources=[DataSource(name="web", paths=[str(corpus / "web")], weight=1),
                                                 DataSource(name="code", paths=[str(corpus / "code")], weight=4)])
    stage2 = build_loader(stage2_cfg, tok, micro_batch_size=4, grad_accum=2)
    assert stage2.continue_from(prev) == {"web": used["web"], "code": used["code"]}
    got = _cat(stage2.next_step(), "input_ids")
    sources, local = stage2._mixture.rows(0, 8)
    fresh = build_loader(stage2_cfg, tok, micro_batch_size=1)  # the sources' own row sequences
    expected = [fresh._rows[s].row(used[stage2.names[s]] + int(k))[0][:-1] for s, k in zip(sources, local,
                                                                                          strict=True)]
    assert got.tolist() == [e.tolist() for e in expected]
    # an exact resume inside stage 2 keeps the carried offsets
    state = stage2.state_dict()
    after = stage2.next_step()
    again = build_loader(stage2_cfg, tok, micro_batch_size=4, grad_accum=2)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(after, again.next_step(), strict=True) for k in a)
    # other rows (here: another seq_len) are not comparable: the source starts over
    longer = build_loader(stage2_cfg.model_copy(update={"seq_len": 64}), tok, micro_batch_size=1)
    assert longer.continue_from(prev) == {}


def test_unreachable_s3_is_one_line(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    for key, value in {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    cfg = DataConfig(seq_len=8, sources=[DataSource(name="remote", paths=["s3://bucket/web/*.jsonl"])])
    with pytest.raises(DataError, match=r"^data source 'remote': cannot list s3://bucket/web/\*\.jsonl: "
                                        r"Could not connect") as err:
        validate_sources(cfg)
    assert "\n" not in str(err.value)


def test_too_uneven_weights_are_refused(corpus, tok):
    with pytest.raises(DataError, match="mixture weights too uneven"):
        build_loader(_cfg(corpus, weights=(1e7, 1, 1)), tok, micro_batch_size=1)
