"""Post-training outcomes in miniature: the recipe's claims checked on debugmodel, on CPU, seeds fixed.

Every training step is a real ``qtrain train`` job (subprocess) with the post-training objectives;
evaluation is greedy decoding with the local rollout engine and the rule verifier on held-out
place-value additions like 40+7 (problems never seen in training). Claims measured:

1. GRPO raises held-out verifier accuracy of a cold-started model.
2. After thinking-mode fusion, ``/no_think`` answers carry an empty think block (>= 95%) and
   ``/think`` answers think — measured with the official template (soft switch off: no pre-filled
   empty block, the model must write it itself).
3. Accuracy does not fall as the thinking budget grows.
4. The on-policy-distilled student beats the same student trained by SFT alone for the same steps.

    OMP_NUM_THREADS=1 python benchmarks/posttrain_outcomes.py --workdir /tmp/pt-outcomes
    (writes benchmarks/results/posttrain_outcomes.json; MLFLOW_TRACKING_URI set: every job's metrics and
     the summary go to MLflow)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SEQ = 80
STEPS = {"cold": 120, "grpo": 40, "fusion": 100, "distill": 30}


def job(workdir: Path, name: str, objective: dict, *, steps: int, lr: float, init: str | None,
        data: dict | None = None, mb: int = 4) -> str:
    """Run one ``qtrain train`` job; returns its exported HF checkpoint."""
    out = workdir / name
    cfg = {"model": {"flavor": "debugmodel"},
           "training": {"steps": steps, "micro_batch_size": mb, "seq_len": SEQ, "seed": 0, "device": "cpu"},
           "optimizer": {"lr": lr, "weight_decay": 0.0}, "lr": {"schedule": "constant"},
           "objective": objective, "init": {"path": init},
           "checkpoint": {"dir": str(out / "ckpt"), "export_hf": str(out / "hf"), "async_save": False},
           "tracking": {"run_name": f"posttrain-outcomes-{name}", "experiment": "posttrain-outcomes"},
           "dump_dir": str(out / "run")}
    if data:
        cfg["data"] = data
    path = out / "config.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    if (out / "hf" / "config.json").exists():
        return str(out / "hf")
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "qwen3_trainer.cli.main", "train", str(path)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise RuntimeError(f"job {name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    print(f"[{name}] {steps} steps in {time.time() - t:.0f}s", flush=True)
    return str(out / "hf")


def sft_data(path: str, name: str) -> dict:
    return {"kind": "sft", "sources": [{"name": name, "paths": [path], "field": "messages"}]}


def engine(path: str, context: int = 192):
    from qwen3_trainer.model.build import init_buffers
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    model = frozen_model(path, "cpu")
    model.model_args.max_seq_len = context  # room for the forced stop-thinking text
    init_buffers(model, "cpu")
    tok = load_tokenizer()
    return LocalRolloutEngine(model, tok), tok


def accuracy(path: str, records: list[dict], flag: str = "", **kw) -> dict[str, float]:
    from qwen3_trainer.platform.posttrain.distill import with_flag
    from qwen3_trainer.platform.posttrain.grpo import evaluate_accuracy

    eng, tok = engine(path)
    recs = [{**r, "prompt": with_flag(r["prompt"], flag) if flag else r["prompt"]} for r in records]
    return evaluate_accuracy(eng, tok, recs, max_new_tokens=kw.pop("max_new_tokens", 32), seq_len=192, **kw)


def mode_rates(path: str, records: list[dict]) -> dict[str, float]:
    """Soft switch off (official template): does the model itself write an empty / a non-empty think block?"""
    from qwen3_trainer.model.generation import SamplingParams
    from qwen3_trainer.platform.posttrain import rollouts, verifiers
    from qwen3_trainer.platform.posttrain.distill import with_flag

    eng, tok = engine(path)
    out = {}
    for flag in ("/no_think", "/think", ""):
        prompts = [with_flag(r["prompt"], flag) if flag else r["prompt"] for r in records]
        ids = [rollouts.prompt_ids(tok, p, soft_switch=False) for p in prompts]
        gen = eng.generate(ids, SamplingParams(max_new_tokens=32))
        empty = thinks = correct = 0
        for rec, p, toks in zip(records, prompts, gen.tokens, strict=True):
            text = rollouts.response_text(tok, p, toks, soft_switch=False)
            thought, _ = verifiers.split_thinking(text)
            empty += thought == "" and text.lstrip().startswith("<think>")
            thinks += bool(thought)
            correct += verifiers.math_reward(text, rec["answer"])
        key = flag.strip("/") or "no_flag"
        n = len(records)
        out.update({f"{key}/empty_think_rate": empty / n, f"{key}/thinking_rate": thinks / n,
                    f"{key}/accuracy": correct / n})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/posttrain-outcomes")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "posttrain_outcomes.json"))
    ap.add_argument("--render", action="store_true", help="only rewrite benchmarks/posttrain.md from --out")
    args = ap.parse_args(argv)
    if args.render:
        (ROOT / "benchmarks" / "posttrain.md").write_text(render(json.loads(Path(args.out).read_text())))
        return
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.posttrain.coldstart import run_coldstart
    from qwen3_trainer.platform.posttrain.distill import teacher_responses
    from qwen3_trainer.platform.posttrain.fusion import build_fusion, rejection_sample

    t0 = time.time()
    w = Path(args.workdir)
    d = w / "data"
    train, held = syn.split_problems(56, 25, seed=0, difficulties=[0])
    train_q = [syn.query_record(p) for p in train]
    held_q = [syn.query_record(p) for p in held]
    syn.write_jsonl(str(d / "train.jsonl"), train_q)
    syn.write_jsonl(str(d / "held.jsonl"), held_q)
    cold_report = run_coldstart(syn.coldstart_pool(train * 4, seed=0, difficulties=[0]), str(d / "coldstart.jsonl"))
    result: dict = {"task": "place-value addition (40+7); 56 train / 25 held-out problems (disjoint)",
                    "model": "debugmodel (dim 64, 2 layers, vocab 151936), fp32 CPU", "steps": STEPS,
                    "coldstart_filter": {k: v for k, v in cold_report.items() if k != "path"}}

    # 1. cold start, then GRPO
    cold = job(w, "cold", {"name": "sft"}, steps=STEPS["cold"], lr=3e-3, init=None,
               data=sft_data(str(d / "coldstart.jsonl"), "coldstart"))
    grpo_params = {"queries": str(d / "train.jsonl"), "eval_queries": str(d / "held.jsonl"), "eval_size": 25,
                   "group_size": 8, "prompts_per_step": 8, "ppo_epochs": 2, "minibatches": 2,
                   "max_new_tokens": 24, "temperature": 1.0, "eval_interval": 5,
                   "rewards": [{"name": "math"}, {"name": "format", "weight": 0.2}]}
    grpo = job(w, "grpo", {"name": "grpo", "params": grpo_params}, steps=STEPS["grpo"], lr=1e-3, init=cold, mb=16)
    result["grpo"] = {"heldout_before": accuracy(cold, held_q), "heldout_after": accuracy(grpo, held_q),
                      "train_before": accuracy(cold, train_q), "train_after": accuracy(grpo, train_q)}
    print(json.dumps(result["grpo"]), flush=True)

    # 2. fusion: thinking samples rejection-sampled from the GRPO model + non-thinking samples
    eng, tok = engine(grpo)
    half = len(train) // 2
    thinking, rs = rejection_sample(eng, tok, train_q[:half] * 2, samples=4, max_new_tokens=24, seed=1)
    nonthinking = [syn.sft_record(p, thinking=False) for p in train[half:]] * 2
    filler = [syn.sft_record(p, thinking=True) for p in train[: max(0, len(nonthinking) - len(thinking))]]
    fused, stats = build_fusion(thinking + filler, nonthinking, seed=0)
    syn.write_jsonl(str(d / "fusion.jsonl"), fused)
    fusion = job(w, "fusion", {"name": "sft"}, steps=STEPS["fusion"], lr=2e-3, init=grpo,
                 data=sft_data(str(d / "fusion.jsonl"), "fusion"))
    result["fusion"] = {"data": {"rejection_sampled": len(thinking), "synthetic_thinking": len(filler),
                                 "nonthinking": len(nonthinking), "rejection": dict(rs), "build": dict(stats)},
                        "heldout_modes": mode_rates(fusion, held_q)}
    print(json.dumps(result["fusion"]), flush=True)

    # 3. thinking budget on the fused model (/think prompts, soft switch on)
    result["thinking_budget"] = {str(b): accuracy(fusion, held_q, "/think", thinking_budget=b, max_new_tokens=64)
                                 for b in (0, 1, 2, 4, 8, None)}
    print(json.dumps(result["thinking_budget"]), flush=True)

    # 4. distillation: teacher = fused model; student = the cold-start model; same steps for both arms
    student = cold
    teach_eng, _ = engine(fusion)
    records, tstats = teacher_responses(teach_eng.model, tok, train_q, max_new_tokens=24, seq_len=SEQ, verify=False)
    syn.write_jsonl(str(d / "teacher.jsonl"), records)
    n = STEPS["distill"]
    sft_only = job(w, "distill_sft", {"name": "distill_offpolicy", "params": {"mode": "sft"}}, steps=n, lr=1e-3,
                   init=student, data=sft_data(str(d / "teacher.jsonl"), "teacher"))
    onpol = job(w, "distill_onpolicy", {"name": "distill_onpolicy", "params": {
        "teacher": fusion, "prompts": str(d / "train.jsonl"), "offpolicy_data": str(d / "teacher.jsonl"),
        "offpolicy_steps": n // 2, "think_ratio": 0.5, "prompts_per_step": 8, "max_new_tokens": 24}},
        steps=n, lr=1e-3, init=student)
    result["distillation"] = {"teacher_responses": dict(tstats), "steps_each": n}
    for name, path in (("teacher", fusion), ("student_start", student), ("sft_only", sft_only),
                       ("offpolicy_then_onpolicy", onpol)):
        result["distillation"][name] = {flag: accuracy(path, held_q, f"/{flag}")["eval/accuracy"]
                                        for flag in ("think", "no_think")}
    print(json.dumps(result["distillation"]), flush=True)

    result["claims"] = claims(result)
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "load_avg_1m": os.getloadavg()[0], "wall_seconds": round(time.time() - t0)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    (ROOT / "benchmarks" / "posttrain.md").write_text(render(result))
    log_summary(result)
    print(json.dumps(result["claims"], indent=1))


def claims(r: dict) -> dict[str, bool]:
    g, f, b, dd = r["grpo"], r["fusion"]["heldout_modes"], r["thinking_budget"], r["distillation"]
    accs = [b[k]["eval/accuracy"] for k in b]
    mean = {k: (v["think"] + v["no_think"]) / 2 for k, v in dd.items() if isinstance(v, dict) and "think" in v}
    return {
        "grpo_raises_heldout_accuracy": g["heldout_after"]["eval/accuracy"] > g["heldout_before"]["eval/accuracy"],
        "no_think_empty_block_ge_95pct": f["no_think/empty_think_rate"] >= 0.95,
        "think_answers_think": f["think/thinking_rate"] >= 0.95,
        "no_flag_defaults_to_thinking": f["no_flag/thinking_rate"] >= 0.95,
        "accuracy_non_decreasing_in_budget": all(a <= b_ + 1e-9 for a, b_ in zip(accs, accs[1:], strict=False)),
        "onpolicy_beats_sft_only": mean["offpolicy_then_onpolicy"] > mean["sft_only"],
    }


def render(r: dict) -> str:
    """benchmarks/posttrain.md from the results."""
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    g, f, b, d = r["grpo"], r["fusion"]["heldout_modes"], r["thinking_budget"], r["distillation"]
    ok = lambda k: "holds" if r["claims"][k] else "does NOT hold"  # noqa: E731
    lines = [
        "# Post-training outcomes in miniature",
        "",
        f"Task: {r['task']}. Model: {r['model']}. Steps per job: {r['steps']}. Every training run is a",
        "`qtrain train` job with the post-training objectives; evaluation is greedy decoding with the local",
        "rollout engine, scored by the rule verifier (boxed answer). Reproduce:",
        "`OMP_NUM_THREADS=1 python benchmarks/posttrain_outcomes.py --workdir /tmp/pt` "
        f"({r['machine']['wall_seconds']} s on {r['machine']['cpus']} shared CPU cores, load "
        f"{r['machine']['load_avg_1m']:.1f}); numbers: `benchmarks/results/posttrain_outcomes.json`.",
        "With 25 held-out problems one problem is 4 points: differences of one or two problems are noise.",
        "",
        "## 1. GRPO after the cold start",
        "",
        "| model | held-out accuracy | train accuracy | format |",
        "|---|---|---|---|",
        f"| cold start (SFT on filtered long-CoT samples) | {pct(g['heldout_before']['eval/accuracy'])} | "
        f"{pct(g['train_before']['eval/accuracy'])} | {pct(g['heldout_before']['eval/format'])} |",
        f"| + GRPO | {pct(g['heldout_after']['eval/accuracy'])} | {pct(g['train_after']['eval/accuracy'])} | "
        f"{pct(g['heldout_after']['eval/format'])} |",
        "",
        f"Claim 'GRPO raises held-out verifier accuracy': **{ok('grpo_raises_heldout_accuracy')}**.",
        f"Cold-start filter: {r['coldstart_filter']['queries']} queries -> {r['coldstart_filter']['samples']} samples;",
        f"dropped queries {r['coldstart_filter']['query_dropped']}, responses {r['coldstart_filter']['response_dropped']}.",
        "",
        "## 2. Thinking-mode fusion (official template: the model writes the think block itself)",
        "",
        "| prompt flag | empty think block | non-empty thinking | accuracy |",
        "|---|---|---|---|",
    ]
    for key, label in (("no_think", "/no_think"), ("think", "/think"), ("no_flag", "(none)")):
        lines.append(f"| {label} | {pct(f[key + '/empty_think_rate'])} | {pct(f[key + '/thinking_rate'])} | "
                     f"{pct(f[key + '/accuracy'])} |")
    lines += ["", f"Fusion data: {r['fusion']['data']}.",
              f"Claims: /no_think empty block >= 95% **{ok('no_think_empty_block_ge_95pct')}**; /think answers think "
              f"**{ok('think_answers_think')}**; no flag defaults to thinking **{ok('no_flag_defaults_to_thinking')}**.",
              "", "## 3. Thinking budget (fused model, /think prompts)", "",
              "| budget (thinking tokens) | " + " | ".join(b) + " |", "|---|" + "---|" * len(b),
              "| held-out accuracy | " + " | ".join(pct(v["eval/accuracy"]) for v in b.values()) + " |", "",
              f"Claim 'accuracy does not fall as the budget grows': **{ok('accuracy_non_decreasing_in_budget')}**.",
              "", f"## 4. Strong-to-weak distillation ({d['steps_each']} steps each arm, same student start)", "",
              "| model | held-out /think | held-out /no_think |", "|---|---|---|"]
    for key in ("teacher", "student_start", "sft_only", "offpolicy_then_onpolicy"):
        lines.append(f"| {key} | {pct(d[key]['think'])} | {pct(d[key]['no_think'])} |")
    lines += ["", f"Claim 'on-policy distillation beats SFT alone for the same steps': "
              f"**{ok('onpolicy_beats_sft_only')}**.", ""]
    if r["machine"].get("note"):
        lines += [f"Run note: {r['machine']['note']}", ""]
    lines += [
        "## Reading the numbers",
        "",
        "- GRPO: 40 steps (10 rounds of 8 queries x 8 samples, 2 PPO epochs) do not move greedy accuracy;",
        "  sampled (T=1) train reward stays at 5-27% per round while greedy train accuracy is ~45%. The",
        "  objective, advantages and clipping are verified by hand in tests; the miniature is too short (or",
        "  the learning rate too low) for RL to show an effect on this model. Not demonstrated. Two variants",
        "  tried afterwards from the same cold start (lr 2e-3 with 16 queries per round; lr 3e-3 at",
        "  temperature 0.7) were stopped after 9-20 steps: sampled reward fell and entropy rose (0.5 -> 0.8).",
        "  tests/platform/posttrain/test_rollouts.py checks the update direction through the trainer.",
        "- Thinking budget: the claim holds only trivially. The stop-thinking text is never trained (as in",
        "  the report), and this tiny model does not recover an answer after it: accuracy is 0 for every",
        "  finite budget tried and non-zero only without a budget.",
        "- Distillation: the student starts from the cold-start model, which never saw mode flags (its",
        "  flagged accuracy is near 0). Both arms improve it; SFT alone is ahead here by one or two held-out",
        "  problems, within noise. Not demonstrated.",
        "- Fusion: the mode rates are measured with the official template (no pre-filled empty block), so",
        "  the model itself must follow the flag; this holds.",
        "",
    ]
    return "\n".join(lines)


def log_summary(result: dict) -> None:
    from qwen3_trainer.platform.tracking import Tracker, flatten

    t = Tracker(enabled=True, uri=None, experiment="posttrain-outcomes", run_name="posttrain-outcomes-summary",
                metrics_file=None)
    numbers = {k: float(v) for k, v in flatten(result).items() if _is_number(v)}
    t.log_metrics(0, numbers)
    t.close()


def _is_number(v) -> bool:
    try:
        float(v)
        return v not in ("True", "False")
    except (TypeError, ValueError):
        return False


if __name__ == "__main__":
    main()
