"""Procedural problems are correct and verifiable; the record reader takes jsonl, jsonl.gz and parquet."""

import gzip
import json
import random
import re

import pytest

from qwen3_trainer.platform.data import synthetic as syn
from qwen3_trainer.platform.posttrain import verifiers


@pytest.mark.parametrize("difficulty", [0, 1, 2, 3, 4, 5])
def test_answers_are_right_and_verify(difficulty):
    rng = random.Random(difficulty)
    for _ in range(50):
        p = syn.make_problem(rng, difficulty)
        if difficulty != 4:
            expr = re.fullmatch(r"What is (.+)\?", p.question).group(1)
            assert str(eval(expr)) == p.answer  # noqa: S307 - our own arithmetic strings
        else:
            n, per, give = map(int, re.findall(r"\d+", p.question))
            assert p.answer == str(n * per - give)
        assert verifiers.math_reward(p.thinking(), p.answer) == 1.0
        assert verifiers.format_ok(p.thinking(), thinking=True)
        assert verifiers.math_reward(p.direct(), p.answer) == 1.0
        assert p.steps[-1].rstrip(".").endswith(p.answer)  # the worked solution ends at the answer


def test_split_is_disjoint_and_seeded():
    a_train, a_test = syn.split_problems(56, 25, seed=0, difficulties=[0])
    b_train, _ = syn.split_problems(56, 25, seed=0, difficulties=[0])
    assert a_train == b_train
    assert not {p.question for p in a_train} & {p.question for p in a_test}
    with pytest.raises(ValueError, match="only 81 distinct problems"):
        syn.split_problems(70, 20, difficulties=[0])
    train, held = syn.split_problems(600, 200, seed=0, difficulties=[5])  # 891 distinct: room for both
    assert len({p.question for p in train + held}) == 800


def test_record_shapes():
    p = syn.make_problem(random.Random(0), 2)
    think = syn.sft_record(p, thinking=True)["messages"]
    assert think[-1]["content"].startswith("<think>\n") and "\\boxed{" in think[-1]["content"]
    direct = syn.sft_record(p, thinking=False, flag="/no_think")["messages"]
    assert direct[0]["content"].endswith(" /no_think") and direct[-1]["content"] == p.direct()
    q = syn.query_record(p)
    assert q["prompt"] == [{"role": "user", "content": p.question}] and q["answer"] == p.answer


def test_preference_pairs_prefer_the_correct_answer():
    rng = random.Random(0)
    for p in syn.problems(30, seed=1, difficulties=[0, 1, 2, 3, 4]):
        rec = syn.preference_record(p, rng)
        assert verifiers.math_reward(rec["chosen"][-1]["content"], p.answer) == 1.0
        assert verifiers.math_reward(rec["rejected"][-1]["content"], p.answer) == 0.0


def test_read_records_jsonl_gz_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [syn.query_record(p) for p in syn.problems(5, seed=2)]
    syn.write_jsonl(str(tmp_path / "a" / "q.jsonl"), recs[:2])
    with gzip.open(tmp_path / "a" / "q2.jsonl.gz", "wt") as fh:
        fh.write(json.dumps(recs[2]) + "\n")
    pq.write_table(pa.Table.from_pylist(recs[3:]), tmp_path / "a" / "q3.parquet")
    got = list(syn.read_records(str(tmp_path / "a")))
    assert sorted(r["question"] for r in got) == sorted(r["question"] for r in recs)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        list(syn.read_records(str(tmp_path / "bad.jsonl")))
    with pytest.raises(ValueError, match="no data files"):
        list(syn.read_records(str(tmp_path / "missing.jsonl")))


def test_read_records_from_s3(s3_bucket):
    url = f"{s3_bucket}/posttrain/q.jsonl"
    recs = [syn.query_record(p) for p in syn.problems(3, seed=3)]
    assert syn.write_jsonl(url, recs) == 3
    assert [r["answer"] for r in syn.read_records(url)] == [r["answer"] for r in recs]
