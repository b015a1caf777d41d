"""Rollouts -> training micro-batches (labels by hand), the policy -> engine weight sync (in place,
parameter by parameter, in the compute dtype, freed between rounds) and the frozen models' dtype."""

import pytest
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
    (even,) = sequences_to_batches([[1, 2]], [[3, 4]], [[True, True]], micro_batch_size=1, pad_id=0, max_len=8,
                                   per_seq={"advantages": [2.0]}, multiple_of=4)  # 3 positions -> 4
    assert even["input_ids"].tolist() == [[1, 2, 3, 0]] and even["labels"].tolist() == [[-100, 3, 4, -100]]
    assert even["advantages"].tolist() == [[2.0] * 4]


def test_pad_width_by_hand():
    from qwen3_trainer.platform.train.trainer import PAD_ID, pad_width

    b = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[6, 7, 8]]),
         "old_logprobs": torch.tensor([[-1.0, -2.0, -3.0]]), "last": torch.tensor([2]), "kl": "reverse"}
    out = pad_width(b, 2)
    assert out["input_ids"].tolist() == [[5, 6, 7, PAD_ID]] and out["labels"].tolist() == [[6, 7, 8, -100]]
    assert out["old_logprobs"].tolist() == [[-1.0, -2.0, -3.0, 0.0]]
    assert out["last"].tolist() == [2] and out["kl"] == "reverse"  # not per-token: untouched
    assert pad_width(b, 3) is b


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


def test_sync_writes_in_place_and_frees_between_rounds(tmp_path, monkeypatch):
    """The sync copies parameter by parameter into the engine's own buffers: the packed q/k/v and
    gate/up views (as the engine packs them on CUDA) stay the engine's weights, no state dict is built;
    ``free_weights`` gives the storage back after a round and the next sync re-fills it."""
    import torch.distributed.checkpoint.state_dict as dsd

    from qwen3_trainer.model import decode_step
    from qwen3_trainer.model.generation import SamplingParams
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.rollouts import PolicyEngine
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel"}, "training": {"steps": 2, "seq_len": 32, "device": "cpu"},
        "objective": {"name": "sft"}, "dump_dir": str(tmp_path)})
    trainer = Trainer(cfg)
    engine = PolicyEngine(trainer, load_tokenizer(), free_weights=True, engine_options={"pack_weights": True})
    attn = engine.model.layers["0"].attention
    packed = decode_step.packed_view([attn.wq.weight, attn.wk.weight, attn.wv.weight])
    assert packed is not None
    monkeypatch.setattr(dsd, "get_model_state_dict", lambda *a, **k: pytest.fail("a whole state dict"))

    def check() -> None:
        mine = dict(trainer.model_parts[0].named_parameters())
        assert all(torch.equal(v, mine[k]) for k, v in engine.model.named_parameters())
        view = decode_step.packed_view([attn.wq.weight, attn.wk.weight, attn.wv.weight])
        assert view is not None and view.data_ptr() == attn.wq.weight.data_ptr()
        assert torch.equal(view[: attn.wq.weight.shape[0]], mine["layers.0.attention.wq.weight"])

    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=3)
    engine.sync(trainer)
    check()
    first = engine.generate([[1, 2, 3]], params).tokens
    engine.release_weights()
    assert attn.wq.weight.untyped_storage().nbytes() == 0
    with pytest.raises(RuntimeError, match="released"):
        engine.generate([[1, 2, 3]], params)
    engine.sync(trainer)
    check()
    assert engine.generate([[1, 2, 3]], params).tokens == first  # the same weights back
    ids = torch.randint(0, 1000, (2, 32))
    trainer.train_step([{"input_ids": ids, "labels": ids}])
    engine.sync(trainer)
    check()
    timings = engine.round_metrics()
    assert timings["rollout/sync_s"] > 0 and timings["rollout/generate_s"] > 0
    assert engine.round_metrics() == {"rollout/sync_s": 0.0, "rollout/generate_s": 0.0}


def test_engine_and_frozen_models_hold_the_compute_dtype(tmp_path, hf_checkpoint):
    """bf16 compute (param_dtype bfloat16): the engine's copy and a frozen teacher (of another shape)
    hold bf16 weights, their RoPE caches stay fp32; the fp32 policy's sync casts each parameter."""
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.rollouts import PolicyEngine
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel"}, "training": {"steps": 2, "seq_len": 32, "device": "cpu",
                                                        "param_dtype": "bfloat16"},
        "objective": {"name": "sft"}, "dump_dir": str(tmp_path)})
    trainer = Trainer(cfg)
    engine = PolicyEngine(trainer, load_tokenizer())
    engine.sync(trainer)
    emb = trainer.model_parts[0].tok_embeddings.weight
    assert emb.dtype == torch.float32 and engine.model.tok_embeddings.weight.dtype == torch.bfloat16
    assert torch.equal(engine.model.tok_embeddings.weight, emb.to(torch.bfloat16))
    assert engine.model.rope_cache.dtype == torch.float32
    teacher = trainer.load_frozen(hf_checkpoint(seed=1, n_layers=3, tied=False))
    assert len(teacher.layers) == 3 and not teacher.model_args.enable_weight_tying
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16} and teacher.rope_cache.dtype == torch.float32
    assert not any(p.requires_grad for p in teacher.parameters())
    from qwen3_trainer.model.dcp_io import save_model_dcp
    from qwen3_trainer.model.hf_interop import from_hf

    ref = from_hf(hf_checkpoint(seed=1, n_layers=3, tied=False))
    assert torch.equal(teacher.output.weight, ref.output.weight.to(torch.bfloat16))
    dcp = trainer.load_frozen(save_model_dcp(ref, str(tmp_path / "dcp")))  # the DCP path: read shard-wise
    assert dcp.output.weight.dtype == torch.bfloat16 and torch.equal(dcp.output.weight, teacher.output.weight)


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
