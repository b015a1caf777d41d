"""GRPO's options (temperature, aggregation, entropy, KL, overlong, dynamic sampling, bad params), each
checked by hand on tiny tensors and a fake trainer / engine: no model, no training run."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from qwen3_trainer.model.generation import GenerationOutput
from qwen3_trainer.platform.posttrain.grpo import GRPO, Rollout
from qwen3_trainer.platform.posttrain.losses import IGNORE
from qwen3_trainer.platform.train.objectives import ObjectiveContext, build_objective


class ConstLM(torch.nn.Module):
    """Logits that ignore the input: every position predicts softmax(``row``)."""

    def __init__(self, row):
        super().__init__()
        self.row = torch.nn.Parameter(torch.tensor(row, dtype=torch.float32))

    def forward(self, ids):
        return self.row.expand(*ids.shape, -1)


def _trainer(policy, reference=None, *, seq_len=16, mb=4):
    @contextlib.contextmanager
    def scoring():  # Trainer.scoring: the policy, no autograd
        with torch.no_grad():
            yield policy

    return SimpleNamespace(cfg=SimpleNamespace(training=SimpleNamespace(seq_len=seq_len, micro_batch_size=mb)),
                           model_parts=[policy], ctx=ObjectiveContext(reference=reference),
                           device=torch.device("cpu"), amp=contextlib.nullcontext, dp_rank=0, dp_world=1,
                           env=SimpleNamespace(rank=0), step=0, scoring=scoring, seq_multiple=1)


def _rollout(tokens, scores, truncated=None, group_size=2):
    n = len(tokens)
    return Rollout([{}] * n, [[7, 7]] * n, tokens, [[False] * len(t) for t in tokens],
                   truncated or [False] * n, scores, group_size)


def _batch(logits, labels, adv, old=None):
    mask = labels != IGNORE
    logp = logits.detach().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] * mask
    return {"input_ids": torch.zeros_like(labels), "labels": labels,
            "old_logprobs": logp if old is None else old, "advantages": adv}


# -- sampling-temperature-correct log-probs ---------------------------------------------------------
def test_logprobs_and_loss_use_the_sampling_temperature():
    # softmax(log(.5, .25, .25) / 0.5) = (.25, .0625, .0625) / .375 = (2/3, 1/6, 1/6)
    row = [math.log(0.5), math.log(0.25), math.log(0.25)]
    obj = GRPO("q.jsonl", temperature=0.5, clip_low=0.2, clip_high=0.28)
    trainer = _trainer(ConstLM(row))
    batch = {"input_ids": torch.zeros(1, 1, dtype=torch.long), "labels": torch.tensor([[0]])}
    old, = obj.logprobs(trainer, trainer.model_parts[0], [batch], policy=True)
    assert old.item() == pytest.approx(math.log(2 / 3), abs=1e-6)  # not log(.5), the T = 1 value
    logits = torch.tensor([[row]])
    batch.update(old_logprobs=old, advantages=torch.ones(1, 1))
    loss, m = obj.loss(logits, batch, 1.0, ObjectiveContext())
    assert loss.item() == pytest.approx(-1.0, abs=1e-6) and float(m["ratio_sum"]) == pytest.approx(1.0)
    h = -(2 / 3 * math.log(2 / 3) + 2 / 6 * math.log(1 / 6))
    assert float(m["entropy_sum"]) == pytest.approx(h, abs=1e-6)
    # an old log-prob taken at T = 1 would give the ratio (2/3) / (1/2) = 4/3, clipped at 1.28
    batch["old_logprobs"] = torch.tensor([[math.log(0.5)]])
    assert obj.loss(logits, batch, 1.0, ObjectiveContext())[0].item() == pytest.approx(-1.28, abs=1e-6)


# -- loss aggregation -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,units,expected", [
    ("token-mean", 4, -5 / 4),                         # (-2 - 1 - 1 - 1) / 4 tokens
    ("seq-mean-token-mean", 2, (-2 - 1) / 2),          # sequence means -2 and -1, over 2 sequences
    ("seq-mean-token-sum-norm", 2, (-2 / 4 - 3 / 4) / 2),  # sums / budget 4, over 2 sequences
])
def test_loss_aggregation_modes_by_hand_and_layout_independent(mode, units, expected):
    """Ratio 1, advantages 2 (one token) and 1 (three tokens): the per-token loss is -A. Split into two
    micro-batches under the step's normaliser, the loss and the gradient are the same."""
    g = torch.Generator().manual_seed(0)
    obj = GRPO("q.jsonl", loss_agg=mode, max_new_tokens=4)
    logits = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    labels = torch.tensor([[1, IGNORE, IGNORE], [2, 3, 4]])
    adv = torch.tensor([[2.0] * 3, [1.0] * 3])
    whole = _batch(logits, labels, adv)
    assert obj.loss_tokens(whole) == units
    loss, _ = obj.loss(logits, whole, float(units), ObjectiveContext())
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    grad, = torch.autograd.grad(loss, logits)
    parts = [{k: v[i: i + 1] for k, v in whole.items()} for i in range(2)]
    norm = float(sum(obj.loss_tokens(p) for p in parts))
    split = sum(obj.loss(logits[i: i + 1], p, norm, ObjectiveContext())[0] for i, p in enumerate(parts))
    assert split.item() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(torch.autograd.grad(split, logits)[0], grad, atol=1e-7)


# -- entropy bonus ----------------------------------------------------------------------------------
def test_entropy_coefficient_by_hand():
    obj = GRPO("q.jsonl", entropy_coef=0.01)
    logits = torch.zeros(1, 2, 4, requires_grad=True)  # uniform over 4: entropy ln 4 per token
    batch = _batch(logits, torch.tensor([[0, 1]]), torch.zeros(1, 2))
    loss, _ = obj.loss(logits, batch, 2.0, ObjectiveContext())
    assert loss.item() == pytest.approx(-0.01 * math.log(4), abs=1e-7)  # A = 0: the bonus alone
    # the bonus pushes towards more entropy: away from the uniform point there is a gradient
    peaked = torch.tensor([[[2.0, 0, 0, 0]] * 2], requires_grad=True)
    batch = _batch(peaked, torch.tensor([[0, 1]]), torch.zeros(1, 2))
    obj.loss(peaked, batch, 2.0, ObjectiveContext())[0].backward()
    assert peaked.grad[0, 0, 0] > 0  # descending lowers the peak logit


# -- KL estimators and KL in the reward --------------------------------------------------------------
@pytest.mark.parametrize("kind,kl", [("k1", math.log(2)), ("k2", 0.5 * math.log(2) ** 2),
                                     ("k3", 0.5 + math.log(2) - 1)])
def test_kl_estimator_in_the_loss_by_hand(kind, kl):
    # the policy's p(label) = .5, the reference's .25; ratio 1, A = 0: the loss is kl_coef x KL
    obj = GRPO("q.jsonl", kl_coef=0.1, kl_estimator=kind)
    logits = torch.log(torch.tensor([[[0.5, 0.5]]]))
    batch = _batch(logits, torch.tensor([[0]]), torch.zeros(1, 1))
    batch["ref_logprobs"] = torch.tensor([[math.log(0.25)]])
    loss, m = obj.loss(logits, batch, 1.0, ObjectiveContext())
    assert loss.item() == pytest.approx(0.1 * kl, abs=1e-6)
    assert float(m["kl_sum"]) == pytest.approx(kl, abs=1e-6)


def test_kl_in_reward_subtracts_the_response_kl_from_the_reward():
    """Policy uniform over 4 ids (log p = ln 1/4); reference (2/5, 1/5, 1/5, 1/5). k1 per token:
    id 0 ln(5/8), id 1 ln(5/4). Rewards 1, 0 for responses [0, 0] and [1]."""
    policy, ref = ConstLM([0.0] * 4), ConstLM([math.log(2), 0.0, 0.0, 0.0])
    obj = GRPO("q.jsonl", group_size=2, kl_coef=0.5, kl_in_reward=True, kl_estimator="k1",
               scale_advantages=False)
    metrics = {}
    ro = _rollout([[0, 0], [1]], [1.0, 0.0])
    b, = obj._batches(_trainer(policy, ref), SimpleNamespace(pad=0), ro, metrics)
    r0, r1 = 1 - 0.5 * 2 * math.log(5 / 8), 0 - 0.5 * math.log(5 / 4)
    assert b["advantages"][:, 0].tolist() == pytest.approx([(r0 - r1) / 2, (r1 - r0) / 2], abs=1e-6)
    assert metrics["rollout/kl"] == pytest.approx((2 * math.log(5 / 8) + math.log(5 / 4)) / 3, abs=1e-6)
    assert torch.allclose(b["old_logprobs"][b["labels"] != IGNORE], torch.full((3,), math.log(1 / 4)))
    _, m = obj.loss(policy(b["input_ids"]), b, 3.0, ObjectiveContext())
    assert "kl_sum" not in m  # no KL term in the loss


# -- overlong filtering and punishment ---------------------------------------------------------------
def test_overlong_filter_masks_truncated_responses_out_of_the_loss():
    obj = GRPO("q.jsonl", group_size=2, overlong_filter=True, scale_advantages=False)
    ro = _rollout([[1, 2, 3], [1]], [1.0, 0.0], truncated=[True, False])
    b, = obj._batches(_trainer(ConstLM([0.0] * 4)), SimpleNamespace(pad=0), ro, {})
    assert (b["labels"][0] == IGNORE).all() and (b["labels"][1] != IGNORE).sum() == 1
    assert obj.loss_tokens(b) == 1
    assert b["advantages"][:, 0].tolist() == [0.5, -0.5]  # the truncated one still counts in its group


class ScriptedEngine:
    """Answers each generate call with the next scripted token lists."""

    def __init__(self, script):
        self.script, self.seeds = list(script), []

    def generate(self, prompts, params):
        tokens = self.script.pop(0)
        assert len(tokens) == len(prompts)
        self.seeds.append(params.seed)
        return GenerationOutput(tokens, [[0.0] * len(t) for t in tokens], [[False] * len(t) for t in tokens],
                                ["length" if len(t) >= params.max_new_tokens else "stop" for t in tokens])


class ScriptedReward:
    def __init__(self, script):
        self.script, self.last, self.error_count = list(script), {}, 0

    def __call__(self, records, texts, thinking):
        return self.script.pop(0)


@pytest.fixture(scope="module")
def tok():
    from qwen3_trainer.model.tokenizer import load_tokenizer

    return load_tokenizer()


QUERIES = [{"prompt": [{"role": "user", "content": f"q{i} /no_think"}], "answer": "1"} for i in range(6)]


def test_soft_overlong_punishment_in_the_rewards(tok):
    obj = GRPO("q.jsonl", group_size=2, prompts_per_step=1, max_new_tokens=10, overlong_buffer=4,
               overlong_penalty=0.5)
    engine = ScriptedEngine([[[5] * 6, [5] * 9]])
    ro = obj._sample(_trainer(None, seq_len=64), engine, tok, QUERIES, ScriptedReward([[1.0, 1.0]]), 0)
    assert ro.scores == [1.0, 1.0 - 0.5 * 3 / 4]  # 6 tokens: free; 9: 3 of the last 4
    assert ro.truncated == [False, False]


# -- dynamic sampling --------------------------------------------------------------------------------
def _dynamic(tok, rewards, rounds=2):
    obj = GRPO("q.jsonl", group_size=2, prompts_per_step=2, max_new_tokens=4, dynamic_sampling=True,
               dynamic_sampling_rounds=rounds)
    engine = ScriptedEngine([[[5], [6]] * 2 for _ in rewards])
    ro, m = obj._collect(_trainer(None, seq_len=64), engine, tok, QUERIES, ScriptedReward(rewards))
    return ro, m, engine


def test_dynamic_sampling_drops_equal_reward_groups_and_refills(tok):
    # draw 0: groups (1, 1) dropped, (0, 1) kept; draw 1: (0, 0) dropped, (1, 0) kept -> 2 groups: done
    ro, m, engine = _dynamic(tok, [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    assert ro.scores == [0.0, 1.0, 1.0, 0.0] and ro.n_groups == 2
    assert m["rollout/extra_rounds"] == 1 and m["rollout/kept_groups"] == 1.0
    assert m["rollout/zero_std_groups"] == 0.5 and m["reward/mean"] == 0.75  # of the first draw
    assert len(set(engine.seeds)) == 2  # the refill samples with its own seed


def test_dynamic_sampling_is_bounded_and_falls_back(tok):
    ro, m, _ = _dynamic(tok, [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]], rounds=1)
    assert ro.scores == [0.0, 1.0] and m["rollout/kept_groups"] == 0.5  # one round only: one group
    ro, m, _ = _dynamic(tok, [[1.0, 1.0, 0.0, 0.0]], rounds=0)
    assert ro.scores == [1.0, 1.0, 0.0, 0.0] and m["rollout/kept_groups"] == 0.0  # none: the draw as sampled


# -- bad params: one line naming the key, at construction ---------------------------------------------
@pytest.mark.parametrize("params,key", [
    ({"group_size": 1}, "params.group_size"),
    ({"rewards": [{"name": "math"}, {"name": "nope"}]}, "params.rewards[1].name"),
    ({"rewards": [{"name": "judge"}]}, "params.rewards[0]: judge needs model"),
    ({"loss_agg": "mean"}, "params.loss_agg"),
    ({"kl_estimator": "k4"}, "params.kl_estimator"),
    ({"kl_coef": "0.1"}, "params.kl_coef"),
    ({"group_size": 8.0}, "params.group_size"),
    ({"dynamic_sampling": "yes"}, "params.dynamic_sampling"),
    ({"bogus": 1}, "params.bogus"),
    ({"overlong_buffer": 65}, "params.overlong_buffer"),
    ({"kl_in_reward": True}, "params.kl_in_reward"),
    ({"temperature": 0.0}, "params.temperature"),
    ({"rollout_kv_dtype": "fp4"}, "params.rollout_kv_dtype"),
])
def test_bad_params_are_one_line_errors_naming_the_key(params, key):
    with pytest.raises(ValueError) as err:
        build_objective("grpo", {"queries": "q.jsonl", **params})
    assert key in str(err.value) and "\n" not in str(err.value)


def test_every_recipe_field_is_a_grpo_keyword_with_its_default():
    from qwen3_trainer.recipe.specs import GRPOObjective

    spec = GRPOObjective().model_dump(mode="json", exclude={"name"})
    obj = GRPO("q.jsonl", **spec)
    new = ("kl_estimator", "kl_in_reward", "loss_agg", "entropy_coef", "overlong_filter", "overlong_buffer",
           "overlong_penalty", "dynamic_sampling", "dynamic_sampling_rounds", "logprob_chunk")
    default = GRPO("q.jsonl")
    assert all(getattr(obj, k) == getattr(default, k) for k in new)  # the recipe keeps today's behaviour


@pytest.mark.parametrize("content,message", [
    ("", "objective.params.queries: no usable records"),
    ('{"prompt": "not turns", "answer": "1"}\n', "objective.params.queries: no usable records"),
    (None, "objective.params.queries: data source 'records': no data files at {path}"),
])
def test_bad_query_files_fail_the_preflight_in_one_line(tmp_path, content, message):
    """An empty, malformed or missing query file is a one-line PreflightError before any process group."""
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.parallel import DistEnv
    from qwen3_trainer.platform.train.run import PreflightError, preflight

    path = tmp_path / "q.jsonl"
    if content is not None:
        path.write_text(content)
    cfg = TrainConfig.model_validate({"model": {"flavor": "debugmodel"}, "training": {"steps": 1, "device": "cpu"},
                                      "objective": {"name": "grpo", "params": {"queries": str(path)}},
                                      "dump_dir": str(tmp_path / "d")})
    with pytest.raises(PreflightError) as err:
        preflight(cfg, DistEnv(0, 0, 1, "127.0.0.1", 0))
    assert str(err.value).startswith(message.format(path=path)) and "\n" not in str(err.value)
    if content == "":  # a glob of the same folder is read as the objective reads it: no "does not exist"
        (tmp_path / "r.jsonl").write_text('{"prompt": [{"role": "user", "content": "1+1?"}], "answer": "2"}\n')
        glob = cfg.model_copy(update={"objective": cfg.objective.model_copy(
            update={"params": {"queries": str(tmp_path / "r*.jsonl")}})})
        preflight(glob, DistEnv(0, 0, 1, "127.0.0.1", 0))
