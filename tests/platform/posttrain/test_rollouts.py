"""Rollouts -> training micro-batches (labels by hand) and the policy -> engine weight sync."""

import torch

from qwen3_trainer.platform.posttrain.rollouts import sequences_to_batches


def test_sequences_to_batches_by_hand():
    batches = sequences_to_batches([[1, 2, 3], [7]], [[4, 5, 9], [8, 6]], [[True, False, True], [True, True]],
                                   micro_batch_size=2, pad_id=0, max_len=16, per_seq={"advantages": [0.5, -1.0]})
    (b,) = batches
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0]]
    # labels: next tokens where the response token is trained (the forced 5 is not), prompts never
    assert b["labels"].tolist() == [[-100, -100, 4, -100, 9], [8, 6, -100, -100, -100]]
    assert b["advantages"].tolist() == [[0.5] * 5, [-1.0] * 5]
    cut = sequences_to_batches([[1, 2]], [[3, 4, 5]], [[True] * 3], micro_batch_size=1, pad_id=0, max_len=3)
    assert cut[0]["input_ids"].tolist() == [[1, 2, 3]] and cut[0]["labels"].tolist() == [[-100, 3, 4]]


def test_engine_follows_the_policy(tmp_path):
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.rollouts import PolicyEngine
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel"}, "training": {"steps": 2, "seq_len": 32, "device": "cpu"},
        "objective": {"name": "sft"}, "dump_dir": str(tmp_path)})
    trainer = Trainer(cfg)
    engine = PolicyEngine(trainer, load_tokenizer())

    def same() -> bool:
        mine = trainer.model_parts[0].state_dict()
        return all(torch.equal(v, mine[k]) for k, v in engine.model.state_dict().items() if k in mine)

    engine.sync(trainer)
    assert same()
    ids = torch.randint(0, 1000, (2, 32))
    trainer.train_step([{"input_ids": ids, "labels": ids}])
    assert not same()
    engine.sync(trainer)
    assert same()
    assert engine.model.output.weight is engine.model.tok_embeddings.weight  # the tie survives the copy


def test_grpo_steps_move_logprobs_with_the_advantage(tmp_path):
    """Three GRPO steps through the trainer: positive-advantage samples gain log-probability,
    negative-advantage samples lose it."""
    from qwen3_trainer.platform.posttrain.rollouts import sequence_logprobs
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel"}, "training": {"steps": 5, "seq_len": 32, "device": "cpu"},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0}, "objective": {"name": "grpo", "params": {"queries": "x"}},
        "dump_dir": str(tmp_path)})
    trainer = Trainer(cfg)
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(0, 1000, (6,), generator=g).tolist() for _ in range(4)]
    (b,) = sequences_to_batches([[1, 2, 3]] * 4, responses, [[True] * 6] * 4, micro_batch_size=4, pad_id=0,
                                max_len=31, per_seq={"advantages": [1.0, -1.0, 1.0, -1.0]})
    model = trainer.model_parts[0]
    before = sequence_logprobs(model, [b], "cpu")[0].sum(-1)
    for _ in range(3):
        b["old_logprobs"] = sequence_logprobs(model, [b], "cpu")[0]
        trainer.train_step([b])
    delta = sequence_logprobs(model, [b], "cpu")[0].sum(-1) - before
    assert delta[0] > 0 and delta[2] > 0 and delta[1] < 0 and delta[3] < 0
