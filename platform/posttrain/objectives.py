"""Registers the post-training objectives with the trainer (imported by platform.train.objectives).

``grpo`` (grpo.py), ``reward_model`` (reward_model.py), ``distill_offpolicy`` and
``distill_onpolicy`` (distill.py). Cold start and fusion train with the built-in ``sft``.
"""

from __future__ import annotations

from qwen3_trainer.platform.posttrain.distill import DistillOffPolicy, DistillOnPolicy
from qwen3_trainer.platform.posttrain.grpo import GRPO
from qwen3_trainer.platform.posttrain.reward_model import RewardModelObjective
from qwen3_trainer.platform.train.objectives import register_objective

register_objective("grpo", lambda **p: GRPO(**p))
register_objective("reward_model", lambda **p: RewardModelObjective(**p))
register_objective("distill_offpolicy", lambda **p: DistillOffPolicy(**p))
register_objective("distill_onpolicy", lambda **p: DistillOnPolicy(**p))
