"""Reward spec: rule, instruction and model-based components; errors counted; vocabulary checks."""

import pytest

from qwen3_trainer.platform.posttrain import rewards as R


def _rec(**kw):
    return {"prompt": [{"role": "user", "content": "What is 2+3?"}], "answer": "5", "question": "What is 2+3?", **kw}


def test_instruction_checks():
    resp = "<think>\nIGNORED WORDS here\n</think>\n\nthe answer is \\boxed{5}."
    rec = _rec(constraints=[{"type": "lowercase"}, {"type": "ends_with", "value": "."},
                            {"type": "max_words", "value": 3}, {"type": "include", "value": "answer"},
                            {"type": "boxed"}, {"type": "json"}])
    # lowercase, ends_with, include, boxed hold; 4 words > 3; not JSON -> 4/6
    assert R.instruction_reward(rec, resp) == pytest.approx(4 / 6)
    assert R.instruction_reward(_rec(constraints=[{"type": "json"}]), '{"a": 1}') == 1.0
    assert R.instruction_reward(_rec(), "x") == 0.0


def test_weighted_sum_and_parts():
    fn = R.RewardFunction([{"name": "math"}, {"name": "format", "weight": 0.5}])
    good = "<think>\n2+3=5\n</think>\n\n\\boxed{5}"
    scores = fn([_rec(), _rec(), _rec()], [good, "\\boxed{5}", "<think>\n\n</think>\n\n\\boxed{4}"], [True, True, False])
    assert scores == [1.5, 1.0, 0.5]
    assert fn.last == {"reward/math": pytest.approx(2 / 3), "reward/format": pytest.approx(2 / 3)}


def test_throwing_component_is_zero_and_counted():
    fn = R.RewardFunction([{"name": "math"}, {"name": "instruction"}])
    recs = [{"prompt": []}, _rec(constraints=[{"type": "no_such_check"}])]  # no answer; unknown check
    assert fn(recs, ["\\boxed{5}", "\\boxed{5}"], [True, True]) == [0.0, 1.0]
    assert fn.error_count == 2


@pytest.mark.parametrize("spec,message", [
    ([{"name": "nope"}], r"rewards\[0\].name: unknown component 'nope'"),
    ([{"name": "math"}, {"name": "reward_model"}], r"rewards\[1\]: reward_model needs model \(or params.path\)"),
    ([], "no reward components"),
    ([{"name": "math", "wieght": 2}], r"rewards\[0\]: unknown key 'wieght'"),
    ([{"name": "math", "weight": "2"}], r"rewards\[0\].weight: must be a number"),
    ([{"name": "judge", "model": "m", "params": {"batch": 0}}], r"rewards\[0\].params.batch"),
    ([{"name": "format", "params": {"x": 1}}], r"rewards\[0\].params: format takes no params"),
])
def test_bad_specs_are_one_line_errors_before_any_model_loads(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        R.RewardFunction(spec)
    assert "\n" not in str(err.value)


def test_reward_model_and_judge_score_with_real_models(hf_checkpoint):
    from qwen3_trainer.model.tokenizer import load_tokenizer

    tok = load_tokenizer()
    spec = [{"name": "reward_model", "params": {"path": hf_checkpoint()}},
            {"name": "judge", "params": {"path": hf_checkpoint(seed=1)}}]
    fn = R.RewardFunction(spec, tokenizer=tok, vocab_size=151936)
    scores = fn([_rec(), _rec()], ["\\boxed{5}", "\\boxed{7}"], [False, False])
    assert len(scores) == 2 and scores[0] != scores[1]
    assert 0 < fn.last["reward/judge"] < 1  # p(yes) among {yes, no}


def test_reward_model_with_another_vocabulary_is_one_line_error(hf_checkpoint):
    from qwen3_trainer.model.tokenizer import load_tokenizer

    with pytest.raises(ValueError, match="reward model .* has a vocabulary of 152000 rows but the policy has 151936"):
        R.RewardFunction([{"name": "reward_model", "params": {"path": hf_checkpoint(vocab_size=152000)}}],
                         tokenizer=load_tokenizer(), vocab_size=151936)


def test_judge_scores_a_batch_per_forward_as_one_by_one(hf_checkpoint):
    """``{name: judge, model: ...}``: 3 responses in forwards of 2 (right-padded) equal 3 forwards of 1;
    a record without a reference answer gets the reference-free question."""
    from qwen3_trainer.model.tokenizer import load_tokenizer

    tok = load_tokenizer()
    judge = R.RewardFunction([{"name": "judge", "model": hf_checkpoint(seed=1), "params": {"batch": 2}}],
                             tokenizer=tok, vocab_size=151936).parts[0][2]
    calls = []
    forward = judge.model.forward
    judge.model.forward = lambda ids: calls.append(ids.shape) or forward(ids)
    recs = [_rec(), _rec(answer="12345678"), {"prompt": _rec()["prompt"]}]
    responses = ["\\boxed{5}", "a much longer response, \\boxed{7}", "\\boxed{5}"]
    batched = judge(recs, responses, [False] * 3)
    assert [s[0] for s in calls] == [2, 1]
    judge.batch = 1
    assert batched == pytest.approx(judge(recs, responses, [False] * 3), abs=1e-5)
    assert "Reference answer" not in tok.decode(judge.prompt_ids(recs[2], responses[2]))
