"""Runs several post-training jobs one after another in one process group, for the layout matrix
(test_parallelism_matrix.py): one launch per layout instead of one per (objective, layout) saves the
interpreter start and the process-group rendezvous of each (~5 s a run on 2 CPU cores).

    python tests/platform/posttrain/layout_driver.py SPEC.json OUT.json                  # one process
    torchrun --nproc-per-node 2 --standalone tests/platform/posttrain/layout_driver.py SPEC.json OUT.json

SPEC: ``{"runs": {name: TrainConfig document}}``. Each run is ``Trainer(cfg).fit()`` (the one loop that
``qtrain train`` runs). OUT (rank 0): per run, the logged step rows, and per rank what the layout
tests check about placement: which ranks decoded, how much of each frozen model a rank holds and in
which dtype. After the GRPO run, each data-parallel rank scores a different number of sequences with
its (sharded) reward model: scoring must stay collective-safe (it hangs otherwise). Under torchrun the
process group's timeout is 2 minutes: a collective mismatch fails the launch instead of hanging it.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import os
import sys
import time

import torch
import torch.distributed as dist


def _bytes(model) -> tuple[int, int]:
    from torch.distributed.tensor import DTensor

    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size()
                for p in model.parameters())
    return local, sum(p.numel() * p.element_size() for p in model.parameters())


def _probe(trainer) -> dict:
    obj = trainer.objective
    frozen = {}
    if trainer.ctx.reference is not None:
        frozen["reference"] = trainer.ctx.reference
    for name, _, fn in getattr(getattr(obj, "reward", None), "parts", []):
        if hasattr(fn, "model"):
            frozen[name] = fn.model
    out = {"frozen": {k: {"local_bytes": _bytes(m)[0], "bytes": _bytes(m)[1],
                          "dtype": str(next(m.parameters()).dtype)} for k, m in frozen.items()}}
    engine = getattr(obj, "policy_engine", None)
    if engine is not None:
        out["decode_calls"] = engine.decode_calls
        out["engine_model"] = engine.model is not None
    return out


def _scoring_probe(trainer) -> list[float]:
    """Data-parallel rank r scores r + 1 sequences, one per forward, with the GRPO run's reward model
    (TP peers must share their inputs: they score the same)."""
    from qwen3_trainer.platform.posttrain.rewards import reward_scores

    scorer = next(fn for name, _, fn in trainer.objective.reward.parts if name == "reward_model")
    seqs = [[151644, 872, 198, 16, 17][: 3 + i] for i in range(trainer.dp_rank + 1)]
    return reward_scores(scorer.model, seqs, 151643, trainer.device, batch=1,
                         multiple_of=trainer.seq_multiple).tolist()


def main(spec_path: str, out_path: str) -> None:
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    logging.basicConfig(level=logging.WARNING)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a collective mismatch fails in 2 minutes, not hangs
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    spec = json.loads(open(spec_path).read())
    results: dict = {}
    for name, raw in spec["runs"].items():
        t0 = time.perf_counter()
        trainer = Trainer(TrainConfig.model_validate(raw))
        t1 = time.perf_counter()
        summary = trainer.fit()
        probe = _probe(trainer)
        if raw["objective"]["name"] == "grpo":
            probe["scores"] = _scoring_probe(trainer)
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, probe)
        results[name] = {"rows": [r for r in summary["history"] if "loss" in r], "ranks": ranks,
                         "seconds": {"build": t1 - t0, "fit": time.perf_counter() - t1}}
        del trainer, summary
        gc.collect()
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
