"""Reading sources: jsonl (plain and gzipped), parquet, directories and globs, s3:// against a real moto
server, the token cache beside the source (and its local fallback), and one-line errors on bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from qwen3_trainer.model import storage
from qwen3_trainer.platform.data import DataConfig, DataError, DataSource, build_loader, validate_sources
from qwen3_trainer.platform.data.sources import read_records, resolve_files

TEXTS = ["Hello, world!", "The quick brown fox.", "数学是科学的语言。", "a <|endoftext|> literal"]
CHATS = [[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
          {"role": "assistant", "content": "4"}]]


def _docs(loader) -> list[list[int]]:
    """The documents of the loader's only source, from its token shards, in file order."""
    docs = loader._rows[0].docs
    return [docs.doc(i)[0].tolist() for i in range(len(docs))]


def _cfg(paths, **kw) -> DataConfig:
    source = {k: kw.pop(k) for k in ("format", "field") if k in kw}
    return DataConfig(sources=[DataSource(name="s", paths=paths, **source)], seq_len=16, **kw)


def test_jsonl_gz_dir_and_glob(tmp_path, tok, write_jsonl):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": t} for t in TEXTS[:2]])
    (tmp_path / "d" / "sub").mkdir()
    with gzip.open(tmp_path / "d" / "sub" / "b.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps({"text": t}) + "\n" for t in TEXTS[2:])
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    by_dir = build_loader(_cfg([str(tmp_path / "d")]), tok, micro_batch_size=1)
    assert _docs(by_dir) == [tok.encode(t, allow_special=False) for t in TEXTS]
    assert _docs(by_dir)[0] == [9707, 11, 1879, 0]
    # a literal "<|endoftext|>" in data stays text: the only separators are the packer's
    assert tok.endoftext not in _docs(by_dir)[3]
    by_glob = build_loader(_cfg([str(tmp_path / "d" / "*.jsonl")]), tok, micro_batch_size=1)
    assert _docs(by_glob) == [tok.encode(t) for t in TEXTS[:2]]


def test_parquet_text_and_messages(tmp_path, tok):
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": TEXTS}), tmp_path / "t.parquet", row_group_size=2)
    loader = build_loader(_cfg([str(tmp_path / "t.parquet")]), tok, micro_batch_size=1)
    assert _docs(loader) == [tok.encode(t, allow_special=False) for t in TEXTS]
    pq.write_table(pa.table({"messages": CHATS}), tmp_path / "c.parquet")
    records = list(read_records(resolve_files(DataSource(name="c", paths=[str(tmp_path / "c.parquet")],
                                                         field="messages"))[0], "messages", chat=True))
    assert records == CHATS


def test_explicit_format_overrides_suffix(tmp_path, tok, write_jsonl):
    write_jsonl(tmp_path / "data.txt", [{"text": "Hello, world!"}])
    loader = build_loader(_cfg([str(tmp_path / "data.txt")], format="jsonl"), tok, micro_batch_size=1)
    assert _docs(loader) == [[9707, 11, 1879, 0]]


def test_s3_jsonl_and_parquet_with_cache_beside_source(s3_bucket, tok, tmp_path):
    fs, _ = storage.filesystem(s3_bucket)
    base = s3_bucket.removeprefix("s3://")
    fs.pipe_file(f"{base}/corpus/a.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:2]).encode())
    pq.write_table(pa.table({"text": TEXTS[2:]}), tmp_path / "b.parquet")
    fs.put_file(str(tmp_path / "b.parquet"), f"{base}/corpus/b.parquet")
    cfg = _cfg([f"{s3_bucket}/corpus/"])
    first = build_loader(cfg, tok, micro_batch_size=1)
    assert _docs(first) == [tok.encode(t, allow_special=False) for t in TEXTS]
    assert [(i.built, i.cached) for i in first.sources_info] == [(2, 0)]
    cached = sorted(fs.find(f"{base}/corpus/a.jsonl.qwen3-tokens"))
    assert [p.rsplit(".", 2)[-2:] for p in cached if not p.endswith(".json")] == [["offsets", "npy"],
                                                                                  ["tokens", "npy"]]
    again = build_loader(cfg, tok, micro_batch_size=1)
    assert [(i.built, i.cached) for i in again.sources_info] == [(0, 2)]
    assert _docs(again) == _docs(first)
    # the cache folders are not mistaken for data files
    assert [f.url for f in resolve_files(cfg.sources[0])] == [f"{s3_bucket}/corpus/a.jsonl",
                                                              f"{s3_bucket}/corpus/b.parquet"]


def test_unwritable_source_location_falls_back_to_local_cache(tmp_path, tok, write_jsonl, monkeypatch):
    write_jsonl(tmp_path / "ro" / "a.jsonl", [{"text": "Hello, world!"}])
    # a plain file where the cache folder would go: the location is not writable (also as root)
    (tmp_path / "ro" / "a.jsonl.qwen3-tokens").write_text("not a folder")
    cfg = _cfg([str(tmp_path / "ro" / "a.jsonl")], cache_dir=str(tmp_path / "fallback"))
    loader = build_loader(cfg, tok, micro_batch_size=1)
    shard = loader._rows[0].docs.shards[0]
    assert shard.built and shard.location.startswith(str(tmp_path / "fallback"))
    again = build_loader(cfg, tok, micro_batch_size=1)
    assert not again._rows[0].docs.shards[0].built and _docs(again) == [[9707, 11, 1879, 0]]


def test_changed_file_is_retokenised(tmp_path, tok, write_jsonl):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "Hello, world!"}])
    cfg = _cfg([str(path)])
    assert _docs(build_loader(cfg, tok, micro_batch_size=1)) == [[9707, 11, 1879, 0]]
    write_jsonl(path, [{"text": "Hello, world! Hello, world!"}])
    loader = build_loader(cfg, tok, micro_batch_size=1)
    assert loader.sources_info[0].built == 1
    assert _docs(loader) == [tok.encode("Hello, world! Hello, world!")]


def test_cached_arrays_match_a_fresh_tokenisation(tmp_path, tok, write_jsonl):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    build_loader(_cfg([str(path)]), tok, micro_batch_size=1)
    (manifest,) = (tmp_path / "a.jsonl.qwen3-tokens").glob("*.json")
    meta = json.loads(manifest.read_text())
    key = manifest.name.removesuffix(".json")
    tokens = np.load(tmp_path / "a.jsonl.qwen3-tokens" / f"{key}.tokens.npy")
    offsets = np.load(tmp_path / "a.jsonl.qwen3-tokens" / f"{key}.offsets.npy")
    expected = [tok.encode(t, allow_special=False) for t in TEXTS]
    assert tokens.dtype == np.uint32 and tokens.tolist() == sum(expected, [])
    assert offsets.tolist() == np.cumsum([0] + [len(e) for e in expected]).tolist()
    assert meta["num_docs"] == 4 and meta["num_tokens"] == len(tokens)


# ---- bad input: one line naming the source and the path ----

def test_missing_files_fail_early_with_one_line(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "ok.jsonl", [{"text": "x"}])
    cfg = DataConfig(seq_len=8, sources=[DataSource(name="web", paths=[str(tmp_path / "ok.jsonl")]),
                                         DataSource(name="code", paths=[str(tmp_path / "nope" / "*.jsonl")])])
    with pytest.raises(DataError) as err:
        validate_sources(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "'code'" in msg and str(tmp_path / "nope" / "*.jsonl") in msg
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"'e': no \.jsonl/\.jsonl\.gz/\.parquet files at .*empty"):
        validate_sources(_cfg_named("e", [str(tmp_path / "empty")]))


def test_missing_s3_object_fails_with_one_line(s3_bucket):
    with pytest.raises(DataError, match=r"^data source 's3src': no data files at s3://qwen3-data-tests/absent/x\.jsonl$"):
        validate_sources(_cfg_named("s3src", [f"{s3_bucket}/absent/x.jsonl"]))


def _cfg_named(name, paths) -> DataConfig:
    return DataConfig(seq_len=8, sources=[DataSource(name=name, paths=paths)])


@pytest.mark.parametrize("line, expected", [
    ('{"text": "ok"}\n{"text": broken}\n', r"a\.jsonl:2: invalid JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', r"a\.jsonl:2: field 'text' must be a string \(got missing\)"),
    ('{"text": 7}\n', r"a\.jsonl:1: field 'text' must be a string \(got int\)"),
    ('[1, 2]\n', r"a\.jsonl:1: field 'text' must be a string"),
])
def test_malformed_jsonl_records(tmp_path, tok, line, expected):
    (tmp_path / "a.jsonl").write_text(line)
    with pytest.raises(DataError, match=expected) as err:
        build_loader(_cfg([str(tmp_path / "a.jsonl")]), tok, micro_batch_size=1)
    assert "\n" not in str(err.value) and "'s'" in str(err.value)


def test_malformed_parquet(tmp_path, tok):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet: no column 'text' \(columns: body\)"):
        build_loader(_cfg([str(tmp_path / "a.parquet")]), tok, micro_batch_size=1)
    (tmp_path / "b.parquet").write_text("not parquet at all")
    with pytest.raises(DataError, match=r"b\.parquet: not a parquet file"):
        build_loader(_cfg([str(tmp_path / "b.parquet")]), tok, micro_batch_size=1)


def test_empty_documents_only(tmp_path, tok, write_jsonl):
    write_jsonl(tmp_path / "a.jsonl", [{"text": ""}, {"text": ""}])
    with pytest.raises(DataError, match="'s' has no non-empty documents"):
        build_loader(_cfg([str(tmp_path / "a.jsonl")]), tok, micro_batch_size=1)


def test_config_rejects_bad_values():
    with pytest.raises(ValidationError, match="extra"):
        DataConfig(seq_len=8, sources=[{"name": "a", "paths": ["x"]}], shuffle=True)
    with pytest.raises(ValidationError, match="greater than 0"):
        DataSource(name="a", paths=["x"], weight=0)
    with pytest.raises(ValidationError, match="duplicate source names: a"):
        DataConfig(seq_len=8, sources=[{"name": "a", "paths": ["x"]}, {"name": "a", "paths": ["y"]}])
    with pytest.raises(ValidationError, match="must be letters"):
        DataSource(name="a b", paths=["x"])
    with pytest.raises(ValidationError, match="format"):
        DataSource(name="a", paths=["x"], format="csv")


def test_ranks_building_a_cold_cache_at_once_agree(tmp_path, tok):
    """Without prepare_cache + barrier every rank tokenises; the atomic writes keep the cache valid."""
    from concurrent.futures import ThreadPoolExecutor

    from qwen3_trainer.platform.data.tiny_corpus import write_tiny_corpus

    write_tiny_corpus(str(tmp_path / "c"), megabytes=0.05, shards=2, seed=5)
    cfg = _cfg([str(tmp_path / "c")])
    with ThreadPoolExecutor(4) as pool:
        loaders = list(pool.map(lambda r: build_loader(cfg, tok, micro_batch_size=1, dp_rank=r, dp_world=4),
                                range(4)))
    assert all(_docs(x) == _docs(loaders[0]) for x in loaders)
    reread = build_loader(cfg, tok, micro_batch_size=1)
    assert reread.sources_info[0].built == 0 and _docs(reread) == _docs(loaders[0])
    leftovers = [p.name for p in (tmp_path / "c").glob("*.qwen3-tokens/*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_kind_decides_what_a_record_must_hold(tmp_path, tok, write_jsonl):
    write_jsonl(tmp_path / "c.jsonl", [{"messages": CHATS[0]}])
    with pytest.raises(DataError, match=r"c\.jsonl:1: field 'messages' must be a string \(got list\)"):
        build_loader(_cfg([str(tmp_path / "c.jsonl")], field="messages"), tok, micro_batch_size=1)
    write_jsonl(tmp_path / "t.jsonl", [{"text": "Hello"}])
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'text' must be a non-empty list of"):
        build_loader(_cfg([str(tmp_path / "t.jsonl")], kind="sft"), tok, micro_batch_size=1)


def test_prepare_cache_then_build_reuses_it(tmp_path, tok, write_jsonl):
    from qwen3_trainer.platform.data import prepare_cache

    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    cfg = _cfg([str(tmp_path / "a.jsonl")])
    (info,) = prepare_cache(cfg, tok)
    assert (info.built, info.docs) == (1, 4)
    assert build_loader(cfg, tok, micro_batch_size=1).sources_info[0].cached == 1
