"""Post-training outcomes in miniature: the recipe's claims checked on debugmodel, on CPU, seeds fixed.

Every training step is a real ``qtrain train`` job (subprocess) with the post-training objectives. Task:
place-value additions up to hundreds (340+7, synthetic level 5), 400 training and 200 held-out problems
(disjoint). Evaluation uses the local rollout engine and the rule verifier on the held-out problems, in
two protocols: greedy, and sampled = the mean over 4 samples per problem at T=0.6, top-p 0.95 (the Qwen3
report's thinking-mode protocol). Claims measured (protocol and thresholds fixed in ``claims``):

1. GRPO raises held-out verifier accuracy of a cold-started model.
2. After thinking-mode fusion, ``/no_think`` answers carry an empty think block (>= 95%) and
   ``/think`` answers think — measured with the official template (soft switch off: no pre-filled
   empty block, the model must write it itself).
3. Accuracy does not fall as the thinking budget grows (budgets below and above the thinking length).
4. The on-policy-distilled student beats the same student trained by SFT alone for the same steps.

    OMP_NUM_THREADS=1 python benchmarks/posttrain_outcomes.py --workdir /tmp/pt-outcomes
    (writes benchmarks/results/posttrain_outcomes.json and benchmarks/posttrain.md; MLFLOW_TRACKING_URI
     set: every job's metrics and the summary go to MLflow). A job whose config is unchanged in the
    workdir, and whose inputs (init checkpoint, data, teacher: hashed) are unchanged, is reused with its cached
    evaluations; POSTTRAIN_OUTCOMES_DEVICE=cuda runs it on a GPU.

Each run's changes are pre-registered before it trains (PREREGISTERED for run 3, PREREGISTERED_RUN4 ...
PREREGISTERED_RUN7 for run 7, the committed numbers); all are rendered into benchmarks/posttrain.md. Run 7
retrains only the two distillation arms (``--reuse-from`` run 5's workdir: its cold start, fused teacher and
teacher responses, checked by their input hashes and copied unchanged) and judges claim 4 on the test set
(``outside_split``); sections 1-3 stay run 5's (``--previous``: run 6's results, which carry them). Run 6 did the
same with its settings (the script at 78b24a7, ``--previous`` run 5's results).

    OMP_NUM_THREADS=1 python benchmarks/posttrain_outcomes.py --workdir /tmp/pt7 --reuse-from /tmp/pt5 \
        --previous benchmarks/results/posttrain_outcomes_run6.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SEQ = 80
LEVEL = 5  # place-value addition up to hundreds (340+7): 891 distinct problems
N_TRAIN, N_HELD = 400, 200
RUN = 7
FRESH_SEED = 6  # run 6: held-out problems drawn from the level-5 problems outside both seed-2 sets
# run 7 (PREREGISTERED_RUN7): test set = every level-5 problem outside run 5's split (291, run 6's 200 included);
# dev set = run 5's held-out problems (the pilots were read on it)
SPLIT_SEED = 2  # run 5 (PREREGISTERED_RUN5): a fresh train/held-out split; run 4: 1; runs 2-3: 0
# run 5: rejection sampling on the /think-flagged prompt, /no_think replies = the empty think block + the bare
# boxed answer; run 4: lr 5e-4, 8 rejection samples on unflagged prompts; runs 2-3: lr 2e-3, 4 rejection samples
FUSION = {"lr": 5e-4, "rejection_samples": 8, "rejection_prompt_flag": "/think",
          "nonthinking_reply": "empty think block + \\boxed{answer} only"}
# run 5: fusion 300 steps (runs 2-4: 100); run 3 (PREREGISTERED): grpo 160, distill 80; run 2: grpo 40, distill 40
STEPS = {"cold": 240, "grpo": 160, "fusion": 300, "distill": 240}  # run 7: distill 240 (runs 3-6: 80)
# Qwen3 report's thinking-mode protocol: mean accuracy over k samples at T=0.6, top-p 0.95
SAMPLED = {"samples": 4, "temperature": 0.6, "top_p": 0.95}
BUDGETS = (0, 4, 8, 16, 32, 64, None)
N_BUDGET = 100  # held-out problems for the budget curve (7 budgets x 5 responses each)
GRPO = {"group_size": 8, "prompts_per_step": 8, "ppo_epochs": 2, "minibatches": 2, "max_new_tokens": 24,
        "temperature": 0.8, "top_p": 0.95, "lr": 5e-4}  # run 2: lr 1e-3
DEVICE = os.environ.get("POSTTRAIN_OUTCOMES_DEVICE", "cpu")  # the committed numbers are CPU ones
# run 7 (PREREGISTERED_RUN7): 40 off-policy + 200 on-policy steps against the teacher at temperature 0.3;
# run 6: 40 + 40 at teacher temperature 1; runs 3-5: 20 + 60
DISTILL = {"offpolicy_mode": "sft", "offpolicy_steps": 40, "think_ratio": 0.5, "prompts_per_step": 8,
           "max_new_tokens": 24, "temperature": 0.8, "top_p": 0.95, "teacher_temperature": 0.3, "lr": 1e-3,
           "micro_batch": 8}
PREREGISTERED = (
    "Pre-registered for run 3 (2026-11-29, 10:15 UTC, committed before its training started; decided from "
    "run 2's training curves, step counts and step times only, never its held-out numbers). Run 2 did not "
    "establish claims 1 and 4 (GRPO +5.8 ± 3.5, on-policy distillation +0.7 ± 0.9 points sampled). Changed: "
    "(a) GRPO 40 -> 160 optimizer steps. One step is one update and each rollout batch (8 prompts x 8 "
    "samples) feeds ppo_epochs 2 x minibatches 2 = 4 updates, so run 2 saw only 10 rollout batches = 80 of "
    "the 400 training prompts, and its per-batch math reward (0.16-0.61) was too noisy to show a trend; "
    "160 steps = 40 rollout batches = 320 prompts (~31 min on 2 CPU cores at run 2's 466 s / 40 steps). "
    "(b) GRPO lr 1e-3 -> 5e-4: in run 2's last rollout batch the format reward fell to 0.58, truncation rose "
    "to 31% and the policy entropy to 0.42 (from 0.27), the largest grad norm (1.6) came at step 37, so a "
    "4x longer run at the same constant lr risks drifting off the format (earlier lr 2e-3 / 3e-3 runs "
    "collapsed); half the lr for 4x the updates still moves the policy about twice as far as run 2. "
    "(c) Distillation 40 -> 80 steps per arm, the off-policy phase unchanged at 20 steps, so the on-policy "
    "arm gets 60 on-policy steps instead of 20: the arms differ only in that phase, and its reverse KL was "
    "still falling at run 2's last step (0.50 -> 0.12) (~4 more minutes). Unchanged: data, cold start "
    "(reused), fusion and budget settings, evaluation protocols, and the pass rule: claims 1 and 4 hold "
    "only if the sampled gain, paired over the 200 held-out problems, exceeds 2 standard errors. The fusion "
    "model (from the new GRPO model) and so the teacher are retrained; whatever comes out is reported, and "
    "no further variant is tried on these held-out problems. Mechanics fixed with it: a job counts as already "
    "trained only if its config AND the hashes of its inputs (init checkpoint, data, teacher) match, since "
    "the fusion config names grpo/hf, which the retrained GRPO job overwrites (the cold start's inputs were "
    "checked byte-identical to its run-2 data and stamped once).")


PREREGISTERED_RUN4 = (
    "Pre-registered for run 4 (2026-11-29, 11:13 UTC, commit 5334301, before its training started). Run 3 "
    "established claims 1-3 but not claim 4 (on-policy distillation +1.4 ± 1.6 points sampled), and it "
    "showed why: the teacher (the fused model) is weak because the fusion step undid most of the GRPO "
    "gain (71.5% -> 30.0% /think greedy), and the GRPO model's thinking rarely matches its boxed answer, "
    "so rejection sampling kept only 34 of 200 queries. Those observations were made on run 3's held-out "
    "problems, so run 4 is judged on a fresh split (split_problems seed 0 -> 1: new 400 train / 200 "
    "held-out problems, disjoint from each other; every job is retrained from scratch in a new workdir). "
    "Changed: (a) fusion lr 2e-3 -> 5e-4 (the same 100 steps), so fusion adds the mode switch without "
    "overwriting the RL policy; (b) rejection sampling 4 -> 8 samples per query, for more thinking samples "
    "from the GRPO model. Unchanged: every other setting of run 3 (cold start, GRPO 160 steps at lr 5e-4, "
    "distillation 80 steps per arm with 20 off-policy, budgets, evaluation protocols) and the pass rule: "
    "claims 1 and 4 hold only if the sampled gain, paired over the 200 held-out problems, exceeds 2 "
    "standard errors. Whatever comes out is reported; run 3's results stay committed in "
    "benchmarks/results/posttrain_outcomes_run3.json.")


PREREGISTERED_RUN5 = (
    "Pre-registered for run 5 (2026-11-29, 13:39 UTC, committed before its training started; the plan "
    "stated at the end of run 4's notes). Run 4 replicated GRPO (+37.9 ± 3.1 points sampled) but not claim 4 "
    "(on-policy distillation -0.4 ± 0.8): its fusion taught the mode switch (/no_think empty block 100%, "
    "/think thinks 99.0%) but its fused model answered only 3.5% of /think and 6.5% of /no_think prompts "
    "(46.5% unflagged, GRPO model 63.5%), so the distillation teacher was weak: a flagged prompt stayed out of "
    "distribution, since the thinking half had been sampled from the GRPO model on unflagged prompts. Run 5 "
    "is judged on a fresh split (split_problems seed 1 -> 2: new 400 train / 200 held-out problems, disjoint; "
    "every job retrained from scratch in a new workdir). Changed: (a) the thinking half is rejection-sampled "
    "from the GRPO model with the /think flag already in the prompt (the user turn ends in ' /think'; 8 "
    "samples per query, the first kept that verifies, has a non-empty think block and passes the cold-start "
    "judges; queries with none get the synthetic worked solution, as before); the kept reply is then given "
    "to the fusion builder under its question without the flag, and the builder places the flag by its "
    "unchanged rules (/think in the user or system turn, 25% no flag, 20% multi-turn), so every thinking "
    "reply is the policy's own reply to a /think prompt; (b) the non-thinking half's /no_think answers are "
    "kept short: the reply is the empty think block followed by the bare final answer '\\boxed{N}', no worked "
    "solution and no other text (the script refuses to train if any non-thinking source reply is anything "
    "else; run 4's synthetic direct answers already had this form, so this fixes it rather than changes it); "
    "(c) fusion SFT 100 -> 300 steps at the same lr 5e-4. Unchanged: every other setting of run 4 (cold "
    "start 240 steps, GRPO 160 steps at lr 5e-4, distillation 80 steps per arm with 20 off-policy and the "
    "fused model as teacher, budgets, evaluation protocols) and the pass rule: claims 1 and 4 hold only if "
    "the sampled gain, paired over the 200 held-out problems, exceeds 2 standard errors. Whatever comes out "
    "is reported; run 4's results stay committed in benchmarks/results/posttrain_outcomes_run4.json. Seen "
    "before committing (run 4's GRPO model on the first 16 training queries of the seed-2 split, no held-out "
    "problem): on the /think-flagged prompt it kept 0 of 16 queries (the flag, never seen in its training, "
    "breaks its replies: they lose the opening think tag and the sum), against 11 of 16 on the unflagged "
    "prompt. So run 5's thinking half is expected to be mostly the synthetic worked solutions (the fallback), "
    "not the policy's own replies; the plan is run as written regardless, and the kept count is reported.")


# run 6's pre-registration (78b24a7) lives in its results: posttrain_outcomes_run6.json, key preregistered_run6

PREREGISTERED_RUN7 = (
    "Pre-registered for run 7 (2026-11-29, 17:14 UTC, committed before either arm trained; pilots listed below). "
    "Run 6 did not establish claim 4 (on-policy minus SFT alone -6.7 ± 1.7 points sampled on its fresh problems). "
    "Mechanism found in the pilots: the on-policy phase minimises reverse KL to the teacher's distribution at "
    "temperature 1, and that distribution is a much weaker policy than the teacher's greedy one (teacher on 100 "
    "training prompts: /think 56% greedy, 45.3% at T=0.6, 29.5% at T=1; /no_think 33% / 31.8% / 25.3%), while SFT "
    "alone imitates the teacher's greedy responses. The on-policy student does converge to its target (reverse KL "
    "about 0.02 after 200 on-policy steps), so at temperature 1 it converges to the weaker policy. Changes (both "
    "read on the dev set, run 5's held-out problems, before this commit): (a) the on-policy target is the teacher "
    "at temperature 0.3 (``teacher_temperature``: softmax(teacher logits / 0.3)); (b) both arms run 240 steps "
    "(runs 3-6: 80): SFT alone = 240 steps of cross-entropy on the teacher's responses; the other arm = 40 such "
    "steps, then 200 on-policy steps. Unchanged: the student (run 5's cold start), the teacher (run 5's fused model) "
    "and its responses (reused, hashes checked as in run 6), lr 1e-3, 8 sequences per step, think ratio 0.5, rollout "
    "sampling T=0.8 / top-p 0.95 / 24 new tokens, the evaluation protocols. Both arms are retrained from scratch in "
    "a new workdir with this commit's code. Test set: every level-5 problem outside run 5's split, 291 problems "
    "(run 6's 200 fresh problems, on which only run 6's arms were ever evaluated, and 91 never evaluated); no model "
    "of the chain trained on any of them and no run-7 decision was read on them. Pass rule (unchanged): claim 4 "
    "holds only if the sampled gain of on-policy over SFT alone, paired over the 291 test problems (x both modes), "
    "exceeds 2 standard errors. Expected from the dev pilot of exactly this design: +1.7 ± 1.85 points sampled, "
    "+1.5 ± 2.0 greedy, a gain the 291 test problems can establish only if the true effect is larger than that "
    "(2 standard errors there are about 3 points); the run is made anyway, as the best-supported design, and "
    "whatever comes out is reported. The arms are also read on the dev set, labelled as such. Run 6's results stay "
    "in benchmarks/results/posttrain_outcomes_run6.json.")

PILOTS_RUN7 = [
    "Training prompts (the first 100 of run 5's 400), a 1-layer student (debugmodel cut to 1 layer, cold-started "
    "like the 2-layer one: 240 steps, final loss 0.57 against 0.20), 80 steps per arm as in run 6: SFT alone 2.0% / "
    "5.0% greedy (/think, /no_think), on-policy 4.0% / 4.0%: a 1-layer student does not learn the task, so a "
    "smaller student was dropped.",
    "Teacher on the same 100 training prompts by sampling temperature: /think 56% greedy, 45.3% at T=0.6, 29.5% at "
    "T=1; /no_think 33% / 31.8% / 25.3%. SFT alone (run 5's 80-step arm) there: /think 44% / 36.2% / 23.5%.",
    "Training prompts, the 2-layer student, run 6's 40 + 40 schedule with the teacher at temperature 0.6 / 0.3: "
    "on-policy minus SFT alone -4.9 ± 2.4 / -2.4 ± 2.6 points sampled, -6.0 ± 3.2 / -5.5 ± 3.2 greedy (training "
    "prompts favour SFT alone, which trained on the teacher's answers to them).",
    "Dev set, 240 steps per arm, teacher at temperature 1: SFT alone 36.2% / 31.8% sampled (/think, /no_think), "
    "on-policy (40 + 200) 34.7% / 25.3%: -4.0 ± 1.75 sampled, 0.0 ± 1.8 greedy; the reverse KL fell to about 0.02.",
    "Dev set, 240 steps per arm, teacher at temperature 0.3 (the pre-registered design): on-policy 39.5% / 31.9% "
    "sampled, 40.5% / 31.5% greedy (teacher greedy 41.5% / 31.0%): +1.7 ± 1.85 sampled, +1.5 ± 2.0 greedy.",
]


def job(workdir: Path, name: str, objective: dict, *, steps: int, lr: float, init: str | None,
        data: dict | None = None, mb: int = 4, layers: int | None = None) -> str:
    """Run one ``qtrain train`` job (``layers``: debugmodel cut to that depth); returns its exported HF checkpoint."""
    out = workdir / name
    cfg = {"model": {"flavor": "debugmodel", **({"n_layers": layers} if layers else {})},
           "training": {"steps": steps, "micro_batch_size": mb, "seq_len": SEQ, "seed": 0, "device": DEVICE},
           "optimizer": {"lr": lr, "weight_decay": 0.0}, "lr": {"schedule": "constant"},
           "objective": objective, "init": {"path": init},
           "checkpoint": {"dir": str(out / "ckpt"), "export_hf": str(out / "hf"), "async_save": False},
           "tracking": {"run_name": f"posttrain-outcomes-{name}", "experiment": "posttrain-outcomes"},
           "dump_dir": str(out / "run")}
    if data:
        cfg["data"] = data
    path, stamp = out / "config.yaml", out / "inputs.sha256"
    out.mkdir(parents=True, exist_ok=True)
    inputs = input_fingerprint(cfg, out)
    if ((out / "hf" / "config.json").exists() and path.read_text() == yaml.safe_dump(cfg)
            and stamp.exists() and stamp.read_text() == inputs):
        if (out / "train_seconds").exists():
            TIMES[name] = int((out / "train_seconds").read_text())
        print(f"[{name}] reused (same config and inputs)", flush=True)
        return str(out / "hf")  # same config on the same inputs already trained in this workdir
    for stale in ("ckpt", "hf", "run"):  # another config or other inputs trained here: never resume from it
        shutil.rmtree(out / stale, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    (out / EVAL_CACHE).unlink(missing_ok=True)
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "qwen3_trainer.cli.main", "train", str(path)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise RuntimeError(f"job {name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    TIMES[name] = round(time.time() - t)
    (out / "train_seconds").write_text(str(TIMES[name]))
    stamp.write_text(inputs)
    print(f"[{name}] {steps} steps in {TIMES[name]}s", flush=True)
    return str(out / "hf")


def input_fingerprint(cfg: dict, out: Path) -> str:
    """sha256 over the contents of every file or folder the job's config names outside its own folder (init
    checkpoint, data, queries, teacher): the config text alone names e.g. ``grpo/hf``, which a retrained GRPO
    job overwrites, so a job downstream of a retrained one must not count as unchanged."""
    def paths(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from paths(x)
        elif isinstance(v, list):
            for x in v:
                yield from paths(x)
        elif isinstance(v, str) and os.sep in v and Path(v).exists():
            p = Path(v).resolve()
            if p != out.resolve() and out.resolve() not in p.parents:
                yield p

    h = hashlib.sha256()
    for p in sorted(set(paths(cfg))):
        for f in sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]:
            h.update(str(f).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


TIMES: dict[str, int] = {}
EVAL_CACHE = "eval_cache.json"  # evaluations of a job's checkpoint, dropped whenever the job (re)trains


def sft_data(path: str, name: str) -> dict:
    return {"kind": "sft", "sources": [{"name": name, "paths": [path], "field": "messages"}]}


def engine(path: str, context: int = 192):
    from qwen3_trainer.model.build import init_buffers
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    model = frozen_model(path, DEVICE)
    model.model_args.max_seq_len = context  # room for the forced stop-thinking text
    init_buffers(model, DEVICE)
    tok = load_tokenizer()
    return LocalRolloutEngine(model, tok), tok


def accuracy(path: str, records: list[dict], flag: str = "", *, sampled: bool = True, **kw) -> dict:
    """Held-out accuracy of a checkpoint: ``greedy`` and (``sampled``) the mean over SAMPLED; each
    with per-problem scores (``scores``, the sampled ones averaged per problem) for paired comparisons."""
    from qwen3_trainer.platform.posttrain.distill import with_flag
    from qwen3_trainer.platform.posttrain.grpo import evaluate_accuracy

    cache_file = Path(path).parent / EVAL_CACHE
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    key = json.dumps([[r["question"] for r in records], flag, sampled, kw, SAMPLED], sort_keys=True)
    if key in cache:
        return cache[key]
    eng, tok = engine(path)
    recs = [{**r, "prompt": with_flag(r["prompt"], flag) if flag else r["prompt"]} for r in records]
    new = kw.pop("max_new_tokens", 32)
    out = {}
    for name, proto in (("greedy", {}), ("sampled", SAMPLED)):
        if name == "sampled" and not sampled:
            continue
        scores: list[float] = []
        m = evaluate_accuracy(eng, tok, recs, max_new_tokens=new, seq_len=192, batch=100, scores=scores,
                              **proto, **kw)
        k = proto.get("samples", 1)
        out[name] = {**m, "scores": [sum(scores[i: i + k]) / k for i in range(0, len(scores), k)]}
    cache[key] = out
    cache_file.write_text(json.dumps(cache))
    return out


def paired(after: list[float], before: list[float]) -> dict[str, float]:
    """Mean per-problem difference and its standard error (problems are the unit of noise)."""
    d = [a - b for a, b in zip(after, before, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(1, n - 1)
    return {"diff": mean, "se": (var / n) ** 0.5}


def strip_scores(x):
    """The results without per-problem score lists (kept out of the committed json)."""
    if isinstance(x, dict):
        return {k: strip_scores(v) for k, v in x.items() if k != "scores"}
    return x


def mode_rates(path: str, records: list[dict]) -> dict[str, float]:
    """Soft switch off (official template): does the model itself write an empty / a non-empty think block?
    Greedy; also the mean number of thinking tokens (between the think tags) per mode."""
    from qwen3_trainer.model.generation import SamplingParams
    from qwen3_trainer.platform.posttrain import rollouts, verifiers
    from qwen3_trainer.platform.posttrain.distill import with_flag

    eng, tok = engine(path)
    out = {}
    for flag in ("/no_think", "/think", ""):
        prompts = [with_flag(r["prompt"], flag) if flag else r["prompt"] for r in records]
        ids = [rollouts.prompt_ids(tok, p, soft_switch=False) for p in prompts]
        gen = eng.generate(ids, SamplingParams(max_new_tokens=32))
        empty = thinks = correct = think_tokens = 0
        for rec, p, toks in zip(records, prompts, gen.tokens, strict=True):
            text = rollouts.response_text(tok, p, toks, soft_switch=False)
            thought, _ = verifiers.split_thinking(text)
            empty += thought == "" and text.lstrip().startswith("<think>")
            thinks += bool(thought)
            correct += verifiers.math_reward(text, rec["answer"])
            if tok.think in toks and tok.end_think in toks:
                think_tokens += toks.index(tok.end_think) - toks.index(tok.think) - 1
        key = flag.strip("/") or "no_flag"
        n = len(records)
        out.update({f"{key}/empty_think_rate": empty / n, f"{key}/thinking_rate": thinks / n,
                    f"{key}/accuracy": correct / n, f"{key}/thinking_tokens": think_tokens / n})
    return out


def unflagged(rec: dict, flag: str) -> dict:
    """A rejection-sampled record under the question without the trailing ``flag`` it was sampled with."""
    msgs = [dict(m) for m in rec["messages"]]
    user = next(m for m in reversed(msgs) if m["role"] == "user")
    if not user["content"].endswith(" " + flag):
        raise ValueError(f"rejection-sampled prompt does not end in {flag!r}: {user['content']!r}")
    user["content"] = user["content"][: -len(flag) - 1]
    return {**rec, "messages": msgs}


def reward_by_quarter(metrics: Path) -> list[float]:
    """GRPO training math reward (one value per rollout batch), averaged over each quarter of the batches."""
    rounds: dict[int, float] = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if "rollout/round" in row:
            rounds.setdefault(int(row["rollout/round"]), row["reward/math"])
    v = [rounds[k] for k in sorted(rounds)]
    q = max(1, len(v) // 4)
    return [round(sum(v[i * q: (i + 1) * q]) / len(v[i * q: (i + 1) * q]), 2) for i in range(4) if v[i * q:]]


def script_commit() -> str:
    """The last commit that changed this script (its pre-registration), and whether the script differs from it."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    here = str(Path(__file__).resolve().relative_to(ROOT))
    return git("log", "-1", "--format=%h", "--", here) + (" (modified)" if git("status", "--short", "--", here) else "")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/posttrain-outcomes")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "posttrain_outcomes.json"))
    ap.add_argument("--render", action="store_true", help="only rewrite benchmarks/posttrain.md from --out")
    ap.add_argument("--note", default="", help="a run note kept in the results (e.g. which jobs were reused)")
    ap.add_argument("--reuse-from", default="", help="run 6: run 5's workdir, whose cold start and teacher are reused")
    ap.add_argument("--previous", default="", help="run 6: run 5's results (sections 1-3 are kept from them)")
    args = ap.parse_args(argv)
    if args.render:
        (ROOT / "benchmarks" / "posttrain.md").write_text(render(json.loads(Path(args.out).read_text())))
        return
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.posttrain.coldstart import run_coldstart
    from qwen3_trainer.platform.posttrain.distill import teacher_responses, with_flag
    from qwen3_trainer.platform.posttrain.fusion import build_fusion, rejection_sample

    t0 = time.time()
    w = Path(args.workdir)
    d = w / "data"
    train, held = syn.split_problems(N_TRAIN, N_HELD, seed=SPLIT_SEED, difficulties=[LEVEL])
    train_q = [syn.query_record(p) for p in train]
    held_q = [syn.query_record(p) for p in held]
    syn.write_jsonl(str(d / "train.jsonl"), train_q)
    syn.write_jsonl(str(d / "held.jsonl"), held_q)
    if args.reuse_from:
        return distill_only(args, w, train, held, t0)
    cold_report = run_coldstart(syn.coldstart_pool(train, seed=0, difficulties=[LEVEL]), str(d / "coldstart.jsonl"))
    result: dict = {"task": f"place-value addition up to hundreds (340+7); {N_TRAIN} train / {N_HELD} held-out "
                            "problems (disjoint)",
                    "model": "debugmodel (dim 64, 2 layers, vocab 151936), fp32 CPU", "steps": STEPS,
                    "protocol": {"greedy": "temperature 0", "sampled": SAMPLED, "held_out_problems": N_HELD},
                    "grpo_params": GRPO, "distill_params": DISTILL, "fusion_params": FUSION, "split_seed": SPLIT_SEED,
                    "preregistered": PREREGISTERED, "preregistered_run4": PREREGISTERED_RUN4,
                    "preregistered_run5": PREREGISTERED_RUN5, "run": RUN, "script_commit": script_commit(),
                    "coldstart_filter": {k: v for k, v in cold_report.items() if k != "path"}}

    # 1. cold start, then GRPO
    cold = job(w, "cold", {"name": "sft"}, steps=STEPS["cold"], lr=3e-3, init=None,
               data=sft_data(str(d / "coldstart.jsonl"), "coldstart"))
    g = {k: v for k, v in GRPO.items() if k != "lr"}
    grpo_params = {"queries": str(d / "train.jsonl"), "eval_queries": str(d / "held.jsonl"), "eval_size": 50,
                   "eval_interval": 5, "rewards": [{"name": "math"}, {"name": "format", "weight": 0.2}], **g}
    grpo = job(w, "grpo", {"name": "grpo", "params": grpo_params}, steps=STEPS["grpo"], lr=GRPO["lr"], init=cold,
               mb=16)
    before, after = accuracy(cold, held_q), accuracy(grpo, held_q)
    result["grpo"] = {"heldout_before": before, "heldout_after": after,
                      "paired": {p: paired(after[p]["scores"], before[p]["scores"]) for p in before},
                      "train_math_reward_by_quarter": reward_by_quarter(w / "grpo" / "run" / "metrics.jsonl")}
    print(json.dumps(strip_scores(result["grpo"])), flush=True)

    # 2. fusion: thinking samples rejection-sampled from the GRPO model on /think-flagged prompts (the kept reply
    # goes to the builder under the unflagged question: the builder places the flag) + non-thinking samples
    # whose reply is the bare boxed answer (the builder prepends the empty think block)
    eng, tok = engine(grpo)
    half = len(train) // 2
    flag = FUSION["rejection_prompt_flag"]
    flagged = [{**q, "prompt": with_flag(q["prompt"], flag)} for q in train_q[:half]]
    thinking, rs = rejection_sample(eng, tok, flagged, samples=FUSION["rejection_samples"], max_new_tokens=24,
                                    seed=1)
    thinking = [unflagged(rec, flag) for rec in thinking]
    nonthinking = [syn.sft_record(p, thinking=False) for p in train[half:]]
    long = [r for r in nonthinking if r["messages"][-1]["content"] != "\\boxed{" + r["answer"] + "}"]
    if long:  # pre-registered for run 5: a /no_think reply is the bare boxed answer, nothing else
        raise RuntimeError(f"{len(long)} non-thinking replies are not the bare boxed answer, e.g. {long[0]}")
    filler = [syn.sft_record(p, thinking=True) for p in train[: max(0, len(nonthinking) - len(thinking))]]
    fused, stats = build_fusion(thinking + filler, nonthinking, seed=0)
    syn.write_jsonl(str(d / "fusion.jsonl"), fused)
    fusion = job(w, "fusion", {"name": "sft"}, steps=STEPS["fusion"], lr=FUSION["lr"], init=grpo,
                 data=sft_data(str(d / "fusion.jsonl"), "fusion"))
    result["fusion"] = {"data": {"rejection_sampled": len(thinking), "synthetic_thinking": len(filler),
                                 "nonthinking": len(nonthinking), "rejection": dict(rs), "build": dict(stats)},
                        "heldout_modes": mode_rates(fusion, held_q)}
    print(json.dumps(result["fusion"]), flush=True)

    # 3. thinking budget on the fused model (/think prompts, soft switch on)
    result["thinking_budget"] = {str(b): accuracy(fusion, held_q[:N_BUDGET], "/think", thinking_budget=b,
                                                  max_new_tokens=96) for b in BUDGETS}
    print(json.dumps(strip_scores(result["thinking_budget"])), flush=True)

    # 4. distillation: teacher = fused model; student = the cold-start model; same steps and batch for both arms
    student = cold
    teach_eng, _ = engine(fusion)
    records, tstats = teacher_responses(teach_eng.model, tok, train_q, max_new_tokens=24, seq_len=SEQ, verify=False)
    syn.write_jsonl(str(d / "teacher.jsonl"), records)
    result["distillation"] = {"teacher_responses": dict(tstats),
                              **distillation(w, d, student, fusion, {"heldout": held_q})["heldout"]}
    print(json.dumps(strip_scores(result["distillation"])), flush=True)

    result["claims"] = claims(result)
    result = strip_scores(result)
    write_results(args, result, t0)


def write_results(args, result: dict, t0: float) -> None:
    """The machine record, then the results json, the regenerated posttrain.md and the MLflow summary."""
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "load_avg_1m": os.getloadavg()[0], "wall_seconds": round(time.time() - t0),
                         "job_seconds": TIMES, **({"note": args.note} if args.note else {})}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    (ROOT / "benchmarks" / "posttrain.md").write_text(render(result))
    log_summary(result)
    print(json.dumps(result["claims"], indent=1))


def distill_only(args, w: Path, train: list, held: list, t0: float) -> None:
    """Run 7 (run 6 did the same with its settings; its script is at 78b24a7): run 5's cold start (the student),
    fused model (the teacher) and teacher responses reused unchanged; both arms retrained; claim 4 judged on the
    test set (every level-5 problem outside run 5's split), the arms also read on the dev set (run 5's held-out
    problems, where the pilots were read); sections 1-3 kept from run 5's results (in ``--previous``, run 6's)."""
    from qwen3_trainer.platform.data import synthetic as syn

    prev, d = Path(args.reuse_from), w / "data"
    for name in ("train.jsonl", "held.jsonl"):  # the same split as run 5, byte for byte
        if (d / name).read_bytes() != (prev / "data" / name).read_bytes():
            raise RuntimeError(f"{d / name} differs from run 5's {prev / 'data' / name}")
    reused = reuse_run5(prev, w)
    test, test_info = outside_split(train, held)
    test_q, dev_q = [syn.query_record(p) for p in test], [syn.query_record(p) for p in held]
    syn.write_jsonl(str(d / "test.jsonl"), test_q)
    sets = distillation(w, d, str(w / "cold" / "hf"), str(w / "fusion" / "hf"), {"test": test_q, "dev": dev_q})
    result = json.loads(Path(args.previous).read_text())  # run 6's results: run 5's numbers for sections 1-3
    run6 = {k: result[k] for k in ("claims", "distillation", "distill_params", "script_commit", "machine",
                                   "fresh_heldout", "distillation_run5_heldout")}
    for k in ("fresh_heldout", "distillation_run5_heldout"):
        result.pop(k)
    od = sets["test"]["paired"]["sampled"]
    result.update({
        "run": RUN, "steps": STEPS, "distill_params": DISTILL, "script_commit": script_commit(),
        "preregistered_run7": PREREGISTERED_RUN7, "pilots_run7": PILOTS_RUN7,
        "reused_from_run5": {"workdir": str(prev), "content_sha256": reused,
                             "jobs": "cold start, GRPO, fusion (teacher), teacher responses; evaluations cached"},
        "test_set": test_info,
        "distillation": {"teacher_responses": run6["distillation"]["teacher_responses"], **sets["test"]},
        "distillation_dev": sets["dev"], "run6": run6,
        "claims": {**run6["claims"], "onpolicy_beats_sft_only": od["diff"] > 2 * od["se"]}})
    result = strip_scores(result)
    write_results(args, result, t0)


def distillation(w: Path, d: Path, student: str, teacher: str, evals: dict[str, list[dict]],
                 layers: int | None = None) -> dict[str, dict]:
    """Both distillation arms from ``student`` against ``teacher`` (responses in ``d/teacher.jsonl``), each
    evaluated on every held-out set in ``evals`` (teacher and student start greedy only, for context)."""
    # both arms: the same distill_onpolicy job, 8 whole sequences per optimizer step; SFT alone = every step
    # in the off-policy phase (cross-entropy on the teacher's responses); on-policy = the first offpolicy_steps
    # so, then the student samples and learns the teacher's logits on its own responses (reverse KL)
    n, dp = STEPS["distill"], DISTILL
    distill_arm = lambda name, off: job(w, name, {"name": "distill_onpolicy", "params": {  # noqa: E731
        "teacher": teacher, "prompts": str(d / "train.jsonl"), "offpolicy_data": str(d / "teacher.jsonl"),
        **{k: v for k, v in dp.items() if k not in ("lr", "micro_batch", "offpolicy_steps")}, "offpolicy_steps": off}},
        steps=n, lr=dp["lr"], init=student, mb=dp["micro_batch"], layers=layers)
    sft_only, onpol = distill_arm("distill_sft", n), distill_arm("distill_onpolicy", dp["offpolicy_steps"])
    out = {}
    for set_name, held_q in evals.items():
        dist: dict = {"steps_each": n}
        for name, path in (("teacher", teacher), ("student_start", student), ("sft_only", sft_only),
                           ("offpolicy_then_onpolicy", onpol)):
            arm = name in ("sft_only", "offpolicy_then_onpolicy")  # the teacher and the start: greedy only
            dist[name] = {flag: accuracy(path, held_q, f"/{flag}", sampled=arm) for flag in ("think", "no_think")}
        dist["paired"] = {p: paired(both_modes(dist, "offpolicy_then_onpolicy", p), both_modes(dist, "sft_only", p))
                          for p in ("greedy", "sampled")}
        out[set_name] = dist
    return out


def both_modes(dist: dict, arm: str, protocol: str) -> list[float]:
    """An arm's per-problem scores under /think then /no_think (problems x both modes, for pairing)."""
    return dist[arm]["think"][protocol]["scores"] + dist[arm]["no_think"][protocol]["scores"]


def level5_pool() -> list:
    """Every level-5 problem (a in 10..990 by 10, b in 1..9: 891), as the generator writes them."""
    from qwen3_trainer.platform.data.synthetic import Problem

    return [Problem(f"What is {a}+{b}?", str(a + b), (f"{a}+{b}={a + b}",), LEVEL)
            for a in range(10, 1000, 10) for b in range(1, 10)]


def fresh_heldout(train: list, held: list) -> tuple[list, dict]:
    """Run 6's held-out problems: N_HELD of the level-5 problems in neither of the split's sets (sorted by
    question, then a seeded sample), so no model of runs 5-6 was ever evaluated or trained on them."""
    pool = {p.question: p for p in level5_pool()}
    if len(pool) != 891 or any(pool.get(p.question) != p for p in train + held):
        raise RuntimeError("the level-5 pool does not hold the split's problems as the generator writes them")
    used = {p.question for p in train} | {p.question for p in held}
    rest = sorted(set(pool) - used)
    fresh = [pool[q] for q in random.Random(FRESH_SEED).sample(rest, N_HELD)]
    qs = {p.question for p in fresh}
    if len(qs) != N_HELD or qs & {p.question for p in train} or qs & {p.question for p in held}:
        raise RuntimeError("fresh held-out problems overlap the train or the old held-out set")
    return fresh, {"seed": FRESH_SEED, "pool": len(pool), "outside_split": len(rest), "drawn": len(fresh),
                   "overlap_train": 0, "overlap_old_heldout": 0}


def outside_split(train: list, held: list) -> tuple[list, dict]:
    """Run 7's test set: every level-5 problem in neither of run 5's sets (291: run 6's 200 fresh problems and
    the 91 no model was ever evaluated on), sorted by question; no model of the chain trained on any of them."""
    pool = {p.question: p for p in level5_pool()}
    if len(pool) != 891 or any(pool.get(p.question) != p for p in train + held):
        raise RuntimeError("the level-5 pool does not hold the split's problems as the generator writes them")
    used = {p.question for p in train} | {p.question for p in held}
    test = [pool[q] for q in sorted(set(pool) - used)]
    run6 = {p.question for p in fresh_heldout(train, held)[0]}
    if len(test) != len(pool) - len(used) or not run6 <= {p.question for p in test}:
        raise RuntimeError("the test set is not the level-5 problems outside run 5's split")
    return test, {"pool": len(pool), "problems": len(test), "run6_fresh": len(run6), "never_evaluated": len(test) - len(run6),
                  "overlap_train": 0, "overlap_dev": 0}


def content_hash(p: Path) -> str:
    """sha256 over a file's or folder's file contents (relative names, not where it lies)."""
    h = hashlib.sha256()
    for f in sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def reuse_run5(prev: Path, w: Path) -> dict[str, str]:
    """Run 5's cold start, fused teacher and teacher responses, copied into ``w`` unchanged: every run-5 job's
    stamped input hash is recomputed first (the arms' stamps cover cold/hf, fusion/hf, teacher.jsonl and
    train.jsonl as run 5 trained on them), then each copy's content hash must equal its source's."""
    for name in ("cold", "grpo", "fusion", "distill_sft", "distill_onpolicy"):
        cfg = yaml.safe_load((prev / name / "config.yaml").read_text())
        if input_fingerprint(cfg, prev / name) != (prev / name / "inputs.sha256").read_text():
            raise RuntimeError(f"{prev / name}: its inputs changed since run 5 trained it")
    hashes = {}
    for rel in ("cold/hf", "fusion/hf", "data/teacher.jsonl", "cold/" + EVAL_CACHE, "fusion/" + EVAL_CACHE):
        src, dst = prev / rel, w / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        if rel.endswith(EVAL_CACHE):
            continue  # cached run-5 evaluations of the reused checkpoints; run 6 adds its own keys to the copy
        hashes[rel] = content_hash(src)
        if content_hash(dst) != hashes[rel]:
            raise RuntimeError(f"{dst} differs from run 5's {src}")
    return hashes


def claims(r: dict) -> dict[str, bool]:
    """Protocol fixed up front: claims 1 and 4 compare the SAMPLED mean per problem, paired over the held-out
    problems, and hold only if the gain exceeds 2 standard errors; claim 3 holds if no step to a larger
    budget loses more than 2 standard errors, in either protocol."""
    g, f, b, dd = r["grpo"]["paired"]["sampled"], r["fusion"]["heldout_modes"], r["thinking_budget"], r["distillation"]
    steps = [paired(hi[p]["scores"], lo[p]["scores"]) for lo, hi in zip(list(b.values()), list(b.values())[1:],
                                                                            strict=False) for p in ("greedy", "sampled")]
    od = dd["paired"]["sampled"]
    return {
        "grpo_raises_heldout_accuracy": g["diff"] > 2 * g["se"],
        "no_think_empty_block_ge_95pct": f["no_think/empty_think_rate"] >= 0.95,
        "think_answers_think": f["think/thinking_rate"] >= 0.95,
        "no_flag_defaults_to_thinking": f["no_flag/thinking_rate"] >= 0.95,
        # no step to a larger budget loses accuracy beyond noise (2 standard errors, paired over problems)
        "accuracy_non_decreasing_in_budget": all(st["diff"] >= -2 * st["se"] for st in steps),
        "onpolicy_beats_sft_only": od["diff"] > 2 * od["se"],
    }


def render(r: dict) -> str:
    """benchmarks/posttrain.md from the results."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    pts = lambda p: f"{100 * p['diff']:+.1f} ± {100 * p['se']:.1f}"  # noqa: E731
    g, f, b, d = r["grpo"], r["fusion"]["heldout_modes"], r["thinking_budget"], r["distillation"]
    ok = lambda k: "holds" if r["claims"][k] else "does NOT hold"  # noqa: E731
    proto, m = r["protocol"], r["machine"]
    sp = proto["sampled"]
    lines = [
        "# Post-training outcomes in miniature",
        "",
        f"Task: {r['task']}. Model: {r['model']}. Steps per job: {r['steps']}. Every training run is a",
        "`qtrain train` job with the post-training objectives, seeds fixed. Evaluation: the local rollout engine,",
        f"scored by the rule verifier (boxed answer), on the {proto['held_out_problems']} held-out problems, two",
        f"protocols: **greedy** and **sampled** = mean accuracy over {sp['samples']} samples per problem at",
        f"T={sp['temperature']}, top-p {sp['top_p']} (the Qwen3 report's thinking-mode protocol; what GRPO optimises).",
        "Protocol chosen before the final run: claims 1 and 4 use the sampled protocol, paired per problem,",
        "and hold only if the gain exceeds 2 standard errors (`diff ± se` below, in points, over problems).",
        ("Reproduce: `OMP_NUM_THREADS=1 python benchmarks/posttrain_outcomes.py --workdir /tmp/pt7 --reuse-from /tmp/pt5 "
         "--previous benchmarks/results/posttrain_outcomes_run6.json` (run 5's workdir: `--workdir /tmp/pt5` with the "
         "script at 4ad5586; run 6: the script at 78b24a7) " if "preregistered_run7" in r else
         "Reproduce: `OMP_NUM_THREADS=1 python benchmarks/posttrain_outcomes.py --workdir /tmp/pt` ") +
        f"({m['cpus']} shared CPU cores, load {m['load_avg_1m']:.1f}; training seconds per job: "
        f"{m.get('job_seconds')}; this invocation: {m['wall_seconds']} s; run 5's jobs: "
        f"{r['run5']['machine']['job_seconds'] if 'run5' in r else '-'}); numbers: "
        "`benchmarks/results/posttrain_outcomes.json`.",
        *([f"Run note: {m['note']}"] if m.get("note") else []),
        *([f"**Section 4 is run {r['run']}'s** (distillation only: both arms retrained, script at commit "
           f"{r['script_commit']}, pre-registered below; claim 4 judged on the {r['test_set']['problems']} test "
           "problems). **Sections 1-3 are run 5's numbers** (split seed 2, `benchmarks/results/posttrain_outcomes_run5.json`); "
           f"run {r['run']} reuses run 5's cold start (the student), fused model (the teacher) and teacher responses unchanged "
           "(every run-5 job's input hash rechecked against its stamp, the copies' content hashes in the results). Run 6: "
           "`posttrain_outcomes_run6.json`; runs 3 and 4: `posttrain_outcomes_run3.json`, `posttrain_outcomes_run4.json`; "
           "all summarised below."]
          if "preregistered_run7" in r else
          [f"**These are run {r['run']}'s numbers** (split seed {r['split_seed']}, every job trained from scratch; "
           f"script at commit {r['script_commit']}, its pre-registration). Runs 3 and 4: "
           "`benchmarks/results/posttrain_outcomes_run3.json`, `posttrain_outcomes_run4.json`, summarised below."]
          if "run" in r else []),
        "",
        "## 1. GRPO after the cold start",
        "",
        f"GRPO: {r['grpo_params']}, {r['steps']['grpo']} steps, reward = math verifier + 0.2 x format.",
        "",
        "| model | held-out greedy | held-out sampled | format (greedy) |",
        "|---|---|---|---|",
        f"| cold start (SFT on filtered long-CoT samples) | {pct(g['heldout_before']['greedy']['eval/accuracy'])} | "
        f"{pct(g['heldout_before']['sampled']['eval/accuracy'])} | {pct(g['heldout_before']['greedy']['eval/format'])} |",
        f"| + GRPO | {pct(g['heldout_after']['greedy']['eval/accuracy'])} | "
        f"{pct(g['heldout_after']['sampled']['eval/accuracy'])} | {pct(g['heldout_after']['greedy']['eval/format'])} |",
        f"| gain (points, paired) | {pts(g['paired']['greedy'])} | {pts(g['paired']['sampled'])} | |",
        "",
        f"Claim 'GRPO raises held-out verifier accuracy' (sampled): **{ok('grpo_raises_heldout_accuracy')}**.",
        f"Cold-start filter: {r['coldstart_filter']['queries']} queries -> {r['coldstart_filter']['samples']} samples;",
        f"dropped queries {r['coldstart_filter']['query_dropped']}, responses {r['coldstart_filter']['response_dropped']}.",
        "",
        "## 2. Thinking-mode fusion (official template: the model writes the think block itself; greedy)",
        "",
        "| prompt flag | empty think block | non-empty thinking | thinking tokens (mean) | accuracy |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("no_think", "/no_think"), ("think", "/think"), ("no_flag", "(none)")):
        lines.append(f"| {label} | {pct(f[key + '/empty_think_rate'])} | {pct(f[key + '/thinking_rate'])} | "
                     f"{f[key + '/thinking_tokens']:.1f} | {pct(f[key + '/accuracy'])} |")
    lines += ["", f"Fusion data: {r['fusion']['data']}.",
              f"Claims: /no_think empty block >= 95% **{ok('no_think_empty_block_ge_95pct')}**; /think answers think "
              f"**{ok('think_answers_think')}**; no flag defaults to thinking **{ok('no_flag_defaults_to_thinking')}**.",
              "", "## 3. Thinking budget (fused model, /think prompts)", "",
              f"The fused model thinks {f['think/thinking_tokens']:.1f} tokens on average (greedy, /think): budgets",
              "below that force the stop-thinking text in; budgets above it leave the answer as it is.", "",
              "| budget (thinking tokens) | " + " | ".join(b) + " |", "|---|" + "---|" * len(b),
              "| held-out greedy | " + " | ".join(pct(v["greedy"]["eval/accuracy"]) for v in b.values()) + " |",
              "| held-out sampled | " + " | ".join(pct(v["sampled"]["eval/accuracy"]) for v in b.values()) + " |",
              "", f"Claim 'accuracy does not fall as the budget grows' (both protocols): "
              f"**{ok('accuracy_non_decreasing_in_budget')}**.",
              "", f"## 4. Strong-to-weak distillation ({d['steps_each']} steps each arm, same student start, "
              f"same batch)", "", f"Settings: {r['distill_params']}.", "",
              *([f"Run {r['run']}, on the {r['test_set']['problems']} test problems (every level-5 problem in "
                 f"neither run 5's training nor its held-out set: run 6's {r['test_set']['run6_fresh']} fresh problems "
                 f"and {r['test_set']['never_evaluated']} never evaluated before; the pass rule uses only these):", ""]
                if "test_set" in r else []),
              "| model | /think greedy | /think sampled | /no_think greedy | /no_think sampled |",
              "|---|---|---|---|---|"]
    for key in ("teacher", "student_start", "sft_only", "offpolicy_then_onpolicy"):
        lines.append(f"| {key} | " + " | ".join(pct(d[key][flag][p]["eval/accuracy"]) if p in d[key][flag] else "-"
                                              for flag in ("think", "no_think") for p in ("greedy", "sampled")) + " |")
    lines += ["", f"On-policy minus SFT-only (points, paired over problems x both modes): greedy "
              f"{pts(d['paired']['greedy'])}, sampled {pts(d['paired']['sampled'])}.",
              f"Claim 'on-policy distillation beats SFT alone for the same steps' (sampled): "
              f"**{ok('onpolicy_beats_sft_only')}**.", ""]
    if "distillation_dev" in r:
        lines += dev_table(r)
    lines += notes(r)
    return "\n".join(lines)


def dev_table(r: dict) -> list[str]:
    """Run 7's arms on the dev set (run 5's held-out problems, where run 7's pilots were read), next to runs 5
    and 6's arms on the same problems; and run 6's own pass-rule result: for continuity, not the pass rule."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    pts = lambda p: f"{100 * p['diff']:+.1f} ± {100 * p['se']:.1f}"  # noqa: E731
    dv, d6, d5 = r["distillation_dev"], r["run6"]["distillation_run5_heldout"], r["run5"]["distillation"]
    arm = lambda run, dp, steps: (f"offpolicy_then_onpolicy (run {run}, {dp['offpolicy_steps']} + "  # noqa: E731
                                  f"{steps - dp['offpolicy_steps']}, teacher T={dp.get('teacher_temperature', 1.0)})")
    rows = [("teacher", dv["teacher"]), ("student_start", dv["student_start"]),
            (f"sft_only (run {r['run']}, {r['steps']['distill']} steps)", dv["sft_only"]),
            (arm(r["run"], r["distill_params"], r["steps"]["distill"]), dv["offpolicy_then_onpolicy"]),
            ("sft_only (runs 5 and 6, 80 steps)", d6["sft_only"]),
            (arm(6, r["run6"]["distill_params"], 80), d6["offpolicy_then_onpolicy"]),
            (arm(5, r["run5"]["distill_params"], 80), d5["offpolicy_then_onpolicy"])]
    f6 = r["run6"]["distillation"]["paired"]
    return ["Continuity only, NOT the pass rule: the dev set (run 5's 200 held-out problems, previously seen; run 7's "
            "pilots were read on it, see its pre-registration).", "",
            "| model | /think greedy | /think sampled | /no_think greedy | /no_think sampled |", "|---|---|---|---|---|",
            *(f"| {name} | " + " | ".join(pct(x[flag][p]["eval/accuracy"]) if p in x[flag] else "-"
                                          for flag in ("think", "no_think") for p in ("greedy", "sampled")) + " |"
              for name, x in rows),
            "", f"On-policy minus SFT-only on the dev set: run {r['run']} greedy {pts(dv['paired']['greedy'])}, sampled "
            f"{pts(dv['paired']['sampled'])}; run 6 greedy {pts(d6['paired']['greedy'])}, sampled "
            f"{pts(d6['paired']['sampled'])}; run 5 greedy {pts(d5['paired']['greedy'])}, sampled "
            f"{pts(d5['paired']['sampled'])}. Run 6 on its own {r['run6']['fresh_heldout']['drawn']} fresh problems "
            f"(its pass rule): greedy {pts(f6['greedy'])}, sampled {pts(f6['sampled'])}.", ""]


def notes(r: dict) -> list[str]:
    """How to read the numbers, and what was tried before this run (numbers of earlier runs quoted)."""
    g, f, b = r["grpo"]["paired"], r["fusion"]["heldout_modes"], r["thinking_budget"]
    dp, fd = r["distillation"]["paired"], r["fusion"]["data"]
    updates = r["grpo_params"]["ppo_epochs"] * r["grpo_params"]["minibatches"]  # optimizer steps per rollout batch
    accs = [v["greedy"]["eval/accuracy"] for v in b.values()]
    quarters = r["grpo"].get("train_math_reward_by_quarter")
    on_flag = r.get("fusion_params", {}).get("rejection_prompt_flag")
    return [
        *(["## Pre-registration of run 7", "", r["preregistered_run7"], "", "Run 7's pilots (dev set and training "
           "prompts only, before the pre-registration):", "", *(f"- {x}" for x in r["pilots_run7"]), ""]
          if "preregistered_run7" in r else []),
        *(["## Pre-registration of run 6", "", r["preregistered_run6"], "",
           "## Pre-registration of run 5 (sections 1-3, and the distillation settings runs 6 and 7 keep)", ""]
          if "preregistered_run6" in r else ["## Pre-registration of this run", ""]),
        *([r["preregistered_run5"], "", "Run 4's pre-registration, whose settings run 5 keeps unless named above:", ""]
          if "preregistered_run5" in r else []),
        *([r["preregistered_run4"], "", "Run 3's pre-registration, whose settings run 4 keeps unless named above:", ""]
          if "preregistered_run4" in r else []),
        r.get("preregistered", PREREGISTERED),
        "",
        "Run 2 for comparison (same script and cold start; GRPO 40 steps at lr 1e-3, distillation 40 steps per",
        "arm with 20 on-policy; its results: benchmarks/results/posttrain_outcomes.json at commit 31bbd21): GRPO",
        "+5.8 ± 3.5 points sampled (27.9% -> 33.6%), +0.5 ± 4.2 greedy (36.0% -> 36.5%); fusion /no_think",
        "empty block 100%, /think thinks 97.5%, no flag 94.5%; budget curve a step (0% up to budget 8, 33.0% greedy from 16); distillation on-policy minus",
        "SFT-only +0.7 ± 0.9 sampled, +2.2 ± 1.3 greedy, teacher 30.5% /think greedy. Claims 1 and 4 did",
        "not hold there.",
        "",
        "Run 3 for comparison (split seed 0, fusion lr 2e-3 with 4 rejection samples per query; its results:",
        "benchmarks/results/posttrain_outcomes_run3.json): GRPO +41.2 ± 3.1 points sampled (27.9% -> 69.1%);",
        "fusion /no_think empty block 100%, /think thinks 98.5%; the fused model answered 30.0% of /think",
        "prompts (greedy) against the GRPO model's 71.5%; budget curve a step (0% up to budget 8, 32.0% greedy",
        "from 16); distillation on-policy minus SFT-only +1.4 ± 1.6 sampled. Claims 1-3 held, claim 4 did not.",
        "",
        *(["Run 4 for comparison (split seed 1, fusion 100 steps at lr 5e-4, 8 rejection samples per query on",
           "unflagged prompts; its results: benchmarks/results/posttrain_outcomes_run4.json): GRPO +37.9 ± 3.1",
           "points sampled (20.5% -> 58.4%); rejection sampling kept 106 of 200 queries; fusion /no_think empty",
           "block 100%, /think thinks 99.0%; the fused model answered 3.5% of /think, 6.5% of /no_think and 46.5%",
           "of unflagged prompts (greedy) against the GRPO model's 63.5%; budget curve flat near zero (1.0% greedy",
           "unbudgeted); distillation on-policy minus SFT-only -0.4 ± 0.8 sampled, -0.2 ± 1.0 greedy. Claims 1-3",
           "held, claim 4 did not.", ""] if "preregistered_run5" in r else []),
        *([f"This invocation (run {r['run']}) retrained both distillation arms in a new workdir from run 5's cold "
           "start, against run 5's fused model and its teacher responses (copied unchanged, content hashes in the "
           "results), and evaluated them on the test and dev sets.", ""] if "preregistered_run7" in r else
          [f"This invocation (run {r['run']}) trained every job from scratch on the seed-{r['split_seed']} split "
           "in a new workdir.", ""] if "run" in r else
          ["This invocation (run 4) trained every job from scratch on the seed-1 split in a new workdir.", ""]
          if "preregistered_run4" in r else
          ["This invocation (run 3) reused the run-2 cold start (config and input hashes unchanged, its cached",
           "evaluations kept) and retrained GRPO, fusion and both distillation arms, then re-evaluated them.", ""]),
        "## Reading the numbers",
        "",
        "- Noise: each claim compares per-problem accuracies of two models on the same held-out problems",
        "  (paired); `diff ± se` is the mean difference and its standard error over problems. With 200",
        "  problems one problem is 0.5 points; the standard errors are 1-4 points.",
        f"- GRPO: {100 * g['sampled']['diff']:+.1f} ± {100 * g['sampled']['se']:.1f} points sampled, "
        f"{100 * g['greedy']['diff']:+.1f} ± {100 * g['greedy']['se']:.1f} greedy"
        + (": above 2 standard errors." if r["claims"]["grpo_raises_heldout_accuracy"] else
           ": in the right direction, but within 2 standard errors, so not established by this run."
           if g["sampled"]["diff"] > 0 else ": no gain."),
        f"  {'Run 5' if 'preregistered_run6' in r else 'This run'}: {r['steps']['grpo']} steps = {r['steps']['grpo'] // updates} rollout batches at lr "
        f"{r['grpo_params']['lr']:.0e}; the training math reward per rollout batch (T=0.8,",
        *([f"  8 prompts x 8 samples) averaged {' / '.join(f'{x:.2f}' for x in quarters)} over the four quarters of "
           "the batches", "  in this run (run 4: 0.38 / 0.33 / 0.56 / 0.58; run 3: 0.30 / 0.38 / 0.53 / 0.58;"
           " run 2 stopped after batch 10)."] if quarters else
          ["  8 prompts x 8 samples) averaged 0.38 / 0.33 / 0.56 / 0.58 over batches 1-10 / 11-20 / 21-30 /",
           "  31-40 in run 4 (run 3: 0.30 / 0.38 / 0.53 / 0.58; run 2 stopped after batch 10)."]),
        "  History (same script): on an H200 (`POSTTRAIN_OUTCOMES_DEVICE=cuda`, exploration only, not these",
        "  numbers) 40 GRPO steps from a 200-step cold start (19% greedy / 16% sampled) reached 52% / 47%",
        "  (+33.5 ± 4.1 / +30.9 ± 3.0); from a 160-step cold start (6%) they lowered accuracy (the math",
        "  reward vanished), as they did on CPU from the CPU 200-step cold start (11.5% / 6.4%: math reward",
        "  0 by step 13). The SFT trajectory of this model has a sharp transition (GPU: 0% at 120 steps, 67%",
        "  at 240), so the final cold start takes 240 steps. Variants tried on the GPU from the 200-step",
        "  cold start: lr 5e-4 (+30.0 sampled), lr 2e-3 (+6.9), rollouts at T=1 without top-p (+17.0), 60",
        "  steps (+36.2). A CPU variant with one PPO epoch per rollout batch (50 steps) was stopped at step",
        "  15 for time. Earlier (25 problems of 40+7, greedy) lr 2e-3 / 3e-3 variants collapsed.",
        f"- Fusion: /no_think answers write the empty block {100 * f['no_think/empty_think_rate']:.0f}% of the "
        f"time, /think answers think {100 * f['think/thinking_rate']:.1f}%; without a flag the model thinks "
        f"{100 * f['no_flag/thinking_rate']:.1f}%.",
        f"  Rejection sampling from the GRPO model ({r.get('fusion_params', {}).get('rejection_samples', 4)} samples "
        + (f"per query on the {on_flag}-flagged prompt, kept only if the cold-start judges pass" if on_flag else
           "per query, kept only if the cold-start judges pass"),
        f"  one) kept {fd['rejection_sampled']} of {fd['rejection_sampled'] + fd['synthetic_thinking']} queries; "
        f"the rest of the thinking half ({fd['synthetic_thinking']}) is synthetic",
        "  worked solutions. The 'thinking tokens' of an empty block is 1 (the blank line between the tags).",
        f"  After the fusion SFT ({r['steps']['fusion']} steps at lr {r.get('fusion_params', {}).get('lr', 2e-3):.0e}) "
        f"the fused model answers {100 * f['think/accuracy']:.1f}% of /think, "
        f"{100 * f['no_think/accuracy']:.1f}% of /no_think and",
        f"  {100 * f['no_flag/accuracy']:.1f}% of unflagged prompts (greedy, official template) against "
        f"{100 * r['grpo']['heldout_after']['greedy']['eval/accuracy']:.1f}% for the GRPO model, whose",
        "  prompts never carried a flag. The distillation teacher is this model under /think and /no_think.",
        *([f"  On the {on_flag}-flagged prompt the GRPO model, which never saw a flag, produced no reply that passed"
           " (as seen before the", "  run and stated in the pre-registration), so the whole thinking half is the"
           " synthetic worked solutions:", "  this run did not fuse on the policy's own replies; what changed"
           f" against run 4 is the fusion length ({r['steps']['fusion']} steps)", "  and the split. Run 4's fused"
           " model (100 steps, 106 policy replies) answered 3.5% of /think, 6.5% of /no_think and", "  46.5% of"
           " unflagged prompts."] if on_flag and fd["rejection_sampled"] == 0 else []),
        f"- Thinking budget: the fused model thinks {f['think/thinking_tokens']:.1f} tokens; budgets below that",
        "  force the report's stop-thinking text in, which is never trained (as in the report), and this",
        f"  tiny model does not produce a verified answer after it ({100 * accs[0]:.0f}% greedy at budget 0); "
        "from the",
        f"  first budget above the thinking length the answers are those of the unbudgeted run "
        f"({100 * accs[-1]:.1f}% greedy).",
        "  So the curve is a step, not a gradual rise: it does not fall, and it reaches the unbudgeted value."
        if max(accs) >= 0.1 else
        "  This fused model answers almost no /think prompt, so its curve is flat near zero and says nothing"
        " about budgets;\n  run 3's curve (0% up to budget 8, 32.0% greedy from 16) is the informative one.",
        f"- Distillation: on-policy minus SFT-only is {100 * dp['sampled']['diff']:+.1f} ± "
        f"{100 * dp['sampled']['se']:.1f} points sampled, {100 * dp['greedy']['diff']:+.1f} ± "
        f"{100 * dp['greedy']['se']:.1f} greedy"
        + (": above 2 standard errors." if r["claims"]["onpolicy_beats_sft_only"] else
           ": ahead, but within 2 standard errors, so not established by this run." if dp["sampled"]["diff"] > 0
           else ": not ahead."),
        f"  Both arms are the same `distill_onpolicy` job of {r['steps']['distill']} steps from the cold-start "
        "checkpoint (which",
        "  never saw mode flags), 8 whole sequences per step, the same teacher responses (greedy, both modes,",
        f"  unverified): SFT alone is all {r['steps']['distill']} steps on the teacher's responses; the other arm "
        f"is {r['distill_params']['offpolicy_steps']} such steps,",
        f"  then {r['steps']['distill'] - r['distill_params']['offpolicy_steps']} on-policy steps (reverse KL to "
        "the teacher on the student's own samples"
        + (f"; the teacher's distribution taken at temperature {r['distill_params']['teacher_temperature']})."
           if "teacher_temperature" in r["distill_params"] else ")."),
        "  An earlier design trained the SFT arm through the packed SFT loader (2-3 chats per",
        "  80-token row, so about 2.5x the sequences per step of the on-policy arm) against forward-KL then",
        "  on-policy; there SFT was ahead (GPU exploration: -2.2 ± 1.0 points sampled for on-policy).",
        *(claim4_reading_run7(r) if "preregistered_run7" in r and r["claims"]["onpolicy_beats_sft_only"] else []),
        "",
        *next_steps(r),
    ]


def next_steps(r: dict) -> list[str]:
    """For each claim this run did not establish: what the numbers show, and what to pre-register next."""
    d, f = r["distillation"], r["fusion"]["heldout_modes"]
    acc = lambda arm, flag, p: 100 * d[arm][flag][p]["eval/accuracy"]  # noqa: E731
    lines = []
    if not r["claims"]["grpo_raises_heldout_accuracy"]:
        lines.append("- GRPO (claim 1) is not established by this run; see the training curve above.")
    if not r["claims"]["onpolicy_beats_sft_only"] and "preregistered_run7" in r:
        lines += claim4_run7(r)
    elif not r["claims"]["onpolicy_beats_sft_only"] and "preregistered_run5" in r:
        lines += claim4_run5(r)
    elif not r["claims"]["onpolicy_beats_sft_only"]:
        on, off = "offpolicy_then_onpolicy", "sft_only"
        lines += [
            "- On-policy distillation (claim 4) is not established by this run. By mode (sampled, not paired):",
            f"  /think {acc(on, 'think', 'sampled'):.1f}% vs {acc(off, 'think', 'sampled'):.1f}% for "
            f"SFT alone, /no_think {acc(on, 'no_think', 'sampled'):.1f}% vs {acc(off, 'no_think', 'sampled'):.1f}%;",
            *([f"  the SFT-only student already answers /no_think better than its teacher ("
               f"{acc(off, 'no_think', 'greedy'):.1f}% vs {100 * f['no_think/accuracy']:.1f}% greedy),",
               "  consistent with on-policy matching of the teacher's /no_think logits pulling it toward a weaker",
               "  answerer."] if acc(off, "no_think", "greedy") > 100 * f["no_think/accuracy"] else
              [f"  both arms stay near their teacher ({100 * f['think/accuracy']:.1f}% /think, "
               f"{100 * f['no_think/accuracy']:.1f}% /no_think greedy): there is little to distill."]),
            "  The teacher is weak under the mode flags: GRPO model "
            f"{100 * r['grpo']['heldout_after']['greedy']['eval/accuracy']:.1f}%, fused model"
            f" {100 * f['think/accuracy']:.1f}% /think and {100 * f['no_flag/accuracy']:.1f}% unflagged (greedy).",
            "  Run 3 (fusion lr 2e-3) taught the flags but gave back the GRPO gain (30.0% /think); run 4 (lr 5e-4,",
            "  8 rejection samples) kept more of the gain on unflagged prompts but did not teach the flags: a",
            "  flagged prompt is still out of distribution for it. What to pre-register next (judged on a fresh",
            "  split, seed 2): the thinking half rejection-sampled from the GRPO model with the /think flag",
            "  already in the prompt and the non-thinking half's /no_think answers kept short, so that fusion",
            "  teaches the switch on the policy's own outputs; fusion at lr 5e-4 for 300 steps; the",
            "  distillation arms and the pass rule unchanged.",
        ]
    if not r["claims"]["no_flag_defaults_to_thinking"]:
        lines.append(f"- Without a flag the fused model thinks {100 * f['no_flag/thinking_rate']:.1f}% of the time, "
                     "below this script's own 95% bar for 'thinking is the default' (not one of the issue's claims).")
    return [*(["## Not established by this run", ""] if lines else []), *lines, *([""] if lines else [])]


def claim4_run5(r: dict) -> list[str]:
    """Run 5's reading of claim 4: a teacher that answers under the flags, and the arms against it."""
    d, fd = r["distillation"], r["fusion"]["data"]
    pd = {p: {k: 100 * v for k, v in d["paired"][p].items()} for p in ("sampled", "greedy")}
    acc = lambda arm, flag, p: 100 * d[arm][flag][p]["eval/accuracy"]  # noqa: E731
    on, off, n_on = "offpolicy_then_onpolicy", "sft_only", r["steps"]["distill"] - r["distill_params"]["offpolicy_steps"]
    return [
        "- On-policy distillation (claim 4) is not established by this run. By mode (sampled, not paired):",
        f"  /think {acc(on, 'think', 'sampled'):.1f}% vs {acc(off, 'think', 'sampled'):.1f}% for "
        f"SFT alone, /no_think {acc(on, 'no_think', 'sampled'):.1f}% vs {acc(off, 'no_think', 'sampled'):.1f}%.",
        f"  Unlike run 4 there was something to distill: the teacher (the fused model) answers {acc('teacher', 'think', 'greedy'):.1f}%"
        f" of /think and {acc('teacher', 'no_think', 'greedy'):.1f}% of /no_think",
        f"  prompts (greedy; the GRPO model {100 * r['grpo']['heldout_after']['greedy']['eval/accuracy']:.1f}% unflagged);"
        f" the student starts at {acc('student_start', 'think', 'greedy'):.1f}% / "
        f"{acc('student_start', 'no_think', 'greedy'):.1f}% and ends at",
        f"  {acc(off, 'think', 'greedy'):.1f}% / {acc(off, 'no_think', 'greedy'):.1f}% after SFT alone and "
        f"{acc(on, 'think', 'greedy'):.1f}% / {acc(on, 'no_think', 'greedy'):.1f}% after the on-policy phase (greedy, "
        "/think / /no_think).",
        f"  With that teacher, {n_on} on-policy steps (reverse KL to the teacher on the student's own samples, which in",
        "  run 5 fell from 0.43 at step 21 to 0.10-0.17 by steps 61-71) did no better than as many further steps",
        "  of SFT on the teacher's greedy responses (cross-entropy 0.06 by step 71): on-policy minus SFT alone is",
        f"  {pd['sampled']['diff']:+.1f} ± {pd['sampled']['se']:.1f} points sampled and {pd['greedy']['diff']:+.1f} ± "
        f"{pd['greedy']['se']:.1f} greedy (paired over problems x both modes).",
        *([f"  The pre-registered intent, fusion on the policy's own /think replies, was not realised (0 of "
           f"{fd['synthetic_thinking']} queries", "  kept on the flagged prompt, as foreseen in the pre-registration);"
           " the teacher's gain over run 4 (3.5% -> "
           f"{acc('teacher', 'think', 'greedy'):.1f}% /think)", f"  came with {r['steps']['fusion']} fusion steps"
           " instead of 100 (and the new split)."] if fd["rejection_sampled"] == 0 else []),
        "  No further variant is pre-registered here.",
    ]


def claim4_reading_run7(r: dict) -> list[str]:
    """How far run 7's pass of claim 4 goes: where the gain is, and what weakens it."""
    d, dv = r["distillation"], r["distillation_dev"]
    acc = lambda x, arm, flag, p: 100 * x[arm][flag][p]["eval/accuracy"]  # noqa: E731
    on, off = "offpolicy_then_onpolicy", "sft_only"
    return [
        f"  Run {r['run']} (pre-registered): the gain is in /think: {acc(d, on, 'think', 'greedy'):.1f}% greedy against "
        f"{acc(d, off, 'think', 'greedy'):.1f}% for SFT alone and {acc(d, 'teacher', 'think', 'greedy'):.1f}% for the teacher "
        f"({acc(d, on, 'think', 'sampled'):.1f}% vs {acc(d, off, 'think', 'sampled'):.1f}% sampled); /no_think is level "
        f"({acc(d, on, 'no_think', 'sampled'):.1f}% vs {acc(d, off, 'no_think', 'sampled'):.1f}% sampled, the teacher "
        f"{acc(d, 'teacher', 'no_think', 'greedy'):.1f}% greedy). The on-policy student beats its teacher on /think because",
        f"  its target is the teacher sharpened to temperature {r['distill_params']['teacher_temperature']}, close to the "
        "teacher's greedy policy, learned on the student's own samples;",
        "  at temperature 1 the same schedule lost (dev pilot: -4.0 ± 1.75 sampled), and runs 5-6 (80 steps, T=1) "
        "lost too.",
        "  What weakens it: the margin is narrow (the gain is "
        f"{d['paired']['sampled']['diff'] / d['paired']['sampled']['se']:.1f} standard errors, the bar 2); it came "
        "after runs 2-6 failed this claim, and was chosen on the dev set where its gain was",
        f"  {100 * dv['paired']['sampled']['diff']:+.1f} ± {100 * dv['paired']['sampled']['se']:.1f} sampled (not "
        "significant there); the test set was read once, after the pre-registration, but 200 of its problems had "
        "judged run 6's arms;",
        "  the teacher temperature is this miniature's choice, not a setting of the Qwen3 report; teacher and student "
        "have the same size (the report's student is smaller).",
    ]


def claim4_run7(r: dict) -> list[str]:
    """Run 7's reading of claim 4 (test set), when it does not hold."""
    d = r["distillation"]
    pd = {p: {k: 100 * v for k, v in d["paired"][p].items()} for p in ("sampled", "greedy")}
    acc = lambda arm, flag, p: 100 * d[arm][flag][p]["eval/accuracy"]  # noqa: E731
    on, off = "offpolicy_then_onpolicy", "sft_only"
    return [
        f"- On-policy distillation (claim 4) is not established by run {r['run']} either. By mode (sampled, not paired, "
        f"test set): /think {acc(on, 'think', 'sampled'):.1f}% vs {acc(off, 'think', 'sampled'):.1f}% for SFT alone, "
        f"/no_think {acc(on, 'no_think', 'sampled'):.1f}% vs {acc(off, 'no_think', 'sampled'):.1f}%; on-policy minus "
        f"SFT alone {pd['sampled']['diff']:+.1f} ± {pd['sampled']['se']:.1f} sampled, {pd['greedy']['diff']:+.1f} ± "
        f"{pd['greedy']['se']:.1f} greedy. Runs 2-{r['run']} never showed it ahead beyond noise on this debugmodel task.",
    ]


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
