"""The peer rows of benchmarks/train_throughput.py build and train on CPU, and the sweep keeps its budget.

The GPU call that writes the peers file is a single shot, so what can fail before it reaches the GPU is
checked here: every new row (torchtitan as shipped in pure bf16 and FSDP mixed precision, ours in FSDP
mixed precision, next to ours in bf16) builds from the right classes and takes 2 steps on tiny configs
(``eager`` compile backend: dynamo still traces every block with ``fullgraph``); the child's micro-batch
tuning skips what is at least as large as an out-of-memory size; the sweep runs rows in priority order,
records what the budget leaves out and rewrites its JSON after every row; a row over its cap is killed.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import math
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from qwen3_trainer.model import cpu_compat

cpu_compat.apply()  # before this file imports torchtitan's classes (the CPU wheel has no triton)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def tp():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = mod  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("train_throughput", None)
    gc.enable()  # torchtitan's GarbageCollection disables automatic gc process-wide


def _tiny_titan_moe():
    import torchtitan.models.qwen3 as tq

    moe = dataclasses.replace(tq.qwen3_args["debugmodel_moe"].moe_args, num_experts=8, top_k=2)
    return {"dim": 64, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "moe_inter_dim": 32, "moe_args": moe}


def _step_twice(tp, peer):
    out = tp.time_steps(peer, 1, 32, 2, 0, "cpu")  # 2 steps one at a time, then 2 back to back
    assert len(out["seconds"]) == 2 and math.isfinite(out["loss"]) and out["loss"] > 0
    assert out["loop_seconds"] > 0
    return out


def _blocks_compiled(model) -> bool:
    from torch._dynamo.eval_frame import OptimizedModule

    return all(isinstance(b, OptimizedModule) for b in model.layers.values())


@pytest.mark.parametrize("impl", ["torchtitan-bf16-compile", "torchtitan-fsdp-mixed-compile"])
def test_torchtitan_rows_are_torchtitan_as_shipped(tp, impl):
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torchtitan.components.loss import cross_entropy_loss
    from torchtitan.components.optimizer import OptimizersContainer
    from torchtitan.models.qwen3 import Qwen3Model
    from torchtitan.train import Trainer

    peer = tp.build_peer(impl, "debugmodel", 32, "cpu", backend="eager")
    model, trainer = peer.model, peer.owner
    assert isinstance(model, Qwen3Model) and Qwen3Model.__module__.startswith("torchtitan.models.qwen3")
    assert isinstance(trainer, Trainer) and type(trainer).train_step is Trainer.train_step
    assert isinstance(trainer.optimizers, OptimizersContainer)
    assert all(o.defaults["fused"] for o in trainer.optimizers.optimizers)
    assert trainer.loss_fn._torchdynamo_orig_callable is cross_entropy_loss  # its loss, compiled
    assert _blocks_compiled(model)
    dtypes = {p.dtype for p in model.parameters()}
    if impl == "torchtitan-bf16-compile":
        assert dtypes == {torch.bfloat16} and not isinstance(model, FSDPModule)
    else:
        mp = fully_shard.state(model)._mp_policy
        assert isinstance(model, FSDPModule) and dtypes == {torch.float32}
        assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    _step_twice(tp, peer)
    assert trainer.step == 4 and math.isfinite(trainer.metrics_processor.grad_norm)
    assert trainer.metrics_processor.log_freq == 10  # the loop steps log at torchtitan's default


def test_torchtitan_fp8_row_converts_the_linears_ours_converts(tp, monkeypatch):
    """torchtitan's float8 row swaps every linear of its model to torchao's Float8Linear except the ones our
    trainer keeps in bf16 (TrainConfig's ``float8_keep_bf16``), from its own converter and Trainer order, and
    trains (torch's CPU ``_scaled_mm`` runs the float8 matmuls here)."""
    import torchtitan.components.quantization.float8 as titan_float8
    from torchao.float8.float8_linear import Float8Linear

    from qwen3_trainer.platform.train.config import TrainConfig

    monkeypatch.setattr(titan_float8, "has_cuda_capability", lambda *a: True)  # its SM89 gate; CPU stands in
    peer = tp.build_peer("torchtitan-fp8-compile", "debugmodel", 32, "cpu", backend="eager")
    keep = TrainConfig.model_fields["float8_keep_bf16"].default
    linears = {n.replace("._orig_mod", ""): m for n, m in peer.model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    fp8 = {n for n, m in linears.items() if isinstance(m, Float8Linear)}
    assert fp8 == {n for n in linears if not any(k in n for k in keep)}
    assert "output" in linears and "output" not in fp8 and any(n.endswith("attention.wq") for n in fp8)
    assert "float8 tensorwise linears" in peer.settings
    _step_twice(tp, peer)


def test_torchtitan_moe_row_steps(tp):
    from torchtitan.models.moe import MoE

    peer = tp.build_peer("torchtitan-bf16-compile", "debugmodel_moe", 32, "cpu", backend="eager",
                         titan_overrides=_tiny_titan_moe())
    assert isinstance(peer.model.layers["0"].moe, MoE)
    _step_twice(tp, peer)


@pytest.mark.parametrize("impl", ["qwen3-trainer-bf16-compile", "qwen3-trainer-fsdp-mixed-compile"])
def test_our_rows_step(tp, impl):
    from torch.distributed.fsdp import FSDPModule

    from qwen3_trainer.platform.train import parallel
    from qwen3_trainer.platform.train.trainer import Trainer

    build_dims = parallel.build_parallel_dims
    peer = tp.build_peer(impl, "debugmodel", 32, "cpu", backend="eager")
    assert parallel.build_parallel_dims is build_dims  # the one-device FSDP override was scoped
    assert isinstance(peer.owner, Trainer) and _blocks_compiled(peer.model)
    fsdp = impl.endswith("fsdp-mixed-compile")
    assert isinstance(peer.model, FSDPModule) is fsdp and peer.owner.pdims.fsdp_enabled is fsdp
    assert {p.dtype for p in peer.model.parameters()} == {torch.float32 if fsdp else torch.bfloat16}
    _step_twice(tp, peer)
    assert peer.owner.step == 4 and peer.owner._last_done > 0  # the loop's last step was read back


class _FakePeer:
    """Runs out of memory from ``oom_from`` sequences on; a step takes no time."""

    def __init__(self, tp, oom_from: int):
        self.peer = tp.Peer(None, self.step, lambda: None, "fake", vocab=100)
        self.oom_from, self.sizes = oom_from, []

    def step(self, batch):
        self.sizes.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] >= self.oom_from:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 1.0


def test_child_tries_micro_batches_and_skips_larger_than_oom(tp, monkeypatch, capsys):
    fake = _FakePeer(tp, oom_from=4)
    monkeypatch.setattr(tp, "build_peer", lambda *a, **k: fake.peer)
    args = tp.parse_args(["--child", "--flavor", "1.7B", "--impl", "qwen3-trainer-bf16-compile", "--mb", "4/2/8/1",
                                   "--seq", "8", "--steps", "2", "--warmup", "1", "--device", "cpu"])
    tp.child(args)
    got = {r["mb"]: r for r in (json.loads(x[7:]) for x in capsys.readouterr().out.splitlines()
                                if x.startswith("RESULT "))}
    assert "oom" in got[4] and "skipped" in got[8] and 8 not in fake.sizes
    assert len(got[2]["seconds"]) == len(got[1]["seconds"]) == 2


class _FakeRunner:
    """Stands in for ChildRunner: canned results per row; checks the file was written before each row."""

    def __init__(self, out: Path, results: dict, seconds: float = 0.0):
        self.out, self.results, self.seconds = out, results, seconds
        self.ran, self.seen_rows = [], []

    def prefetch(self, key, argv):
        pass

    def discard(self, key):
        pass

    def close(self):
        pass

    def run(self, key, argv, soft_deadline, timeout):
        self.seen_rows.append(len(json.loads(self.out.read_text())["rows"]))  # incremental writes
        self.ran.append(key)
        time.sleep(self.seconds)
        return self.results.get(key[1], []), ""


def _args(tp, tmp_path, *extra):
    return tp.parse_args(["--peers", "--device", "cpu", "--seq", "16", "--out",
                          str(tmp_path / "{date}-h200-peers.json"), *extra])


def _ok(mb, sec):
    return {"mb": mb, "seconds": [sec] * 3, "loss": 11.0, "peak_mem_gib": None, "settings": "s"}


def test_sweep_priority_best_micro_batch_and_incremental_file(tp, tmp_path):
    results = {"qwen3-trainer-bf16-compile": [_ok(4, 0.4), _ok(2, 0.1), {"mb": 1, "skipped": "budget"}],
               "torchtitan-fsdp-mixed-compile": [{"mb": 4, "oom": "CUDA out of memory"}]}
    args = _args(tp, tmp_path, "--models", "1.7B,8B", "--impls",
                 "hf-compile,torchtitan-fsdp-mixed-compile,qwen3-trainer-bf16-compile")
    runner = _FakeRunner(tmp_path / f"{time.strftime('%Y-%m-%d')}-h200-peers.json", results)
    result = tp.sweep(args, runner)
    assert runner.ran == [("1.7B", "qwen3-trainer-bf16-compile"), ("8B", "qwen3-trainer-bf16-compile"),
                          ("1.7B", "torchtitan-fsdp-mixed-compile"), ("1.7B", "hf-compile"),
                          ("8B", "hf-compile"), ("8B", "torchtitan-fsdp-mixed-compile")]
    assert runner.seen_rows == [0, 1, 2, 2, 2, 2]
    on_disk = json.loads(runner.out.read_text())
    assert on_disk["rows"] == result["rows"] and {"torch", "torchtitan", "transformers", "date"} <= set(on_disk)
    row = result["rows"][0]
    assert (row["model"], row["micro_batch"], row["tokens_per_s"]) == ("1.7B", 2, 2 * 16 / 0.1)
    assert {"model", "impl", "micro_batch", "tokens_per_s", "tflops", "mfu", "peak_mem_gib"} <= set(row)
    assert row["micro_batches"]["1"].startswith("skipped")
    assert any(s["impl"] == "torchtitan-fsdp-mixed-compile" and "out of memory" in s["reason"]
               for s in result["skipped"])


def test_sweep_skips_what_the_budget_leaves_out(tp, tmp_path):
    args = _args(tp, tmp_path, "--budget-s", "1.0", "--min-row-s", "0.5")
    runner = _FakeRunner(tmp_path / f"{time.strftime('%Y-%m-%d')}-h200-peers.json",
                         {"qwen3-trainer-bf16-compile": [_ok(2, 0.1)]}, seconds=0.6)
    result = tp.sweep(args, runner)
    assert runner.ran == [("1.7B", "qwen3-trainer-bf16-compile")]  # the top of PEER_PRIORITY
    assert len(result["skipped"]) == 14 and all("budget" in s["reason"] for s in result["skipped"][1:])


def test_child_runner_passes_the_deadline_and_kills_a_row_over_its_cap(tp, tmp_path):
    script = tmp_path / "fake_child.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        deadline = float(sys.stdin.readline().split()[-1])
        print("RESULT " + json.dumps({"mb": 1, "deadline": deadline}), flush=True)
        if "--impl" in sys.argv and sys.argv[sys.argv.index("--impl") + 1] == "slow":
            time.sleep(60)
    """))
    runner = tp.ChildRunner(str(script), [])
    runner.prefetch(("m", "fast"), ["--impl", "fast"])
    results, _ = runner.run(("m", "fast"), ["--impl", "fast"], 123.0, 30)
    assert results == [{"mb": 1, "deadline": 123.0}]
    t0 = time.time()
    results, _ = runner.run(("m", "slow"), ["--impl", "slow"], 0.0, 1.5)
    assert time.time() - t0 < 10 and results[0]["mb"] == 1 and "timed out" in results[-1]["error"]
    runner.close()
