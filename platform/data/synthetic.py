"""Procedurally generated, verifiable post-training data: no downloads.

Problems come in five difficulty levels, each with a worked solution and one exact answer:

- 0: place-value addition (``40+7``): tens plus units, solved by copying digits — the one task a
  debugmodel-sized Qwen3 (dim 64, 2 layers) learns and generalises to unseen problems in minutes;
- 1: single-digit addition (``3+5``): 100 facts to memorise;
- 2: two-step arithmetic (``12+7-5``);
- 3: multi-step arithmetic with a product (``(4*6)+9-3``);
- 4: word problems (``Ana has 7 boxes of 4 pens and gives away 5. How many pens are left?``);
- 5: place-value addition up to hundreds (``340+7``): level 0's task over 891 problems, enough for
  disjoint train and held-out sets of hundreds each.

Renderings (chat ``messages`` records, the form platform.data's ``sft`` kind reads):

- thinking: ``<think>\\n{steps}\\n</think>\\n\\nThe answer is \\boxed{x}.`` as the assistant content;
- non-thinking: ``\\boxed{x}`` (the chat template renders the empty think block);
- RL queries: ``{"prompt": [user turn], "answer": "x"}`` for verifier-rewarded rollouts;
- preference pairs: ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` for the reward model;
- cold-start candidates: good and deliberately defective responses (wrong answer, repetition,
  summary that contradicts the thinking, language mixing, guesswork) for the response filter.

``read_records`` reads the same record shapes from real jsonl/parquet files, local or ``s3://``.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana")
ITEMS = ("apples", "pens", "books", "stamps", "marbles", "cards")
CONTAINERS = ("boxes", "bags", "jars", "packs")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    steps: tuple[str, ...]  # the worked solution, one line per step
    difficulty: int

    def thinking(self) -> str:
        return "<think>\n" + "\n".join(self.steps) + "\n</think>\n\n\\boxed{" + self.answer + "}"

    def direct(self) -> str:
        return "\\boxed{" + self.answer + "}"


def _arith(rng: random.Random, difficulty: int) -> Problem:
    if difficulty in (0, 5):
        a, b = 10 * rng.randint(1, 9 if difficulty == 0 else 99), rng.randint(1, 9)
        return Problem(f"What is {a}+{b}?", str(a + b), (f"{a}+{b}={a + b}",), difficulty)
    if difficulty == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return Problem(f"What is {a}+{b}?", str(a + b), (f"{a}+{b}={a + b}",), 1)
    if difficulty == 2:
        a, b = rng.randint(10, 40), rng.randint(1, 20)
        c = rng.randint(1, a + b)
        s = a + b
        return Problem(f"What is {a}+{b}-{c}?", str(s - c), (f"{a}+{b}={s}", f"{s}-{c}={s - c}"), 2)
    a, b, c, d = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 30), rng.randint(1, 20)
    p = a * b
    return Problem(f"What is ({a}*{b})+{c}-{d}?", str(p + c - d),
                   (f"{a}*{b}={p}", f"{p}+{c}={p + c}", f"{p + c}-{d}={p + c - d}"), 3)


def _word(rng: random.Random) -> Problem:
    who, item, box = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(CONTAINERS)
    n, per = rng.randint(2, 9), rng.randint(2, 12)
    give = rng.randint(1, n * per)
    total = n * per
    q = f"{who} has {n} {box} of {per} {item} and gives away {give}. How many {item} are left?"
    steps = (f"{who} starts with {n}*{per}={total} {item}.", f"After giving away {give}: {total}-{give}={total - give}.")
    return Problem(q, str(total - give), steps, 4)


def make_problem(rng: random.Random, difficulty: int) -> Problem:
    if difficulty not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"difficulty must be 0..5, got {difficulty}")
    return _word(rng) if difficulty == 4 else _arith(rng, difficulty)


def problems(n: int, *, seed: int = 0, difficulties: Iterable[int] = (0,), unique: bool = False) -> list[Problem]:
    """``n`` problems, difficulty drawn uniformly from ``difficulties``. ``unique`` drops repeated
    questions (levels 0 and 1 have only 81 and 100, level 5 has 891)."""
    rng = random.Random(seed)
    levels = list(difficulties)
    out, seen = [], set()
    tries = 0
    while len(out) < n and tries < n * 50:
        tries += 1
        p = make_problem(rng, rng.choice(levels))
        if unique and p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def split_problems(n_train: int, n_test: int, *, seed: int = 0, difficulties: Iterable[int] = (0,)):
    """Disjoint train / held-out problem sets (by question text)."""
    allp = problems(n_train + n_test, seed=seed, difficulties=difficulties, unique=True)
    if len(allp) < n_train + n_test:
        raise ValueError(f"only {len(allp)} distinct problems at difficulties {list(difficulties)}")
    return allp[:n_train], allp[n_train:]


# ---------------------------------------------------------------- record shapes


def user_turn(p: Problem, flag: str = "") -> dict:
    return {"role": "user", "content": p.question + (f" {flag}" if flag else "")}


def sft_record(p: Problem, *, thinking: bool, flag: str = "") -> dict:
    """A chat sample: the thinking form keeps the worked steps, the non-thinking form answers directly."""
    answer = p.thinking() if thinking else p.direct()
    return {"messages": [user_turn(p, flag), {"role": "assistant", "content": answer}], "answer": p.answer,
            "difficulty": p.difficulty}


def query_record(p: Problem, flag: str = "") -> dict:
    """An RL query: the prompt turns and the reference answer the verifier checks against."""
    return {"prompt": [user_turn(p, flag)], "answer": p.answer, "question": p.question,
            "difficulty": p.difficulty}


def preference_record(p: Problem, rng: random.Random) -> dict:
    """Chosen: the correct worked answer; rejected: a wrong answer, a missing box, or rambling."""
    wrong = str(int(p.answer) + rng.choice([-3, -2, -1, 1, 2, 3]))
    kind = rng.choice(["wrong", "unboxed", "ramble"])
    if kind == "wrong":
        bad = p.thinking().replace("\\boxed{" + p.answer + "}", "\\boxed{" + wrong + "}")
    elif kind == "unboxed":
        bad = f"I think it is maybe {wrong}."
    else:
        bad = "Let me see. " * 4 + "\\boxed{" + wrong + "}"
    prompt = [user_turn(p)]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": p.thinking()}],
            "rejected": [{"role": "assistant", "content": bad}], "answer": p.answer, "kind": kind}


def candidate_responses(p: Problem, rng: random.Random) -> list[dict]:
    """Cold-start candidates for one query, as a teacher might produce them: one good, the rest
    defective in the ways the report's response filter removes. ``defect`` names the flaw (for tests
    and reports only; the filter never reads it)."""
    wrong = str(int(p.answer) + rng.choice([-2, -1, 1, 2]))
    steps = "\n".join(p.steps)
    good = p.thinking()
    cands = [
        {"response": good, "defect": None},
        {"response": good.replace("\\boxed{" + p.answer + "}", "\\boxed{" + wrong + "}"), "defect": "wrong"},
        {"response": "<think>\n" + (steps + "\n") * 6 + "</think>\n\nThe answer is \\boxed{" + p.answer + "}.",
         "defect": "repetition"},
        {"response": "<think>\n" + steps.replace(p.answer, wrong) + "\n</think>\n\nThe answer is \\boxed{"
         + p.answer + "}.", "defect": "mismatch"},
        {"response": "<think>\n" + steps + "\n所以答案是 " + p.answer + "。\n</think>\n\nThe answer is \\boxed{"
         + p.answer + "}.", "defect": "language_mixing"},
        {"response": "<think>\nI am not sure, I will just guess.\n</think>\n\nProbably \\boxed{" + p.answer + "}.",
         "defect": "guesswork"},
        {"response": "<think>\n" + steps + "\nThe answer is \\boxed{" + p.answer + "}.", "defect": "unbalanced"},
    ]
    rng.shuffle(cands)
    return cands


def coldstart_pool(pool: list[Problem], *, seed: int = 0, difficulties: Iterable[int] = (0, 1, 2, 3, 4)) -> list[dict]:
    """Cold-start queries over ``pool`` (keep held-out problems out of it), each with teacher-like
    candidates; about 30% are rewritten into queries the query filter must drop: multi-sub-question,
    unverifiable (no single answer), and answerable without reasoning (answer in the question)."""
    rng = random.Random(seed + 1)
    out = []
    for p in pool:
        rec = {**query_record(p), "candidates": candidate_responses(p, rng)}
        roll = rng.random()
        if roll < 0.1:
            q = make_problem(rng, rng.choice(list(difficulties)))
            rec["question"] = p.question + " Also, " + q.question[0].lower() + q.question[1:]
            rec["prompt"] = [{"role": "user", "content": rec["question"]}]
            rec["kind"] = "multi"
        elif roll < 0.2:
            rec["question"] = f"Write a short poem about {rng.choice(ITEMS)}."
            rec["prompt"] = [{"role": "user", "content": rec["question"]}]
            rec["answer"] = ""
            rec["kind"] = "unverifiable"
        elif roll < 0.3:
            rec["question"] = f"Repeat the number {p.answer}."
            rec["prompt"] = [{"role": "user", "content": rec["question"]}]
            rec["kind"] = "trivial"
        out.append(rec)
    return out


# ---------------------------------------------------------------- files


def write_jsonl(path: str, records: Iterable[dict]) -> int:
    """Write records to a jsonl file (local or s3://); returns the count."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.platform.data.sources import filesystem

    buf = io.StringIO()
    n = 0
    for r in records:
        buf.write(json.dumps(r, ensure_ascii=False) + "\n")
        n += 1
    fs, stripped = filesystem(path)
    if not storage.is_remote(path):
        fs.makedirs(fs._parent(stripped), exist_ok=True)
    with fs.open(stripped, "w", encoding="utf-8") as fh:
        fh.write(buf.getvalue())
    return n


def read_records(paths: str | list[str]) -> Iterator[dict]:
    """Whole records from jsonl / parquet files, directories or globs, local or ``s3://``."""
    from qwen3_trainer.platform.data.config import DataSource
    from qwen3_trainer.platform.data.sources import DataError, _open_text, filesystem, resolve_files

    paths = [paths] if isinstance(paths, str) else list(paths)
    for file in resolve_files(DataSource(name="records", paths=paths)):
        fs, path = filesystem(file.url)
        if file.format == "parquet":
            import pyarrow.parquet as pq

            with fs.open(path, "rb") as fh:
                yield from pq.read_table(fh).to_pylist()
            continue
        with _open_text(file) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{file.url}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise DataError(f"{file.url}:{lineno}: expected a JSON object per line")
                yield rec
