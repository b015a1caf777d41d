"""Training throughput: HF transformers, torchtitan as shipped and qwen3-trainer, same GPU, same run.

Each (model, impl) row runs in its own subprocess (memory and compile caches don't leak between rows)
and every impl goes through the same timing loop (``time_steps``: synchronize, one optimizer step on a
fixed CPU batch, synchronize; the row's ``tokens_per_s``), then as many steps back to back as its own
training loop runs them (one synchronize at each end; ``loop_tokens_per_s``: ours queues a step before
reading the previous one's numbers, as ``Trainer.fit`` does; torchtitan reads loss and grad norm at its
default ``log_freq`` 10), with the host syncs of one such loop step counted (``loop_syncs``). The impls
(built in train_peers.py):

* ``hf-*``: HF transformers (bf16 weights, fused AdamW, SDPA; eager or ``torch.compile``).
* ``qwen3-trainer-*``: our ``Trainer.train_step``; ``-fsdp-mixed-`` is FSDP2 on a one-GPU mesh (fp32
  master weights, bf16 compute, fp32 reduce), as each rank of a sharded run has it.
* ``torchtitan-*``: torchtitan 0.2.2 as shipped, from its own pieces only: the qwen3 TrainSpec's model
  and model args (``30B-A3B-8L`` = its 30B-A3B with ``n_layers=8``), ``parallelize_qwen3`` (per-block
  compile; FSDP2 on a one-GPU mesh for ``-fsdp-mixed-``), its optimizer builder (fused AdamW), its
  compiled cross-entropy, and its ``Trainer.train_step`` run unchanged (``clip_grad_norm_``, the
  optimizer step) with its garbage-collection schedule. The Trainer's data loader, tokenizer,
  checkpointer and metric loggers are left out; its metrics hook takes loss and grad norm every step
  (per-step timing) or at its default ``log_freq`` 10 (loop timing).

A child tunes the micro-batch: it tries the candidates in order (best first in earlier runs), with a
fresh static-shape compile for each (``torch._dynamo.reset``), skips every candidate at least as large
as one that ran out of memory, and starts another only while its share of the time budget lasts. The
best is the row. ``--budget-s`` bounds the whole sweep: rows run in priority order (``PEER_PRIORITY``)
and what no longer fits is recorded under ``skipped``; the JSON is rewritten after every row. The next
row's process is started early so that its imports overlap the current row (it waits before touching
the GPU). Model FLOPs per token (FACTS.md): 6 * active non-embedding params + 12 * layers * heads *
head_dim * seq + 6 * hidden * vocab; ``mfu`` is against the bf16 matmul ceiling measured in the same call.

    python benchmarks/train_throughput.py --peers --budget-s 420 --out 'benchmarks/results/{date}-h200-peers.json'
    python benchmarks/train_throughput.py --models 1.7B --impls hf-compile,qwen3-trainer-bf16-compile --mb 4
    python benchmarks/train_throughput.py --peers --models debugmodel --seq 64 --steps 2 --warmup 1 \\
        --mb 1 --device cpu --compile-backend eager --out /tmp/peers.json    # smoke (CPU)

The one device call that writes the peers file (nvidia-h200; ``.whl/`` is git-ignored, so it is
carried; it holds the 15 wheels FACTS.md lists, torchtitan 0.2.2 among them, and ``datasets``, ``dill``
and ``multiprocess``, which ``import torchtitan.models.qwen3`` pulls in through torchtitan's HF dataset
module). The command's limit leaves ~2 minutes for the wheel install, the ceiling and the last row::

    run(kind="nvidia-h200", carry=[".whl"], timeout_s=600, command=
        "source benchmarks/gpu_env.sh && python3 benchmarks/train_throughput.py --peers --budget-s 420 "
        "--out \\"$OUT/{date}-h200-peers.json\\" 2>&1 | grep -v Warning | tail -40")
    # then copy <files_at>/<date>-h200-peers.json into benchmarks/results/

Peers file: ``rows`` [{model, impl, micro_batch, tokens_per_s, tflops, mfu, peak_mem_gib, mfu_989,
loop_tokens_per_s, loop_syncs, loop_sync_sites, loss, settings, micro_batches, wall_s}], ``skipped`` [{model, impl, reason}], with date, device,
torch / torchtitan / transformers versions, the matmul ceiling and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_peers import IMPLS, Peer, batch_for, build_ours, build_peer  # noqa: E402  (re-exported)

__all__ = ["IMPLS", "Peer", "batch_for", "build_ours", "build_peer"]

PEER_MODELS = ("1.7B", "8B", "30B-A3B-8L")
PEER_IMPLS = ("hf-compile", "torchtitan-bf16-compile", "torchtitan-fsdp-mixed-compile",
              "qwen3-trainer-bf16-compile", "qwen3-trainer-fsdp-mixed-compile")
_OURS_TT = ("qwen3-trainer-bf16-compile", "torchtitan-bf16-compile")
_MIXED = ("qwen3-trainer-fsdp-mixed-compile", "torchtitan-fsdp-mixed-compile")
# what a short budget keeps: ours vs torchtitan in bf16 for every shape, then the mixed-precision pairs,
# then HF compile (its whole-model compile costs ~3 rows), last the 8B mixed rows (fp32 weights + AdamW
# state alone are ~122 GiB: they may not fit)
PEER_PRIORITY = (
    [(m, i) for m in ("1.7B", "30B-A3B-8L", "8B") for i in _OURS_TT]
    + [(m, i) for m in ("1.7B", "30B-A3B-8L") for i in _MIXED]
    + [(m, "hf-compile") for m in ("1.7B", "30B-A3B-8L", "8B")]
    + [("8B", i) for i in _MIXED]
)
# micro-batch candidates, tried in this order (the first was the best that fit in earlier calls)
PEER_MBS = {"1.7B": (4, 2, 1), "8B": (2, 1, 4), "30B-A3B-8L": (4, 2, 1)}
ROW_WEIGHT = {"hf-compile": 3.0}  # share of the budget relative to a row of ours (compile time)
def flops_per_token(flavor: str, seq: int) -> float:
    from qwen3_trainer.model.flavors import get_flavor
    from qwen3_trainer.platform.train.metrics import flops_per_token as f

    return f(get_flavor(flavor), seq)


def matmul_ceiling(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - t0)


def time_steps(peer: Peer, mb: int, seq: int, steps: int, warmup: int, device: str) -> dict:
    """The one timing loop: per step synchronize, step, synchronize; ``warmup`` steps untimed. Then the
    same number of steps back to back as the impl's own training loop runs them (``Peer.loop_step``,
    one synchronize at each end: ``loop_seconds``, the mean step), and on CUDA the host syncs of one
    such loop step (``torch.cuda.set_sync_debug_mode``: ``loop_syncs``, the first ``loop_sync_sites``)."""
    import torch

    batch = {k: v % peer.vocab for k, v in batch_for(mb, seq).items()}
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = peer.step(batch)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    loop = peer.loop_step or peer.step
    flush = peer.loop_flush or (lambda: None)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loop(batch)
    flush()
    if cuda:
        torch.cuda.synchronize()
    out = {"seconds": times, "loss": float(loss), "loop_seconds": (time.perf_counter() - t0) / steps,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    if cuda:
        out["loop_syncs"], out["loop_sync_sites"] = count_syncs(lambda: loop(batch))
        flush()
    return out


def count_syncs(fn) -> tuple[int, list[str]]:
    """Host-device synchronizations while ``fn`` runs (CUDA's sync debug mode, as warnings) and where the
    first three came from (the innermost frames outside torch)."""
    import traceback
    import warnings

    import torch

    sites = []

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1]
                      if not f.filename.endswith(("warnings.py", "train_throughput.py")) and "/torch/" not in f.filename]
            sites.append(f"{frames[-1].filename.split('/')[-1]}:{frames[-1].lineno} {frames[-1].line}" if frames else "?")

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return len(sites), sites[:3]


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _preimport(impl: str, device: str) -> None:
    """Import what the row needs before it waits for the GPU (overlaps the previous row)."""
    import torch  # noqa: F401

    if impl.startswith("hf"):
        import transformers.models.qwen3.modeling_qwen3  # noqa: F401
        import transformers.models.qwen3_moe.modeling_qwen3_moe  # noqa: F401
    if not IMPLS[impl].get("titan") or device == "cpu":
        import qwen3_trainer.platform.train.trainer  # noqa: F401  (titan rows on CUDA import no qwen3_trainer)
    if IMPLS[impl].get("titan"):
        import torchtitan.models.qwen3  # noqa: F401
        import torchtitan.train  # noqa: F401


def emit(record: dict) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def child(args) -> None:
    """One row: build the impl once, then time each micro-batch candidate (one RESULT line each)."""
    import torch

    _preimport(args.impl, args.device)
    deadline = 0.0
    if args.wait_go:  # the parent's go line carries this row's soft deadline
        deadline = float((sys.stdin.readline().split() or ["go", "0"])[-1])
    peer = build_peer(args.impl, args.flavor, args.seq, args.device, mb=int(args.mb.split("/")[0]),
                      backend=args.compile_backend)
    oom_at, last_cost = None, 0.0
    for mb in (int(x) for x in args.mb.split("/")):
        if oom_at is not None and mb >= oom_at:
            emit({"mb": mb, "skipped": f"mb {oom_at} ran out of memory"})
            continue
        if last_cost and deadline and time.time() + last_cost > deadline:
            emit({"mb": mb, "skipped": "the row's share of the budget is spent"})
            continue
        t0 = time.time()
        torch._dynamo.reset()  # a fresh static-shape compile per micro-batch, as a run of that size has
        failure = None
        try:
            out = time_steps(peer, mb, args.seq, args.steps, args.warmup, args.device)
        except Exception as exc:  # noqa: BLE001 - recorded per micro-batch, then the row goes on or ends
            failure = ("oom" if _is_oom(exc) else "error", f"{type(exc).__name__}: {str(exc)[:400]}")
        if failure is None:
            last_cost = time.time() - t0
            emit({"mb": mb, **out, "settings": peer.settings, "wall_s": round(last_cost, 1)})
            continue
        peer.zero_grad()
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        emit({"mb": mb, failure[0]: failure[1]})
        if failure[0] == "oom":
            oom_at = mb if oom_at is None else min(oom_at, mb)
        else:
            break


# -- the sweep (parent) ------------------------------------------------------------------------------
class ChildRunner:
    """Each row in its own process group; the next row's process is started early and waits on stdin."""

    def __init__(self, script: str, common: list[str]):
        self.script, self.common = script, common
        self.logdir = tempfile.mkdtemp(prefix="qwen3-tp-")
        self.waiting: dict[tuple, tuple[subprocess.Popen, str]] = {}

    def _spawn(self, key: tuple, argv: list[str]) -> tuple[subprocess.Popen, str]:
        log = os.path.join(self.logdir, "-".join(map(str, key)).replace("/", "_") + ".log")
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, self.script, "--child", "--wait-go", *self.common, *argv],
                                    stdin=subprocess.PIPE, stdout=f, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
        return proc, log

    def prefetch(self, key: tuple, argv: list[str]) -> None:
        if key not in self.waiting:
            self.waiting[key] = self._spawn(key, argv)

    def run(self, key: tuple, argv: list[str], soft_deadline: float, timeout: float) -> tuple[list[dict], str]:
        proc, log = self.waiting.pop(key, None) or self._spawn(key, argv)
        try:
            proc.stdin.write(f"go {soft_deadline}\n")
            proc.stdin.close()
            proc.wait(timeout=max(timeout, 1))
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self._kill(proc)
        text = open(log, errors="replace").read()
        results = [json.loads(x[7:]) for x in text.splitlines() if x.startswith("RESULT ")]
        if proc.returncode not in (0, None) and not any("error" in r for r in results):
            tail = [x for x in text.splitlines() if x.strip()][-3:]
            why = "timed out" if proc.returncode == -signal.SIGKILL else f"exit {proc.returncode}"
            results.append({"error": f"{why}: {' | '.join(tail)[-600:]}"})
        return results, text

    def discard(self, key: tuple) -> None:
        if key in self.waiting:
            self._kill(self.waiting.pop(key)[0])

    def close(self) -> None:
        for key in list(self.waiting):
            self.discard(key)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def parse_mbs(spec: str, models: list[str], defaults: dict | None = None) -> dict[str, list[int]]:
    """``4/2/1`` for every model, or ``1.7B:4/2/1,8B:2`` per model (others: ``defaults`` or 1)."""
    if ":" not in spec:
        return {m: [int(x) for x in spec.split("/")] for m in models}
    given = {kv.split(":")[0]: [int(x) for x in kv.split(":")[1].split("/")] for kv in spec.split(",")}
    return {m: given.get(m, list((defaults or {}).get(m, (1,)))) for m in models}


def best_row(model: str, impl: str, results: list[dict], seq: int, fpt: float, ceiling: float | None) -> dict | None:
    tried, best = {}, None
    for r in results:
        if "mb" not in r:
            continue
        if "seconds" not in r:
            tried[str(r["mb"])] = next(f"{k}: {r[k]}" for k in ("oom", "error", "skipped") if k in r)
            continue
        sec = sorted(r["seconds"])[len(r["seconds"]) // 2]  # median step
        tps = r["mb"] * seq / sec
        tried[str(r["mb"])] = {"tokens_per_s": round(tps, 1), "peak_mem_gib": r["peak_mem_gib"] and round(r["peak_mem_gib"], 2)}
        if r.get("loop_seconds"):
            tried[str(r["mb"])]["loop_tokens_per_s"] = round(r["mb"] * seq / r["loop_seconds"], 1)
        if best is None or tps > best[0]:
            best = (tps, r)
    if best is None:
        return None
    tps, r = best
    tflops = fpt * tps / 1e12
    return {"model": model, "impl": impl, "micro_batch": r["mb"], "tokens_per_s": round(tps, 1),
            "tflops": round(tflops, 1), "mfu": round(tflops * 1e12 / ceiling, 4) if ceiling else None,
            "peak_mem_gib": r["peak_mem_gib"] and round(r["peak_mem_gib"], 2), "mfu_989": round(tflops / 989, 4),
            "loop_tokens_per_s": r.get("loop_seconds") and round(r["mb"] * seq / r["loop_seconds"], 1),
            "loop_syncs": r.get("loop_syncs"), "loop_sync_sites": r.get("loop_sync_sites"),
            "loss": r["loss"], "settings": f"{r['settings']}, seq={seq}", "micro_batches": tried}


def _write(path: str | None, result: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "torchtitan", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def sweep(args, runner=None) -> dict:
    """Every planned row in order, within ``args.budget_s``; rewrites ``args.out`` after each row."""
    t_start = time.time()
    models, impls = args.models.split(","), args.impls.split(",")
    if args.peers:
        plan = [(m, i) for m, i in PEER_PRIORITY if m in models and i in impls]
        plan += [(m, i) for m in models for i in impls if (m, i) not in plan]
    else:
        plan = [(m, i) for m in models for i in impls]
    mbs = parse_mbs(args.mb, models, PEER_MBS if args.peers else None)
    ceiling = matmul_ceiling(args.device)
    if args.device == "cuda":
        import torch

        device_name = torch.cuda.get_device_name()
        torch.cuda.empty_cache()  # the children need the whole GPU
    else:
        device_name = "cpu"
    out = args.out and args.out.replace("{date}", datetime.date.today().isoformat())
    result = {"date": datetime.date.today().isoformat(), "device": device_name, **_versions(),
              "matmul_bf16_tflops": ceiling and round(ceiling / 1e12, 1), "seq": args.seq, "steps": args.steps,
              "warmup": args.warmup, "budget_s": args.budget_s, "rows": [], "skipped": [],
              "command": " ".join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]])}
    _write(out, result)
    end = t_start + args.budget_s if args.budget_s else float("inf")
    common = ["--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--device", args.device, "--compile-backend", args.compile_backend]
    runner = runner or ChildRunner(os.path.abspath(__file__), common)

    def argv(row):
        return ["--flavor", row[0], "--impl", row[1], "--mb", "/".join(map(str, mbs[row[0]]))]

    try:
        for k, (model, impl) in enumerate(plan):
            t0, left = time.time(), end - time.time()
            if left < args.min_row_s * ROW_WEIGHT.get(impl, 1.0):
                result["skipped"].append({"model": model, "impl": impl, "reason": f"budget: {left:.0f} s left"})
                runner.discard((model, impl))
                _write(out, result)
                continue
            weights = [ROW_WEIGHT.get(i, 1.0) for _, i in plan[k:]]
            share = max(args.min_row_s, left * weights[0] / sum(weights)) if args.budget_s else float("inf")
            soft = t0 + share if args.budget_s else 0.0
            if k + 1 < len(plan):
                runner.prefetch(plan[k + 1], argv(plan[k + 1]))
            results, text = runner.run((model, impl), argv((model, impl)), soft, min(args.row_cap_s, left))
            row = best_row(model, impl, results, args.seq, flops_per_token(model, args.seq), ceiling)
            if row is None:
                why = "; ".join(f"mb {r.get('mb', '?')}: {r.get('oom') or r.get('error') or r.get('skipped')}"
                                for r in results) or f"no result: {text[-600:]}"
                result["skipped"].append({"model": model, "impl": impl, "reason": why[-900:]})
                print(f"{model:12s} {impl:34s} FAILED {why[-300:]}", flush=True)
            else:
                row["wall_s"] = round(time.time() - t0, 1)
                result["rows"].append(row)
                print(f"{model:12s} {impl:34s} mb {row['micro_batch']} {row['tokens_per_s']:10.0f} tok/s "
                      f"{row['tflops']:7.1f} TFLOP/s mem {row['peak_mem_gib']} GiB loop {row['loop_tokens_per_s']} "
                      f"tok/s syncs {row['loop_syncs']} ({row['wall_s']} s)", flush=True)
            result["elapsed_s"] = round(time.time() - t_start, 1)
            _write(out, result)
    finally:
        runner.close()
    return result


def row_args(description: str, *, impls: str, steps: int, timeout: int) -> argparse.ArgumentParser:
    """The options shared by the per-row benchmarks (this file, profile_step.py)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", default="1.7B,8B,30B-A3B-8L")
    p.add_argument("--impls", default=impls)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--mb", default="1.7B:2,8B:1,30B-A3B-8L:2", help="micro-batch per model, or one int")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--timeout", type=int, default=timeout)
    p.add_argument("--child", action="store_true")
    p.add_argument("--flavor")
    p.add_argument("--impl")
    return p


def run_child(cmd: list[str], timeout: int) -> tuple[dict | None, str]:
    """Run one row in its own process; returns its first ``RESULT`` JSON (None if it failed) and its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        text = f"TIMEOUT after {timeout}s {out}"
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    return (json.loads(line[7:]) if line else None), text


def parser() -> argparse.ArgumentParser:
    p = row_args(__doc__.splitlines()[0], impls="hf-eager,hf-compile,qwen3-trainer-bf16-compile", steps=8,
                 timeout=420)
    p.add_argument("--peers", action="store_true",
                   help="the peer sweep: PEER_MODELS x PEER_IMPLS in PEER_PRIORITY order, micro-batches PEER_MBS")
    p.add_argument("--budget-s", type=float, default=0, help="seconds for the whole sweep (0: no limit)")
    p.add_argument("--row-cap-s", type=float, default=0, help="seconds one row may take (0: --timeout)")
    p.add_argument("--min-row-s", type=float, default=35,
                   help="a row needs this much budget left to start (times ROW_WEIGHT)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager/aot_eager: CPU tests)")
    p.add_argument("--wait-go", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="JSON path; {date} becomes today's date")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the peer sweep's defaults under ``--peers`` (unless given)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    given = {a.split("=")[0] for a in argv}
    if args.peers:
        defaults = {"--models": ("models", ",".join(PEER_MODELS)), "--impls": ("impls", ",".join(PEER_IMPLS)),
                    "--mb": ("mb", ",".join(f"{m}:{'/'.join(map(str, v))}" for m, v in PEER_MBS.items())),
                    "--steps": ("steps", 10)}
        for flag, (name, value) in defaults.items():
            if flag not in given:
                setattr(args, name, value)
    args.row_cap_s = args.row_cap_s or args.timeout
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return None
    result = sweep(args)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "skipped")}))
    return result


if __name__ == "__main__":
    main()
