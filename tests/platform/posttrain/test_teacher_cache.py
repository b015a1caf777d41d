"""The teacher cache: its top-k forward KL against hand values and the full-vocabulary KL, the job's files
independent of the world size, training from it equal to the live teacher, and bad caches refused in one line."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from qwen3_trainer.model import storage
from qwen3_trainer.platform.data.synthetic import write_jsonl
from qwen3_trainer.platform.posttrain import losses
from qwen3_trainer.platform.posttrain import teacher_cache as tc

V = 151_936  # debugmodel's vocabulary rows


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> str:
    recs = [_chat(f"What is {i} + {i + 2}? /no_think", f"<think>\n\n</think>\n\nThe sum is {2 * i + 2}.")
            for i in range(5)]
    recs.append(_chat("Add 17 and 25. /think", "<think>\n17 + 25: 7 + 5 = 12, carry 1; 1 + 2 + 1 = 4.\n</think>\n\n42"))
    path = str(tmp_path_factory.mktemp("tc") / "teacher.jsonl")
    write_jsonl(path, recs)
    return path


def _cfg(teacher: str, data: str, out: str, **kw) -> tc.TeacherCacheConfig:
    base = dict(teacher=teacher, data=data, out=out, k=8, seq_len=48, batch=2, samples_per_shard=2, device="cpu")
    return tc.TeacherCacheConfig(**{**base, **kw})


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# -- the loss -----------------------------------------------------------------------------------
def test_topk_kl_by_hand():
    # student uniform over 4 tokens; teacher top-2 = token 2 (p 1/2), token 0 (p 1/4); tail 1/4
    student = torch.zeros(1, 1, 4)
    mask = torch.ones(1, 1, dtype=torch.bool)
    ids, lp = torch.tensor([[2, 0]]), torch.tensor([[math.log(0.5), math.log(0.25)]])
    renorm = tc.topk_forward_kl(student, mask, ids, lp)
    assert renorm.item() == pytest.approx(2 / 3 * math.log((2 / 3) / 0.25) + 1 / 3 * math.log((1 / 3) / 0.25), abs=1e-6)
    tail = tc.topk_forward_kl(student, mask, ids, lp, tail_logprob=torch.tensor([math.log(0.25)]))
    # 1/2 ln(1/2 / 1/4) + 1/4 ln(1/4 / 1/4) + tail 1/4 ln(1/4 / 1/2) = ln 2 / 4
    assert tail.item() == pytest.approx(math.log(2) / 4, abs=1e-6)
    # at temperature 2 the student [0, 0, 2 ln 3, 0] is [1, 1, 3, 1] / 6; masked positions give 0
    student = torch.tensor([[[9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 2 * math.log(3), 0.0]]])
    got = tc.topk_forward_kl(student, torch.tensor([[False, True]]), ids, lp, temperature=2.0)
    assert got[0, 0].item() == 0.0
    assert got[0, 1].item() == pytest.approx(2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2), abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_topk_kl_with_k_equal_to_the_vocabulary_is_the_full_forward_kl(temperature):
    g = torch.Generator().manual_seed(0)
    student = (3 * torch.randn(2, 5, 50, generator=g)).requires_grad_()
    teacher = 3 * torch.randn(2, 5, 50, generator=g)
    mask = torch.rand(2, 5, generator=g) > 0.3
    lp, ids = (teacher / temperature).log_softmax(-1).topk(50, dim=-1)
    full = losses.forward_kl(student, teacher, mask, temperature)
    (want,) = torch.autograd.grad(full.sum(), student)
    no_tail = torch.full((int(mask.sum()),), float("-inf"))  # k = V: the teacher has no mass outside
    for chunk, tail in ((3, None), (1, None), (64, None), (3, no_tail)):
        got = tc.topk_forward_kl(student, mask, ids[mask].int(), lp[mask], temperature=temperature, chunk=chunk,
                                 tail_logprob=tail)
        (grad,) = torch.autograd.grad(got.sum(), student)
        assert torch.allclose(got, full, atol=1e-5) and torch.allclose(grad, want, atol=1e-5), (chunk, tail)
    # a real top-k: the tail bucket is a lower bound on the full KL (a coarsening); renormalising differs
    lp8, ids8 = lp[..., :8][mask], ids[..., :8][mask]
    tail8 = tc._log1mexp(lp8.logsumexp(-1))
    bucket = tc.topk_forward_kl(student, mask, ids8, lp8, temperature=temperature, tail_logprob=tail8)
    assert (bucket <= full + 1e-6).all() and (bucket[mask] > 0).all()
    assert not torch.allclose(tc.topk_forward_kl(student, mask, ids8, lp8, temperature=temperature), bucket)


def test_topk_kl_never_keeps_the_whole_batch_fp32_vocabulary():
    """What autograd saves for the backward: bf16 logits chunks, never an fp32 [rows > chunk, V] tensor."""
    student = torch.randn(4, 16, 1000, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.ones(4, 16, dtype=torch.bool)
    lp, ids = student.detach().float().log_softmax(-1).topk(5, dim=-1)
    saved = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = tc.topk_forward_kl(student, mask, ids.flatten(0, 1), lp.flatten(0, 1), chunk=8).sum()
    loss.backward()
    wide = [s for s in saved if s[0] == torch.float32 and math.prod(s[1]) >= 1000]
    assert not wide, wide
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()


# -- the job ------------------------------------------------------------------------------------
def test_two_ranks_write_the_same_cache_as_one_process(tmp_path, hf_checkpoint, records, s3_bucket):
    teacher = hf_checkpoint(seed=1)
    one = f"{s3_bucket}/teacher-cache-one"
    report = tc.write_cache(_cfg(teacher, records, one))
    assert report["samples"] == 6 and report["shards_written"] == 3
    cfg = tmp_path / "cache.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(teacher, records, str(tmp_path / "two")).model_dump()))
    # two ranks as torchrun starts them (its environment; no launcher process: one torch import less)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = [subprocess.Popen([sys.executable, "-m", "qwen3_trainer.cli.main", "posttrain", "teacher-cache", str(cfg)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], "\n".join(o[-3000:] for o in outs)
    names = sorted(os.listdir(tmp_path / "two"))
    assert names == ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    for name in names:  # shards byte-identical; the manifests too (the same sha256 per shard)
        assert storage.read_bytes(f"{one}/{name}") == (tmp_path / "two" / name).read_bytes(), name
    a, b = tc.TeacherCache(one), tc.TeacherCache(str(tmp_path / "two"))
    assert a.manifest.teacher_flavor == "debugmodel" and a.manifest.vocab_size == V and a.manifest.k == 8
    for i in range(len(a)):
        assert all((x == y).all() for x, y in zip(a[i], b[i], strict=True))
    # the numbers are the teacher's: its top-8 at temperature 1 on the sample alone
    from qwen3_trainer.model.hf_interop import from_hf

    row = a[5]
    with torch.no_grad():
        logits = from_hf(teacher, device="cpu")(torch.tensor(row.ids[None, :-1], dtype=torch.long))[0]
    pos = torch.nonzero(torch.tensor(row.loss_mask[1:])).flatten()
    want_lp, want_ids = logits[pos].log_softmax(-1).topk(8, dim=-1)
    assert len(pos) == len(row.topk_ids) > 5 and (torch.from_numpy(row.topk_ids) == want_ids).all()
    assert torch.allclose(torch.from_numpy(row.topk_logprobs).float(), want_lp, atol=1e-2)  # fp16
    assert torch.allclose(torch.from_numpy(row.tail_logprob), torch.log1p(-want_lp.exp().sum(-1)), atol=1e-4)


# -- training from the cache --------------------------------------------------------------------
def _train_cfg(tmp: Path, objective: dict, init: str, steps: int = 3) -> dict:
    return {"model": {"flavor": "debugmodel"},
            "training": {"steps": steps, "micro_batch_size": 2, "seq_len": 48, "seed": 0, "device": "cpu"},
            "optimizer": {"lr": 1e-3, "weight_decay": 0.0}, "lr": {"schedule": "constant"},
            "objective": objective, "init": {"path": init}, "dump_dir": str(tmp / "run")}


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory, hf_checkpoint, records) -> str:
    out = str(tmp_path_factory.mktemp("tc") / "full")
    tc.write_cache(_cfg(hf_checkpoint(seed=1), records, out, k=V, dtype="float32", batch=4, samples_per_shard=8))
    return out


def test_distill_offpolicy_from_a_full_cache_equals_the_live_teacher(tmp_path, hf_checkpoint, full_cache,
                                                                     monkeypatch):
    from qwen3_trainer.platform.posttrain import rollouts
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    def no_teacher(*a, **k):
        raise AssertionError("a teacher was loaded")

    student = hf_checkpoint()
    with monkeypatch.context() as m:  # every way a teacher gets loaded
        m.setattr(rollouts, "frozen_model", no_teacher)
        for name in ("load_frozen", "load_reference"):
            m.setattr(Trainer, name, no_teacher, raising=False)
        cached = Trainer(TrainConfig.model_validate(_train_cfg(
            tmp_path, {"name": "distill_offpolicy", "params": {"teacher_cache": full_cache, "mode": "kl"}}, student)))
        history = cached.fit()["history"]
    assert cached.ctx.reference is None and len(history) == 3
    live = Trainer(TrainConfig.model_validate(_train_cfg(
        tmp_path, {"name": "distill_offpolicy", "params": {"teacher": hf_checkpoint(seed=1), "mode": "kl"}}, student)))
    steps = cached.objective.steps(live)  # the same samples, without the cached top-k, to the live teacher
    for want in history:
        got = live.train_step([{k: v for k, v in b.items() if not k.startswith("topk_")} for b in next(steps)[0]])
        assert abs(got["loss"] - want["loss"]) < 1e-5 and abs(got["grad_norm"] - want["grad_norm"]) < 1e-5
    assert live.ctx.reference is not None and history[0]["loss"] > 0.1 and history[0]["kl"] > 0


def test_distill_onpolicy_offpolicy_phase_from_the_cache_equals_the_live_teacher(tmp_path, hf_checkpoint, records,
                                                                                 full_cache, monkeypatch):
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.posttrain import distill
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    prompts = str(tmp_path / "q.jsonl")
    syn.write_jsonl(prompts, [syn.query_record(p) for p in syn.problems(4, seed=0)])
    params = {"teacher": hf_checkpoint(seed=1), "prompts": prompts, "offpolicy_data": records, "offpolicy_steps": 2}

    def run(extra: dict) -> list[float]:
        cfg = _train_cfg(tmp_path, {"name": "distill_onpolicy", "params": {**params, **extra}}, hf_checkpoint(), 2)
        return [h["loss"] for h in Trainer(TrainConfig.model_validate(cfg)).fit()["history"] if "loss" in h]

    def no_teacher_forward(*a, **k):
        raise AssertionError("the off-policy phase ran the teacher")

    live = run({})
    with monkeypatch.context() as m:
        m.setattr(distill, "_teacher_logits", no_teacher_forward)
        cached = run({"teacher_cache": full_cache})
    assert len(live) == len(cached) == 2 and all(abs(a - b) < 1e-5 for a, b in zip(live, cached, strict=True))
    other = str(tmp_path / "other.jsonl")  # the cache is checked against offpolicy_data: other data is refused
    shutil.copy(records, other)
    with open(other, "a") as f:
        f.write(json.dumps(_chat("What is 1 + 1? /no_think", "<think>\n\n</think>\n\n2")) + "\n")
    obj = distill.DistillOnPolicy(**{**params, "offpolicy_data": other, "teacher_cache": full_cache})
    from qwen3_trainer.model.tokenizer import load_tokenizer

    with pytest.raises(ValueError, match=r"^distill_onpolicy: params.teacher_cache: teacher cache .* was written over "
                                         r"other data than params.offpolicy_data") as exc:
        distill._offpolicy_samples(obj, load_tokenizer(), 48, V)
    _one_line(exc)
    with pytest.raises(ValueError, match="cut its samples at seq_len 48; training has 64"):
        distill._offpolicy_samples(obj, load_tokenizer(), 64, V)


# -- bad caches ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_cache(tmp_path_factory, hf_checkpoint, records) -> str:
    out = str(tmp_path_factory.mktemp("tc") / "small")
    tc.write_cache(_cfg(hf_checkpoint(seed=1), records, out, k=4))
    return out


def _edited(src: str, dst: Path, **changes) -> str:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.update(changes)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return str(dst)


def test_bad_caches_are_refused_in_one_line(tmp_path, small_cache):
    from qwen3_trainer.platform.posttrain.distill import DistillOffPolicy, DistillOnPolicy
    from qwen3_trainer.platform.train.run import PreflightError, check_config

    shards = json.loads((Path(small_cache) / "manifest.json").read_text())["shards"]
    cases = {
        "no manifest.json (not a cache, or its job did not finish)": str(tmp_path),
        "manifest.json: k 200000 exceeds the vocabulary size 151936": _edited(small_cache, tmp_path / "k", k=200_000),
        "manifest.json: format: Input should be 'qwen3-trainer-teacher-cache'": _edited(small_cache, tmp_path / "f", format="x"),
        "do not add up to the totals": _edited(small_cache, tmp_path / "n", positions=3),
    }
    for message, path in cases.items():
        with pytest.raises(ValueError, match=r"^distill_offpolicy: params.teacher_cache: teacher cache ") as exc:
            DistillOffPolicy(teacher_cache=path)
        assert message in _one_line(exc), _one_line(exc)
    raw = {"model": {"flavor": "debugmodel"}, "training": {"steps": 1},
           "objective": {"name": "distill_offpolicy", "params": {"teacher_cache": small_cache, "temperature": 2.0}}}
    with pytest.raises(PreflightError, match=r"^objective: distill_offpolicy: params.teacher_cache: teacher cache "
                                             r".* holds the teacher at temperature 1 but this loss takes it at 2$"):
        check_config(raw, 1)
    with pytest.raises(ValueError, match="holds the teacher at temperature 0.5 but this loss takes it at 1"):
        DistillOnPolicy(teacher="t", prompts="p", offpolicy_steps=1,
                        teacher_cache=_edited(small_cache, tmp_path / "t", temperature=0.5))
    with pytest.raises(ValueError, match="give params.teacher .* or params.teacher_cache, not both"):
        DistillOffPolicy(teacher="t", teacher_cache=small_cache)
    # the student's vocabulary, checked at start; the data section would be ignored, so it is refused
    obj = DistillOffPolicy(teacher_cache=_edited(small_cache, tmp_path / "v", vocab_size=1000))
    trainer = SimpleNamespace(cfg=SimpleNamespace(data=None), model_args=SimpleNamespace(vocab_size=V))
    with pytest.raises(ValueError, match=f"has a vocabulary of 1000 rows but the policy has {V}: they must share"):
        obj.start(trainer)
    with pytest.raises(ValueError, match="holds the samples; remove the data section"):
        DistillOffPolicy(teacher_cache=small_cache).start(SimpleNamespace(cfg=SimpleNamespace(data={"kind": "sft"})))
    # a shard that does not hold what the manifest says
    shards[0]["positions"] += 1
    shards[1]["positions"] -= 1
    bad = tc.TeacherCache(_edited(small_cache, tmp_path / "s", shards=shards))
    with pytest.raises(tc.CacheError, match=r"shard-00000.safetensors holds top-k of shape \[\d+, 4\]") as exc:
        bad[0]
    _one_line(exc)


def test_cli_bad_input_is_one_line_exit_2(tmp_path, small_cache, records, hf_checkpoint):
    from typer.testing import CliRunner

    from qwen3_trainer.cli.main import _register, app

    _register()
    args = ["posttrain", "teacher-cache", "--teacher", hf_checkpoint(seed=1), "--data", records, "--seq-len", "48"]
    for extra, message in (([], "out: Field required"),
                           (["--out", small_cache, "--k", "0"], "k: Input should be greater than or equal to 1"),
                           (["--out", small_cache], "is a directory that is not empty; refusing to replace it"),
                           (["--out", str(tmp_path / "c"), "--teacher", str(tmp_path / "nope")], "does not exist")):
        out = CliRunner().invoke(app, args + extra)
        assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output, out.output
        assert len([line for line in out.output.splitlines() if line.startswith("error:")]) == 1


def test_the_recipe_step_writes_the_cache_its_training_config_reads(tmp_path, hf_checkpoint):
    """D with the recipe's teacher-cache step: the preparation job writes the cache after the teacher's
    responses, and the training config's objective accepts it (same data, seq_len, vocabulary)."""
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain import distill
    from qwen3_trainer.platform.posttrain.prepare import PrepareConfig, prepare
    from qwen3_trainer.recipe.plan import plan
    from qwen3_trainer.recipe.presets import PRESETS
    from qwen3_trainer.recipe.specs import DistillObjective

    tiny = PRESETS["tiny"]
    d = tiny.spec("D")
    obj = DistillObjective(**{**d.objective.model_dump(), "offpolicy_mode": "kl", "teacher_cache": {"k": 8}})
    spec = d.model_copy(update={"objective": obj, "prepare": d.prepare.model_copy(
        update={"teacher_prompts": 2, "max_new_tokens": 6, "problems": 4, "heldout": 1})})
    p = plan(tiny.model_copy(update={"stages": {**tiny.stages, "D": spec}}), ["D"])["D"]
    teacher, root = hf_checkpoint(seed=1), str(tmp_path)
    report = prepare(PrepareConfig.model_validate(p.prepare_config(root, init=None, teacher=teacher)))
    assert report["teacher_cache"]["samples"] == report["teacher_responses"] == 4
    params = p.train_config(root, init=None, teacher=teacher, dump=str(tmp_path / "run"))["objective"]["params"]
    assert params["teacher_cache"] == f"{p.workdir(root)}/data/teacher_cache"
    objective = distill.DistillOnPolicy(**params)
    got = distill._offpolicy_samples(objective, load_tokenizer(), spec.training.seq_len, V)
    assert got is objective.cache and got.manifest.k == 8 and got.manifest.temperature == 1.0
