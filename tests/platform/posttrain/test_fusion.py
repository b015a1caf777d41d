"""Thinking-mode fusion rules: flags in user or system messages, no flag = thinking, empty think blocks
on non-thinking answers, the last flag wins in multi-turn dialogs, malformed inputs counted."""

from qwen3_trainer.model.chat_template import render_for_training, thinking_enabled
from qwen3_trainer.model.tokenizer import load_tokenizer
from qwen3_trainer.platform.data import synthetic as syn
from qwen3_trainer.platform.posttrain import fusion, verifiers


def _build(n=120, **kw):
    probs = syn.problems(n, seed=5, difficulties=[0, 1, 2, 3, 4])
    thinking = [syn.sft_record(p, thinking=True) for p in probs[: n // 2]]
    nonthinking = [syn.sft_record(p, thinking=False) for p in probs[n // 2:]]
    return fusion.build_fusion(thinking, nonthinking, seed=0, **kw)


def test_every_sample_follows_the_rules():
    records, stats = _build()
    assert len(records) == 120 and not any(k.startswith("rejected") for k in stats)
    for rec in records:
        msgs = rec["messages"]
        assert fusion.check_sample(msgs) is None
        thought, answer = verifiers.split_thinking(msgs[-1]["content"])
        assert bool(thought) == thinking_enabled(msgs[:-1])
        if not thought:
            assert msgs[-1]["content"].startswith("<think>\n\n</think>\n\n")
        assert verifiers.extract_boxed(answer) is not None


def test_flag_mix():
    records, stats = _build(400)
    assert stats["think_no_flag"] > 0 and stats["think_flag"] > 0 and stats["no_think"] > 0
    assert stats["multiturn"] > 0
    firsts = [r["messages"][0] for r in records]
    assert any(m["role"] == "system" and m["content"].endswith("/no_think") for m in firsts)
    assert any(m["role"] == "system" and m["content"].endswith("/think") for m in firsts)
    unflagged = [r for r in records if not any("/think" in m["content"] or "/no_think" in m["content"]
                                               for m in r["messages"][:-1])]
    assert unflagged and all(verifiers.split_thinking(r["messages"][-1]["content"])[0] for r in unflagged)
    # multi-turn dialogs where the flags disagree: the final answer follows the last one
    multi = [r["messages"] for r in records if sum(m["role"] == "user" for m in r["messages"]) > 1]
    conflicting = [m for m in multi if {"/think", "/no_think"} <= {w for x in m for w in x["content"].split()}]
    assert conflicting
    for msgs in conflicting:
        assert bool(verifiers.split_thinking(msgs[-1]["content"])[0]) == thinking_enabled(msgs[:-1])


def test_rendered_non_thinking_sample_trains_on_the_empty_block():
    tok = load_tokenizer()
    msgs = [{"role": "user", "content": "What is 2+2? /no_think"},
            {"role": "assistant", "content": "<think>\n\n</think>\n\n\\boxed{4}"}]
    ids, mask = render_for_training(msgs, tok)
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "<think>\n\n</think>\n\n\\boxed{4}<|im_end|>"


def test_check_sample_by_hand():
    think = "<think>\n2+2=4\n</think>\n\n\\boxed{4}"
    empty = "<think>\n\n</think>\n\n\\boxed{4}"
    u = lambda c: {"role": "user", "content": c}  # noqa: E731
    a = lambda c: {"role": "assistant", "content": c}  # noqa: E731
    assert fusion.check_sample([u("q"), a(think)]) is None  # no flag: thinking
    assert fusion.check_sample([u("q"), a(empty)]) == "mode does not match the flags"
    assert fusion.check_sample([u("q /no_think"), a("4"), u("q /think"), a(think)]) is None
    assert fusion.check_sample([u("q /think"), a("4"), u("q /no_think"), a(empty)]) is None
    assert fusion.check_sample([{"role": "system", "content": "s /no_think"}, u("q"), a(empty)]) is None
    assert fusion.check_sample([u("q"), a("<think>\nopen")]) == "unbalanced think tags"
    assert fusion.check_sample([u("q")]) == "no final assistant turn"


def test_malformed_inputs_are_skipped_and_counted():
    good = syn.sft_record(syn.problems(1, seed=1)[0], thinking=True)
    bad = [{"messages": [{"role": "user", "content": "only a question"}]},
           {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nno close"}]},
           {"nothing": True}]
    records, stats = fusion.build_fusion([good, *bad], [], seed=0)
    assert len(records) == 1 and stats["skipped_malformed"] == 3


def test_rejection_sample_keeps_only_verified_thinking(hf_checkpoint):
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    tok = load_tokenizer()
    engine = LocalRolloutEngine(frozen_model(hf_checkpoint(), "cpu"), tok)
    queries = [syn.query_record(p) for p in syn.problems(3, seed=2)]
    kept, stats = fusion.rejection_sample(engine, tok, queries, samples=2, max_new_tokens=6)
    assert kept == [] and stats["no_verified_sample"] == 3  # a random-init model verifies nothing
