"""Qwen3 post-training (RECIPE.md §Post-training) as objectives of the one trainer plus data steps.

Modules: verifiers (math equivalence, format), rewards (rule, instruction, reward-model and judge
rewards behind one spec), losses (GRPO / distillation / Bradley–Terry math on tensors), rollouts
(policy -> rollout engine, batches of sampled sequences), grpo (objective ``grpo``), distill
(objectives ``distill_offpolicy`` / ``distill_onpolicy``), reward_model (objective
``reward_model``), coldstart (query and response filters), fusion (thinking-mode fusion data),
objectives (registers everything with the trainer), stages (tiny-preset stage configs for the
pipeline). Each objective runs as a job with ``qtrain train CONFIG``.
"""
