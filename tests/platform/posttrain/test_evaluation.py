"""Held-out evaluation bookkeeping (k samples per problem, per-response scores) and the on-policy
distiller's off-policy SFT phase, by hand."""

import math

import pytest
import torch

from qwen3_trainer.model.generation import GenerationOutput
from qwen3_trainer.model.tokenizer import load_tokenizer
from qwen3_trainer.platform.posttrain import losses
from qwen3_trainer.platform.posttrain.distill import DistillOnPolicy
from qwen3_trainer.platform.posttrain.grpo import evaluate_accuracy


class ScriptedEngine:
    """A ``RolloutEngine`` that answers every other response right (by position in the whole run)."""

    def __init__(self, tok, answers):
        self.tok, self.answers, self.calls, self.seen = tok, answers, [], 0

    def generate(self, prompts, params):
        self.calls.append(params)
        toks = []
        for _ in prompts:
            answer = self.answers[self.seen] if self.seen % 2 == 0 else "-1"
            toks.append(self.tok.encode("<think>\nsum\n</think>\n\n\\boxed{" + answer + "}") + [self.tok.im_end])
            self.seen += 1
        return GenerationOutput(toks, [[0.0] * len(t) for t in toks], [[False] * len(t) for t in toks],
                                ["stop"] * len(toks))


def test_sampled_accuracy_is_the_mean_over_k_samples_per_problem():
    tok = load_tokenizer()
    records = [{"prompt": [{"role": "user", "content": f"What is {i}+1?"}], "answer": str(i + 1)} for i in range(3)]
    k = 4
    expected = [r["answer"] for r in records for _ in range(k)]  # responses come record by record
    engine, scores = ScriptedEngine(tok, expected), []
    m = evaluate_accuracy(engine, tok, records, max_new_tokens=16, seq_len=64, batch=5, samples=k,
                          temperature=0.6, top_p=0.95, seed=10, scores=scores)
    assert scores == [1.0, 0.0] * 6 and m["eval/accuracy"] == 0.5 and m["eval/format"] == 1.0
    assert [(c.temperature, c.top_p, c.seed) for c in engine.calls] == [(0.6, 0.95, 10), (0.6, 0.95, 15),
                                                                        (0.6, 0.95, 20)]
    with pytest.raises(ValueError, match="temperature > 0"):
        evaluate_accuracy(engine, tok, records, max_new_tokens=16, seq_len=64, samples=2)


def test_onpolicy_distiller_sft_phase_is_cross_entropy():
    with pytest.raises(ValueError, match=r"distill_onpolicy: params.offpolicy_mode: Input should be 'kl' or 'sft'"):
        DistillOnPolicy("t", "p", offpolicy_mode="ce")
    obj = DistillOnPolicy("teacher-never-loaded", "p", offpolicy_mode="sft")
    logits = torch.randn(2, 3, 11)
    labels = torch.tensor([[1, 2, losses.IGNORE], [4, losses.IGNORE, 5]])
    loss, metrics = obj.loss(logits, {"labels": labels, "input_ids": labels.clamp(min=0), "kl": "sft"}, 4.0, None)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=losses.IGNORE,
                                           reduction="sum")
    assert torch.allclose(loss, ce / 4.0) and metrics == {"ce_sum": pytest.approx(float(ce)), "tokens": 4.0}


def test_onpolicy_reverse_kl_targets_the_teacher_at_its_temperature():
    """teacher_temperature τ: KL(student || softmax(teacher / τ)) per sampled token, by hand on 2 tokens."""
    with pytest.raises(ValueError, match="distill_onpolicy: params.teacher_temperature: Input should be greater than 0"):
        DistillOnPolicy("t", "p", teacher_temperature=0)

    class Ctx:
        reference = staticmethod(lambda ids: torch.log(torch.tensor([[[0.6, 0.4], [0.5, 0.5]]])))

    student = torch.zeros(1, 2, 2)  # p = (.5, .5) at both positions
    labels = torch.tensor([[0, losses.IGNORE]])
    batch = {"labels": labels, "input_ids": labels.clamp(min=0), "kl": "reverse"}
    for tau in (1.0, 0.5):
        t = torch.tensor([0.6, 0.4]) ** (1 / tau)
        t = t / t.sum()  # softmax(log p / τ)
        want = float((0.5 * torch.log(0.5 / t)).sum())
        loss, m = DistillOnPolicy("t", "p", teacher_temperature=tau).loss(student, batch, 1.0, Ctx())
        assert loss.item() == pytest.approx(want, abs=1e-6) and m["tokens"] == 1.0
    assert want > 0.5 * math.log(0.5 / 0.6) + 0.5 * math.log(0.5 / 0.4)  # the sharper target is further away
