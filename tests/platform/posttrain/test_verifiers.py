"""Rule verifiers: boxed extraction, math equivalence, format, and throwing verifiers."""

import pytest

from qwen3_trainer.platform.posttrain import verifiers as v


def test_extract_boxed_takes_the_last_with_nested_braces():
    assert v.extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert v.extract_boxed(r"\fbox{7}") == "7"
    assert v.extract_boxed("no box here 42") is None
    assert v.extract_boxed(r"\boxed{unclosed") is None


@pytest.mark.parametrize("pred,ref,equal", [
    ("0.5", r"\frac{1}{2}", True),
    ("1/2", "0.5", True),
    ("1,000", "1000", True),
    ("50%", "0.5", True),
    (r"\text{12}", "12", True),
    ("3.0000001", "3", True),      # within rel_tol 1e-6
    ("3.01", "3", False),
    ("-4", "4", False),
    ("x + 1", "x+1", True),        # not numbers: normalised strings
    ("Paris", "paris.", True),
    ("", "", False),
    (None, "3", False),
])
def test_math_equal(pred, ref, equal):
    assert v.math_equal(pred, ref) is equal


@pytest.mark.parametrize("pred,ref,equal", [
    ("47", "47", True),
    ("47.0", "47", True),
    (r"\frac{94}{2}", "47", True),
    (r"\dfrac{94}{2}", "47", True),
    ("46", "47", False),
    (r"\frac{93}{2}", "47", False),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),   # math-verify: not numbers, not equal strings
    ("(x+1)^2", "x^2+2x+1", True),
    (r"2\pi", r"\pi", False),
    (r"\{1, 2\}", r"\{2, 1\}", True),
    (r"\sqrt{8}", r"2\sqrt{2}", True),
    (r"\sqrt{8}", r"3\sqrt{2}", False),
])
def test_math_equal_with_math_verify(pred, ref, equal):
    assert v.math_equal(pred, ref) is equal
    assert v.math_reward(f"<think>\n\n</think>\n\n\\boxed{{{pred}}}", ref) == float(equal)


def test_plain_numbers_never_reach_sympy(monkeypatch):
    """The miniature's integer answers stay on the fast paths (exact string, then numbers)."""
    monkeypatch.setattr(v, "symbolic_equal", lambda *a: pytest.fail("math-verify called"))
    assert v.math_reward("\\boxed{47}", "47") == 1.0 and v.math_reward("\\boxed{46}", "47") == 0.0
    assert v.math_equal("47.0", "47") and v.math_equal(r"\frac{94}{2}", "47")


def test_math_equal_tolerance_is_configurable():
    assert not v.math_equal("3.1", "3")
    assert v.math_equal("3.1", "3", rel_tol=0.05)


def test_math_reward_reads_the_answer_after_the_thinking():
    assert v.math_reward("<think>\n2+2=5 \\boxed{5}\n</think>\n\n\\boxed{4}", "4") == 1.0
    assert v.math_reward("<think>\n\\boxed{4}\n</think>\n\nfour", "4") == 0.0  # boxed only inside the thoughts
    assert v.math_reward("the answer is 4", "4") == 0.0  # unboxed earns nothing
    assert v.math_reward("\\boxed{4}", "4") == 1.0


def test_format():
    think = "<think>\n3+5=8\n</think>\n\n\\boxed{8}"
    empty = "<think>\n\n</think>\n\n\\boxed{8}"
    assert v.format_ok(think) and v.format_ok(think, thinking=True) and not v.format_ok(think, thinking=False)
    assert v.format_ok(empty, thinking=False) and not v.format_ok(empty, thinking=True)
    assert not v.format_ok("<think>\nno close \\boxed{8}")
    assert not v.format_ok("</think><think>\\boxed{8}")
    assert not v.format_ok("<think>a</think><think>b</think>\\boxed{8}")
    assert not v.format_ok("<think>\nx\n</think>\n\n8")  # no box
    assert v.format_reward(think, True) == 1.0


def test_split_thinking():
    assert v.split_thinking("<think>\nabc\n</think>\n\nans") == ("abc", "ans")
    assert v.split_thinking("ans only") == (None, "ans only")


def test_safe_reward_counts_exceptions_as_zero():
    def broken(response, answer):
        raise RuntimeError("verifier bug")

    safe = v.SafeReward(broken, "broken")
    assert [safe("x", "1") for _ in range(5)] == [0.0] * 5
    assert safe.error_count == 5 and safe.errors["RuntimeError"] == 5
    nan = v.SafeReward(lambda r, a: float("nan"), "nan")
    assert nan("x", "1") == 0.0 and nan.error_count == 1
    assert v.SafeReward(v.math_reward, "math")("\\boxed{2}", "2") == 1.0


def test_response_text_drops_padding_rows_and_adds_the_prefill():
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.rollouts import response_text

    tok = load_tokenizer()
    ids = tok.encode("\\boxed{4}") + [151776, tok.im_end]  # 151776: a padding row sampling can reach
    assert response_text(tok, [{"role": "user", "content": "q /think"}], ids) == "\\boxed{4}"
    assert response_text(tok, [{"role": "user", "content": "q /no_think"}], ids) == "<think>\n\n</think>\n\n\\boxed{4}"
