"""Rule verifiers for RL rewards: math answer equivalence and response format.

- ``extract_boxed``: the content of the last ``\\boxed{…}`` (nested braces kept), else None.
- ``final_answer``: what a response answers: the text after ``</think>`` when present, its last
  ``\\boxed{}`` (verifiable answers must be boxed; an unboxed number earns nothing).
- ``math_equal``: two fast paths, then math-verify (HF's LaTeX / sympy answer checker, the one TRL's
  and open-r1's accuracy rewards use): normalised strings (spaces, ``\\text{}``, ``$``, case) equal;
  plain numbers (ints, decimals, ``a/b``, ``\\frac{a}{b}``, thousands commas, ``%``) equal within
  ``rel_tol``/``abs_tol``; otherwise ``math_verify.verify(parse(\\boxed{ref}), parse(\\boxed{pred}))``
  (expressions, roots, sets, intervals, equations: ``\\frac{\\sqrt{2}}{2}`` = ``1/\\sqrt{2}``).
- ``format_ok``: one balanced ``<think>…</think>`` block, then an answer with ``\\boxed{}``; in
  non-thinking mode the block must be empty, in thinking mode non-empty.

``SafeReward`` wraps any reward function: an exception counts as reward 0 plus one counted warning,
never a crash in the middle of an RL run.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

log = logging.getLogger("qwen3_trainer.posttrain")

_FRAC = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")
_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else None."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            best = text[m.end(): i - 1]
    return best


def split_thinking(response: str) -> tuple[str | None, str]:
    """(thinking text or None when there is no closed block, the answer after ``</think>``)."""
    if "</think>" not in response:
        return None, response
    head, _, tail = response.rpartition("</think>")
    return head.split("<think>")[-1].strip(), tail.strip()


def final_answer(response: str) -> str | None:
    return extract_boxed(split_thinking(response)[1])


def parse_number(s: str) -> float | None:
    t = _TEXT.sub(r"\1", s).replace("$", "").replace("\\!", "").replace("\\,", "").strip()
    t = _FRAC.sub(r"(\1)/(\2)", t).replace(" ", "")
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)
    percent = t.endswith("%") or t.endswith("\\%")
    t = t.rstrip("%").removesuffix("\\").rstrip(".")
    t = re.sub(r"^\((.*)\)$", r"\1", t)
    frac = re.fullmatch(r"\(?([+-]?[\d.]+)\)?/\(?([+-]?[\d.]+)\)?", t)
    try:
        if frac:
            value = float(Fraction(frac.group(1)) / Fraction(frac.group(2)))
        elif _NUM.match(t):
            value = float(t)
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def _normalise(s: str) -> str:
    s = _TEXT.sub(r"\1", s).replace("$", "")
    return re.sub(r"\s+", "", s).lower().rstrip(".")


MATH_VERIFY_TIMEOUT_S = 5  # per parse / comparison (sympy can hang on adversarial LaTeX)


def math_equal(pred: str | None, ref: str, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    if pred is None:
        return False
    if _normalise(pred) == _normalise(ref) and _normalise(ref) != "":
        return True
    a, b = parse_number(pred), parse_number(ref)
    if a is not None and b is not None:  # the miniature's answers: no sympy needed
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    return symbolic_equal(pred, ref)


def symbolic_equal(pred: str, ref: str) -> bool:
    """math-verify's verdict on two boxed answers (LaTeX or plain)."""
    import threading

    from math_verify import parse, verify

    # math-verify times out by signal.alarm, which only the main thread may set
    timeout = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=timeout)
    answer = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
    return bool(gold and answer and verify(gold, answer, timeout_seconds=timeout))


def math_reward(response: str, answer: str, **tol: float) -> float:
    """1.0 if the boxed final answer equals the reference, else 0.0."""
    return float(math_equal(final_answer(response), str(answer), **tol))


def think_tags_balanced(response: str) -> bool:
    return response.count("<think>") == response.count("</think>") <= 1 and (
        "<think>" not in response or response.index("<think>") < response.index("</think>"))


def format_ok(response: str, thinking: bool | None = None) -> bool:
    """One balanced think block (empty iff non-thinking), then a boxed answer after it."""
    if not think_tags_balanced(response) or "</think>" not in response:
        return False
    thought, answer = split_thinking(response)
    if extract_boxed(answer) is None:
        return False
    if thinking is None:
        return True
    return bool(thought) == thinking


def format_reward(response: str, thinking: bool | None = None) -> float:
    return float(format_ok(response, thinking))


class SafeReward:
    """Calls ``fn``; an exception gives 0.0 and a counted warning (logged the first few times)."""

    def __init__(self, fn: Callable[..., float], name: str):
        self.fn, self.name = fn, name
        self.errors: Counter[str] = Counter()

    def __call__(self, *args, **kwargs) -> float:
        try:
            value = float(self.fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - a verifier bug must not stop training
            key = type(exc).__name__
            self.errors[key] += 1
            if sum(self.errors.values()) <= 3:
                log.warning("reward %s raised %s: %s (counted as 0)", self.name, key, exc)
            return 0.0
        if not math.isfinite(value):
            self.errors["non_finite"] += 1
            return 0.0
        return value

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())
