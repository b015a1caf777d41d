"""Cold-start filters: each rule judge catches its defect, the good candidate survives, model judges
run through the real generation engine."""

import json
import random

from qwen3_trainer.platform.data import synthetic as syn
from qwen3_trainer.platform.posttrain import coldstart as cs


def test_pool_filtering_keeps_exactly_the_good_candidates(tmp_path):
    train, _ = syn.split_problems(60, 10, seed=0, difficulties=[0, 1, 2, 3, 4])
    pool = syn.coldstart_pool(train, seed=0)
    report = cs.run_coldstart(pool, str(tmp_path / "sft.jsonl"))
    kinds = [r.get("kind") for r in pool]
    qd = report["query_dropped"]
    assert qd.get("multi_question", 0) == kinds.count("multi")
    assert qd.get("unverifiable", 0) == kinds.count("unverifiable")
    assert qd.get("answerable_without_cot", 0) >= kinds.count("trivial") > 0
    kept = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert len(kept) == report["samples"] == report["queries_kept"]
    good = {c["response"] for r in pool for c in r["candidates"] if c["defect"] is None}
    assert all(s["messages"][-1]["content"] in good for s in kept)  # only flawless answers survive
    # every defect kind is caught by its judge, for every kept query
    rd = report["response_dropped"]
    n = report["queries_kept"]
    assert rd["wrong_answer"] == n and rd["repetition"] == n and rd["language_mixing"] == n
    assert rd["malformed_think_tags"] == n
    # a guess has no thinking that supports its answer: caught as guesswork or as a summary mismatch
    assert rd.get("guesswork", 0) + rd["thinking_summary_mismatch"] == 2 * n


def test_each_rule_judge():
    rec = {"question": "What is 3+4?", "answer": "7", "prompt": [{"role": "user", "content": "What is 3+4?"}]}
    good = "<think>\n3+4=7\n</think>\n\n\\boxed{7}"
    assert all(j(rec, good) is None for j in cs.DEFAULT_RESPONSE_JUDGES)
    assert cs.wrong_answer(rec, good.replace("{7}", "{8}")) == "wrong_answer"
    assert cs.repetition(rec, "<think>\n" + "3+4=7\n" * 3 + "</think>\n\n\\boxed{7}") == "repetition"
    assert cs.summary_mismatch(rec, "<think>\n3+4=8\n</think>\n\n\\boxed{7}") == "thinking_summary_mismatch"
    assert cs.language_mixing(rec, "<think>\n3+4=7 所以\n</think>\n\n\\boxed{7}") == "language_mixing"
    assert cs.language_mixing({**rec, "question": "3+4 等于多少?"}, "<think>\n所以 7\n</think>\\boxed{7}") is None
    assert cs.guesswork(rec, "<think>\nI guess\n</think>\n\n\\boxed{7}") == "guesswork"
    assert cs.malformed(rec, "<think>\n3+4=7\n\\boxed{7}") == "malformed_think_tags"
    assert cs.malformed(rec, "<think>\n\n</think>\n\n\\boxed{7}") == "empty_thinking"
    assert cs.multi_question({"question": "What is 1+1? And what is 2+2?"}) == "multi_question"
    assert cs.multi_question({"question": "Solve (a) 1+1 (b) 2+2"}) == "multi_question"
    assert cs.multi_question({"question": "What is 1+1?"}) is None
    assert cs.unverifiable({"question": "Write a poem.", "answer": ""}) == "unverifiable"
    assert cs.unverifiable({"answer": "a long free-form essay answer"}) == "unverifiable"
    assert cs.answer_in_query({"question": "Repeat 12.", "answer": "12"}) == "answerable_without_cot"
    assert cs.answer_in_query({"question": "What is 112+3?", "answer": "12"}) is None


class ScriptedEngine:
    """A RolloutEngine that replies with fixed text (the engine itself is tested in tests/model)."""

    def __init__(self, tok, text):
        self.tok, self.text = tok, text

    def generate(self, prompts, params):
        from qwen3_trainer.model.generation import GenerationOutput

        ids = self.tok.encode(self.text) + [self.tok.im_end]
        return GenerationOutput([list(ids) for _ in prompts], [[0.0] * len(ids) for _ in prompts],
                                [[False] * len(ids) for _ in prompts], ["stop"] * len(prompts))


def test_model_judges_through_generation(hf_checkpoint):
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    tok = load_tokenizer()
    rec = syn.query_record(syn.make_problem(random.Random(0), 0))
    # a random-init model cannot answer without thinking: the query is kept
    engine = LocalRolloutEngine(frozen_model(hf_checkpoint(), "cpu"), tok)
    assert cs.NoCotModelJudge(engine, tok, samples=2, max_new_tokens=4)(rec) is None
    assert cs.ModelResponseJudge(engine, tok)(rec, "<think>\nx\n</think>\n\n\\boxed{1}") == "model_judge"
    # a model that answers right without thinking: dropped; a judge that says yes: kept
    right = ScriptedEngine(tok, "\\boxed{" + rec["answer"] + "}")
    assert cs.NoCotModelJudge(right, tok, samples=2)(rec) == "answerable_without_cot"
    assert cs.ModelResponseJudge(ScriptedEngine(tok, "yes"), tok)(rec, "anything") is None
    kept, dropped = cs.filter_queries([rec], [cs.NoCotModelJudge(right, tok, samples=2)])
    assert kept == [] and dropped == {"answerable_without_cot": 1}


def test_sample_candidates_attaches_teacher_responses(hf_checkpoint):
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    tok = load_tokenizer()
    recs = [syn.query_record(p) for p in syn.problems(2, seed=4)]
    engine = LocalRolloutEngine(frozen_model(hf_checkpoint(), "cpu"), tok)
    out = cs.sample_candidates(engine, tok, recs, n=3, max_new_tokens=5)
    assert [len(r["candidates"]) for r in out] == [3, 3]
    samples, dropped = cs.filter_responses(out)
    assert samples == [] and dropped["query_without_passing_response"] == 2  # random text fails the filter
