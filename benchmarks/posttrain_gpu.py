"""Post-training at real size on one GPU (issue 18, item 7): the recipe's ``single-gpu`` preset, its
T2 reasoning-RL stage (GRPO on Qwen3-1.7B, 32 prompts x 8 samples, 1,024-token responses) and its
D stage (on-policy distillation from an 8B teacher into a 0.6B student), each run as the product's
own prepare + train jobs' code (``qwen3_trainer.platform.posttrain.prepare``, then ``qtrain train``
on the config ``recipe.plan`` renders). Policy, student and teacher are seeded inits (no weights can
be downloaded); the teacher is written once as a DCP checkpoint. Random weights never stop early, so
every response runs the full 1,024 tokens: the slowest case for the rollout.

Writes ``--out`` (JSON) with ``rows``: {objective, flavor, teacher_flavor, max_new_tokens, step_s,
rollout_s, train_s, sync_s, tokens_per_s, peak_mem_gib} per steady-state round (the first round, which
compiles and captures, is kept apart as ``warmup``), written after each phase so a timeout leaves the
rest. A GRPO "step" here is one rollout round: the round's generation, its log-prob passes and its
``minibatches`` optimizer updates (verl's accounting).

Device command (one H200; wheels as in benchmarks/gpu_env.sh, plus math-verify, latex2sympy2-extended
and antlr4-python3-runtime for the math verifier)::

    bash benchmarks/gpu_posttrain.sh
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


def _rounds(metrics: Path, started_ms: float) -> list[dict]:
    """Per rollout round: wall seconds (between the round's last step and the previous round's; the
    first from the process start, so it holds build and compile), the summed train-step seconds, the
    engine's generate / sync seconds and the step tokens."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r for r in rows if "step_seconds" in r]
    by_round: dict[int, list[dict]] = {}
    for r in steps:
        by_round.setdefault(int(r.get("rollout/round", r["step"])), []).append(r)
    out, prev_end = [], None
    start = started_ms
    for k in sorted(by_round):
        rs = by_round[k]
        end = rs[-1]["time_ms"]
        wall = (end - (prev_end if prev_end is not None else start)) / 1e3
        first = rs[0]
        out.append({
            "round": k, "wall_s": wall, "train_s": sum(r["step_seconds"] for r in rs),
            "rollout_s": first.get("rollout/generate_s"), "sync_s": first.get("rollout/sync_s"),
            "logprob_s": first.get("rollout/logprob_s"),
            "tokens": sum(r.get("tokens", 0) for r in rs), "peak_mem_gib": max(r.get("mem/peak_gib", 0) for r in rs),
            "response_tokens": first.get("rollout/response_tokens"), "updates": len(rs)})
        prev_end = end
    return out


def _train(cfg: dict, work: Path, timeout: float) -> tuple[list[dict], float]:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.time()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "qwen3_trainer.cli.main", "train", str(path)], env=env,
                          timeout=timeout, text=True, capture_output=True)
    wall = time.time() - t0
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    print("\n".join((proc.stdout + proc.stderr).splitlines()[-25:]), flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train exited {proc.returncode} (log {work / 'train.log'})")
    return _rounds(Path(cfg["dump_dir"]) / "metrics.jsonl", t0 * 1e3), wall


def _for_proof(cfg: dict, work: Path) -> dict:
    """The stage's rendered config, run here: no checkpoints or export, no held-out evaluation (its
    200 x 1,024-token generations are a separate cost), metrics in the work folder."""
    cfg = dict(cfg)
    cfg["checkpoint"] = {"dir": None}
    cfg["dump_dir"] = str(work / "run")
    cfg.pop("tracking", None)
    params = dict(cfg["objective"]["params"])
    params.pop("eval_queries", None)
    params["eval_size"] = 0
    cfg["objective"] = {**cfg["objective"], "params": params}
    return cfg


def _row(objective: str, flavor: str, teacher: str | None, new_tokens: int, r: dict) -> dict:
    step = r["wall_s"]
    return {"objective": objective, "flavor": flavor, "teacher_flavor": teacher, "max_new_tokens": new_tokens,
            "round": r["round"], "step_s": round(step, 2),
            "rollout_s": None if r["rollout_s"] is None else round(r["rollout_s"], 2),
            "rollout_fraction": None if r["rollout_s"] is None else round(r["rollout_s"] / step, 3),
            "train_s": round(r["train_s"], 2), "sync_s": None if r["sync_s"] is None else round(r["sync_s"], 3),
            "logprob_s": None if r["logprob_s"] is None else round(r["logprob_s"], 2),
            "tokens_per_s": round(r["tokens"] / step), "peak_mem_gib": round(r["peak_mem_gib"], 1),
            "response_tokens": r["response_tokens"], "updates": r["updates"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", default="/tmp/qtrain-posttrain-gpu")
    ap.add_argument("--rounds", type=int, default=3, help="rollout rounds per objective (the first warms up)")
    ap.add_argument("--only", choices=["grpo", "distill"], default=None)
    ap.add_argument("--teacher-flavor", default="8B")
    ap.add_argument("--preset", default="single-gpu", help="single-gpu (the proof); tiny checks this script on CPU")
    ap.add_argument("--budget-s", type=float, default=480, help="wall seconds for the whole run")
    args = ap.parse_args(argv)

    import torch

    from qwen3_trainer.platform.posttrain.prepare import PrepareConfig, prepare
    from qwen3_trainer.recipe.plan import plan
    from qwen3_trainer.recipe.presets import get_preset

    t_start = time.time()
    left = lambda: args.budget_s - (time.time() - t_start)  # noqa: E731
    preset = get_preset(args.preset)
    root = Path(args.root)
    result = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "preset": args.preset, "rows": [], "warmup": [], "notes": []}
    out = Path(args.out)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    if args.only in (None, "grpo"):
        p = plan(preset, ["T2"])["T2"]
        g = p.spec.objective
        steps = args.rounds * g.minibatches * g.ppo_epochs
        p = plan(preset, ["T2"], max_steps=steps)["T2"]
        prepare(PrepareConfig(**p.prepare_config(str(root), init=None, teacher=None)))
        cfg = _for_proof(p.train_config(str(root), init=None, teacher=None, dump=""), root / "T2")
        try:
            rounds, wall = _train(cfg, root / "T2", timeout=max(30, left() - 150 * (args.only is None)))
            rows = [_row("grpo", p.spec.flavor, None, g.max_new_tokens, r) for r in rounds]
            result["warmup"] += rows[:1]
            result["rows"] += rows[1:]
            result["notes"].append(f"grpo: {len(rounds)} rounds x {g.minibatches * g.ppo_epochs} updates in {wall:.0f} s "
                                   f"(process wall, with build and compile)")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result["notes"].append(f"grpo failed: {exc}")
        save()

    if args.only in (None, "distill") and left() > 60:
        from qwen3_trainer.model.build import build_model
        from qwen3_trainer.model.dcp_io import save_model_dcp

        teacher = root / f"teacher-{args.teacher_flavor}"
        if not (teacher / ".metadata").exists():
            t = time.time()
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            model = build_model(args.teacher_flavor, device=dev, dtype=torch.bfloat16 if dev == "cuda" else None, seed=1)
            save_model_dcp(model, str(teacher))
            del model
            torch.cuda.empty_cache()
            result["notes"].append(f"teacher {args.teacher_flavor}: seeded init written in {time.time() - t:.0f} s")
        p = plan(preset, ["D"])["D"]
        d = p.spec.objective
        p = plan(preset, ["D"], max_steps=args.rounds)["D"]
        prep = p.prepare_config(str(root), init=None, teacher=str(teacher))
        prep.update({"teacher_prompts": 16, "max_new_tokens": 64})  # the off-policy phase is not timed here
        prep.pop("teacher_cache", None)
        prepare(PrepareConfig(**prep))
        cfg = _for_proof(p.train_config(str(root), init=None, teacher=str(teacher), dump=""), root / "D")
        cfg.pop("init", None)  # the student's seeded init (a 0.6B of its own, not the teacher's line)
        cfg["objective"]["params"]["offpolicy_steps"] = 0  # every timed step on-policy
        try:
            rounds, wall = _train(cfg, root / "D", timeout=max(30, left() - 10))
            rows = [_row("distill_onpolicy", p.spec.flavor, args.teacher_flavor, d.max_new_tokens, r) for r in rounds]
            result["warmup"] += rows[:1]
            result["rows"] += rows[1:]
            result["notes"].append(f"distill: {len(rounds)} steps in {wall:.0f} s (process wall)")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result["notes"].append(f"distill failed: {exc}")
        save()
    save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
