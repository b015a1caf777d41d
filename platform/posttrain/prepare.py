"""Data preparation of the post-training stages, as a job: ``qtrain posttrain prepare STAGE CONFIG``.

What each stage's training reads, written under ``out`` (local or ``s3://``; the names are the
recipe's, recipe.configs.DATA_FILES):

- T1 cold start: the SFT set, from a pool of queries with teacher candidates run through the query
  and response filters (coldstart.py); a user's records with ``messages`` are taken as they are;
- T2 / T4 RL: the query file (``prompt`` + ``answer``, T4 also ``constraints``) and held-out queries;
- T3 fusion: thinking samples rejection-sampled from ``policy`` (the T2 model) on queries, plus
  non-thinking chats, mixed with the mode flags (fusion.py);
- D: the teacher (``policy``: T4) answers prompts in both modes (the off-policy phase's data), plus
  the on-policy prompts and held-out queries; with ``teacher_cache`` the same teacher then writes its
  top-k log-probs over those responses to ``<out>/teacher_cache`` (teacher_cache.py), which the
  off-policy phase reads instead of running the teacher.

Without ``dataset`` the miniature's generated place-value problems are used. With it, each record is
checked and a bad one fails the job in one line naming the file, the record and the field. Under
torchrun (``WORLD_SIZE`` > 1: one process per GPU of the stage's node) the generation work is split
over the ranks and rank 0 writes the files.
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

STAGES = ("T1", "T2", "T3", "T4", "D")
FILES = {  # what each stage writes (recipe.configs names these paths in the training config)
    "T1": {"sft": "coldstart_sft.jsonl"},
    "T2": {"queries": "queries.jsonl", "heldout": "heldout.jsonl"},
    "T3": {"sft": "fusion_sft.jsonl"},
    "T4": {"queries": "queries.jsonl", "heldout": "heldout.jsonl"},
    "D": {"prompts": "prompts.jsonl", "teacher": "teacher_responses.jsonl", "heldout": "heldout.jsonl"},
}
TEACHER_CACHE = "teacher_cache"  # D, when asked: the teacher cache's folder under `out`
REWARD_MODEL = "reward_model"    # T4, when asked: the reward model's folder under `out` (pairs, ckpt, hf)
REWARD_PAIRS = {"train": "pairs.jsonl", "eval": "pairs_eval.jsonl"}


class TeacherCacheOptions(BaseModel):
    """D: cache the teacher's top-k over its responses (recipe DistillObjective.teacher_cache)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(64, gt=0)                    # top-k tokens per response position
    dtype: Literal["float16", "float32"] = "float16"  # storage of the log-probs
    batch: int = Field(8, gt=0)                 # sequences per teacher forward


class RewardModelOptions(BaseModel):
    """T4: train the reward model its GRPO scores with (recipe RewardModelStep; ``train`` is the
    ``TrainConfig`` recipe.configs.reward_model_config builds: objective reward_model on the pairs here)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = None                  # user preference pairs; None: generated from the problems
    pairs: int = Field(96, gt=0)
    eval_share: float = Field(0.125, ge=0, lt=1)
    train: dict[str, Any]


class PrepareConfig(BaseModel):
    """One stage's data-preparation job (built by recipe.configs.prepare_config)."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal["T1", "T2", "T3", "T4", "D"]
    out: str                                    # folder the stage's data files go to (local or s3://)
    policy: str | None = None                   # T3: the model to rejection-sample from; D: the teacher
    dataset: str | None = None                  # user records (jsonl/parquet); None: generated problems
    eval_dataset: str | None = None             # user held-out queries
    problems: int = Field(56, gt=0)
    heldout: int = Field(25, ge=0)
    difficulties: list[int] = [0]
    samples: int = Field(8, gt=0)
    teacher_prompts: int = Field(64, gt=0)
    max_new_tokens: int = Field(24, gt=0)
    seq_len: int = Field(80, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vocab_size: int | None = None               # unused here (the checkpoint carries it); kept for the hash
    teacher_cache: TeacherCacheOptions | None = None  # D: also write the teacher cache (at temperature 1)
    reward_model: RewardModelOptions | None = None    # T4: also train the reward model (after the queries)


class RecordError(ValueError):
    """A bad user record: ``file: record N: field: problem``."""


REQUIRED = {"queries": ("prompt", "answer"), "prompts": ("prompt",), "chat": ("messages",),
            "pairs": ("prompt", "chosen", "rejected")}


def read_user_records(path: str, kind: str) -> list[dict]:
    """Every record of the user's file(s), each checked for the fields ``kind`` needs."""
    from qwen3_trainer.platform.data.config import DataSource
    from qwen3_trainer.platform.data.sources import resolve_files
    from qwen3_trainer.platform.data.synthetic import read_records

    out: list[dict] = []
    for file in resolve_files(DataSource(name="dataset", paths=[path])):
        for n, rec in enumerate(read_records([file.url]), start=1):
            _check_record(rec, kind, f"{file.url}: record {n}")
            out.append(rec)
    if not out:
        raise RecordError(f"{path}: no records")
    return out


def _check_record(rec: dict, kind: str, where: str) -> None:
    if kind == "chat" or ("messages" in rec and kind == "pool"):
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise RecordError(f"{where}: messages: expected a list of {{role, content}} strings")
        return
    need = REQUIRED["queries" if kind == "pool" else kind]
    for field in need:
        if field not in rec:
            raise RecordError(f"{where}: {field}: missing")
    prompt = rec["prompt"]
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt):
        raise RecordError(f"{where}: prompt: expected a list of {{role, content}} messages")
    if "answer" in need and not isinstance(rec["answer"], str | int | float):
        raise RecordError(f"{where}: answer: expected a string or number")
    if "constraints" in rec and not isinstance(rec["constraints"], list):
        raise RecordError(f"{where}: constraints: expected a list")


# -- distributed helpers: one process, or torchrun over the GPUs of one node -----------------------
def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _gather(items: list) -> list:
    rank, world = _world()
    if world == 1:
        return items
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    parts: list[list] = [[] for _ in range(world)]
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def _shard(items: list) -> list:
    rank, world = _world()
    return items[rank::world]


def _device(cfg: PrepareConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(path: str, cfg: PrepareConfig):
    import torch

    from qwen3_trainer.model.build import init_buffers
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    device = _device(cfg)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    model = frozen_model(path, device)
    model.model_args.max_seq_len = max(model.model_args.max_seq_len, cfg.seq_len + cfg.max_new_tokens)
    init_buffers(model, device)
    return model


# -- the stages -----------------------------------------------------------------------------------
def _problems(cfg: PrepareConfig):
    from qwen3_trainer.platform.data import synthetic as syn

    return syn.split_problems(cfg.problems, cfg.heldout, seed=cfg.seed, difficulties=cfg.difficulties)


def _heldout(cfg: PrepareConfig, held, flag: str = "") -> list[dict]:
    from qwen3_trainer.platform.data import synthetic as syn

    if cfg.eval_dataset:
        return read_user_records(cfg.eval_dataset, "queries")
    return [syn.query_record(q, flag) for q in held]


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Write the stage's data files under ``cfg.out``; returns counts, and the paths under ``files`` (rank 0 writes)."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.platform.data import synthetic as syn

    paths = {k: storage.join(cfg.out, name) for k, name in FILES[cfg.stage].items()}
    if cfg.stage in ("T3", "D") and not cfg.policy:
        raise ValueError(f"stage {cfg.stage}: prepare needs `policy` "
                         f"({'the T2 model to rejection-sample from' if cfg.stage == 'T3' else 'the teacher'})")
    train, held = _problems(cfg) if not cfg.dataset or not cfg.eval_dataset else ([], [])
    rank, _ = _world()
    write = syn.write_jsonl if rank == 0 else (lambda path, records: len(list(records)))
    if cfg.stage == "T1":
        return {**_coldstart(cfg, train, paths, write), "files": paths}
    if cfg.stage in ("T2", "T4"):
        rng = random.Random(cfg.seed + 1)
        queries = (read_user_records(cfg.dataset, "queries") if cfg.dataset
                   else [syn.query_record(q) for q in train] if cfg.stage == "T2"
                   else [_general_query(q, rng) for q in train])
        report = {"queries": write(paths["queries"], queries),
                  "heldout": write(paths["heldout"], _heldout(cfg, held, "/no_think" if cfg.stage == "T4" else "")),
                  "files": paths}
        if cfg.stage == "T4" and cfg.reward_model is not None:
            report["reward_model"] = _reward_model(cfg, write)
        return report
    if cfg.stage == "T3":
        return {**_fusion(cfg, train, paths, write), "files": paths}
    return {**_distill(cfg, train, held, paths, write), "files": paths}


def _coldstart(cfg: PrepareConfig, train, paths, write) -> dict[str, Any]:
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.posttrain.coldstart import run_coldstart

    if cfg.dataset:
        records = read_user_records(cfg.dataset, "pool")
        chats = [r for r in records if "messages" in r]
        pool = [r for r in records if "messages" not in r]
        if pool and any("candidates" not in r for r in pool):
            bad = next(i for i, r in enumerate(records, 1) if "messages" not in r and "candidates" not in r)
            raise RecordError(f"{cfg.dataset}: record {bad}: candidates: missing (a query needs teacher "
                              "candidates, or give a chat as `messages`)")
        if not pool:
            return {"samples": write(paths["sft"], chats), "user_chats": len(chats)}
    else:
        pool, chats = syn.coldstart_pool(train * 3, seed=cfg.seed, difficulties=cfg.difficulties), []
    if _world()[0] != 0:
        return {}
    report = run_coldstart(pool, paths["sft"])
    if chats:  # user chats join the filtered samples
        from qwen3_trainer.platform.data.synthetic import read_records

        kept = list(read_records(paths["sft"]))
        report["samples"] = write(paths["sft"], kept + chats)
        report["user_chats"] = len(chats)
    return report


def _general_query(q, rng: random.Random) -> dict:
    """A math query with a random mode flag and an instruction to follow (general RL)."""
    from qwen3_trainer.platform.data.synthetic import query_record

    rec = query_record(q, rng.choice(["/think", "/no_think", ""]))
    rule = rng.choice([("End your answer with a period.", {"type": "ends_with", "value": "."}),
                       ("Answer in at most 6 words.", {"type": "max_words", "value": 6}),
                       ("Put the answer in \\boxed{}.", {"type": "boxed"})])
    rec["prompt"][-1]["content"] = f"{rule[0]} {rec['prompt'][-1]['content']}"
    rec["constraints"] = [rule[1]]
    return rec


def _reward_model(cfg: PrepareConfig, write) -> dict[str, Any]:
    """T4: preference pairs (the user's, or generated: a worked answer over a wrong, unboxed or rambling
    one) under ``<out>/reward_model``, then the reward model trained on them in this job (all ranks:
    the trainer's own process group) and exported to ``<out>/reward_model/hf``; a retried job resumes
    its training from ``<out>/reward_model/ckpt``."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.train import parallel
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.run import train

    rm = cfg.reward_model
    if rm.dataset:
        pairs = read_user_records(rm.dataset, "pairs")
    else:
        rng = random.Random(cfg.seed + 2)
        pairs = [syn.preference_record(p, rng) for p in syn.problems(rm.pairs, seed=cfg.seed + 2,
                                                                      difficulties=cfg.difficulties)]
    n_eval = int(len(pairs) * rm.eval_share)
    if len(pairs) - n_eval < 1:
        raise RecordError(f"{rm.dataset or 'reward_model'}: no training pairs left after eval_share {rm.eval_share}")
    raw = json.loads(json.dumps(rm.train))
    params = raw.get("objective", {}).get("params", {})
    if not n_eval:  # too few pairs for the held-out share: no evaluation file, no evaluation
        params.pop("eval_pairs", None)
    if "{dump}" in str(raw.get("dump_dir", "")):  # the plan leaves the job's local log folder to the job
        import tempfile

        raw["dump_dir"] = tempfile.mkdtemp(prefix="qtrain-reward-model-")
    if "{init}" in str(raw.get("init", {}).get("path", "")):  # no stage init given: the seeded init (tests)
        raw.pop("init")
    tcfg = TrainConfig.model_validate(raw)
    if tcfg.objective.name != "reward_model":
        raise ValueError(f"reward_model.train.objective: {tcfg.objective.name!r}; this step trains 'reward_model'")
    folder = storage.join(cfg.out, REWARD_MODEL)
    files = {"train": storage.join(folder, REWARD_PAIRS["train"]), "eval": storage.join(folder, REWARD_PAIRS["eval"])}
    counts = {"pairs": write(files["train"], pairs[n_eval:])}
    if n_eval:
        counts["eval_pairs"] = write(files["eval"], pairs[:n_eval])
    env = parallel.DistEnv.from_env()
    if env.world_size > 1:  # the other ranks read the pairs rank 0 wrote: meet in the trainer's own group
        import torch.distributed as dist

        parallel.init_process_group(env, parallel.resolve_device(tcfg, env))
        dist.barrier()
    history = train(tcfg, env)["history"]
    steps = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval/pair_accuracy" in h]
    report = {**counts, "checkpoint": tcfg.checkpoint.export_hf, "steps": len(steps)}
    if steps:
        report.update({k: round(float(steps[-1][k]), 4) for k in ("loss", "pair_accuracy", "margin") if k in steps[-1]})
    if evals:  # before training and after it
        report["eval_pair_accuracy"] = [round(float(h["eval/pair_accuracy"]), 4) for h in evals]
    return report


def _fusion(cfg: PrepareConfig, train, paths, write) -> dict[str, Any]:
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.posttrain.fusion import build_fusion, rejection_sample

    if cfg.dataset:  # queries are rejection-sampled (thinking half), chats are the non-thinking half
        records = read_user_records(cfg.dataset, "pool")
        queries = [r for r in records if "messages" not in r]
        nonthinking = [r for r in records if "messages" in r]
        filler: list[dict] = []
    else:
        half = len(train) // 2
        queries = [syn.query_record(q) for q in train[:half]]
        nonthinking = [syn.sft_record(q, thinking=False) for q in train[half:]]
    tok = load_tokenizer()
    engine = LocalRolloutEngine(_load(cfg.policy, cfg), tok)
    thinking, rs = rejection_sample(engine, tok, _shard(queries), samples=cfg.samples,
                                    max_new_tokens=cfg.max_new_tokens, seq_len=cfg.seq_len, seed=cfg.seed)
    thinking = _gather(thinking)
    if not cfg.dataset:
        # the miniature's stage-2 model may verify only part of its answers: worked solutions fill the rest
        filler = [syn.sft_record(q, thinking=True) for q in train[: len(queries) - len(thinking)]]
    records, stats = build_fusion(thinking + filler, nonthinking, seed=cfg.seed)
    write(paths["sft"], records)
    return {"samples": len(records), "rejection_sampled": len(thinking), "synthetic_thinking": len(filler),
            "nonthinking": len(nonthinking), "rejection": dict(rs), "fusion": dict(stats)}


def _distill(cfg: PrepareConfig, train, held, paths, write) -> dict[str, Any]:
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.posttrain.distill import teacher_responses

    queries = (read_user_records(cfg.dataset, "prompts") if cfg.dataset else [syn.query_record(q) for q in train])
    tok = load_tokenizer()
    teacher = _load(cfg.policy, cfg)
    records, stats = teacher_responses(teacher, tok, _shard(queries[: cfg.teacher_prompts]),
                                       max_new_tokens=cfg.max_new_tokens, seq_len=cfg.seq_len, verify=False)
    records = _gather(records)
    write(paths["teacher"], records)
    write(paths["prompts"], queries)
    write(paths["heldout"], _heldout(cfg, held))
    report = {"teacher_responses": len(records), "teacher": dict(stats)}
    if cfg.teacher_cache is not None:  # the off-policy phase's forward KL is at temperature 1
        from qwen3_trainer.model import storage
        from qwen3_trainer.platform.posttrain.teacher_cache import TeacherCacheConfig, write_cache

        report["teacher_cache"] = write_cache(TeacherCacheConfig(
            teacher=cfg.policy, data=paths["teacher"], out=storage.join(cfg.out, TEACHER_CACHE), seq_len=cfg.seq_len,
            device=cfg.device, overwrite=True, **cfg.teacher_cache.model_dump()), model=teacher)
    return report
