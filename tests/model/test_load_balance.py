"""Global-batch load-balancing loss: 2 gloo ranks x 2 micro-batches give the single-process value
over the concatenated batch (and the same gradient when each rank runs one micro-batch); the
per-micro-batch form differs on a batch built to show the difference."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qwen3_trainer.model.load_balance import GlobalBatchLoadBalancer
from qwen3_trainer.model.titan import MoE, MoEArgs

E, K, DIM, TOKENS = 4, 2, 8, 6  # experts, top-k, width, tokens per micro-batch


def _moe(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    args = MoEArgs(num_experts=E, num_shared_experts=0, top_k=K, score_func="softmax", route_norm=True,
                   score_before_experts=False, use_grouped_mm=False, load_balance_coeff=None)
    moe = MoE(args, dim=DIM, hidden_dim=16)
    with torch.no_grad():
        moe.init_weights(0.5, torch.device("cpu"))
    return moe


def _batch() -> torch.Tensor:  # 4 chunks (2 ranks x 2 micro-batches) of [1, TOKENS, DIM]
    return torch.randn(4, 1, TOKENS, DIM, generator=torch.Generator().manual_seed(7))


def _single(chunks: list[torch.Tensor]) -> tuple[dict, torch.Tensor]:
    moe = _moe()
    lb = GlobalBatchLoadBalancer([moe], coeff=1e-3)
    lb.step_begin(global_tokens=TOKENS * 4)
    for c in chunks:
        (moe(c) * 0).sum().backward()  # only the balancing loss produces gradient
    return lb.step_end(), moe.router.gate.weight.grad.clone()


def _worker(rank: int, init_file: str, micro_batches: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    chunks = _batch()
    moe = _moe()
    lb = GlobalBatchLoadBalancer([moe], coeff=1e-3, dp_group=dist.group.WORLD)
    lb.step_begin(global_tokens=TOKENS * 4)
    mine = chunks[2 * rank : 2 * rank + 2]
    for c in (mine if micro_batches == 2 else [torch.cat(list(mine), dim=1)]):
        (moe(c) * 0).sum().backward()
    grad = moe.router.gate.weight.grad.clone()
    dist.all_reduce(grad)  # what FSDP / DDP do with gradients
    out[rank] = (lb.step_end(), grad)
    dist.destroy_process_group()


def _run_two_ranks(tmp_path, micro_batches: int):
    manager = mp.Manager()
    out = manager.dict()
    init = str(tmp_path / f"pg-{micro_batches}")
    mp.spawn(_worker, args=(init, micro_batches, out), nprocs=2, join=True)
    return out[0], out[1]


@pytest.mark.parametrize("micro_batches", [2, 1])
def test_two_ranks_equal_single_process(tmp_path, micro_batches):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    single_metrics, single_grad = _single([torch.cat(list(_batch()), dim=1)])
    (m0, g0), (m1, g1) = _run_two_ranks(tmp_path, micro_batches)
    for m in (m0, m1):
        assert m["moe/lbl_global"] == pytest.approx(single_metrics["moe/lbl_global"], rel=1e-6)
        assert m["moe/load_imbalance"] == pytest.approx(single_metrics["moe/load_imbalance"], rel=1e-9)
    if micro_batches == 1:  # no accumulation: the gradient is the exact global-batch gradient
        torch.testing.assert_close(g0, single_grad, rtol=1e-5, atol=1e-9)
        assert single_grad.abs().sum() > 0


def test_global_differs_from_per_micro_batch():
    # micro-batch 1 prefers experts {0, 1}, micro-batch 2 experts {2, 3}: each is imbalanced,
    # the step as a whole is balanced, so the global-batch loss is lower.
    moe = _moe()
    with torch.no_grad():
        moe.router.gate.weight.zero_()
        moe.router.gate.weight[0, 0] = moe.router.gate.weight[1, 0] = 4.0
        moe.router.gate.weight[2, 0] = moe.router.gate.weight[3, 0] = -4.0
    x = torch.zeros(2, 1, TOKENS, DIM)
    x[0, ..., 0], x[1, ..., 0] = 1.0, -1.0
    lb = GlobalBatchLoadBalancer([moe], coeff=1.0)
    lb.step_begin(global_tokens=2 * TOKENS)
    for c in x:
        moe(c).sum().backward()
    m = lb.step_end()
    assert m["moe/load_imbalance"] == pytest.approx(1.0)
    assert m["moe/lbl_global"] == pytest.approx(1.0, abs=1e-3)  # balanced: N_E * sum (1/E)(1/E) = 1
    assert m["moe/lbl_micro_batch"] > 1.9  # each half: two experts take everything
