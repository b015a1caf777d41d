"""The post-training data-preparation job: generated data, user datasets checked record by record."""

import json

import pytest

from qwen3_trainer.platform.data.synthetic import read_records, write_jsonl
from qwen3_trainer.platform.posttrain import prepare as pp
from qwen3_trainer.recipe import configs as cf


def _cfg(stage, out, **kw):
    return pp.PrepareConfig(stage=stage, out=str(out), **kw)


def test_file_names_match_the_recipe():
    assert pp.FILES == cf.DATA_FILES


def test_procedural_data_steps(tmp_path):
    t1 = pp.prepare(_cfg("T1", tmp_path / "t1"))
    assert t1["samples"] > 40 and sum(t1["query_dropped"].values()) > 0
    pp.prepare(_cfg("T2", tmp_path / "t2"))
    pp.prepare(_cfg("T4", tmp_path / "t4"))
    train = {r["question"] for r in read_records(str(tmp_path / "t2/queries.jsonl"))}
    held = {r["question"] for r in read_records(str(tmp_path / "t2/heldout.jsonl"))}
    assert len(train) == 56 and len(held) == 25 and not train & held
    t4 = list(read_records(str(tmp_path / "t4/queries.jsonl")))
    assert all(r["constraints"] for r in t4) and len({r["prompt"][-1]["content"][:12] for r in t4}) > 1
    sft = list(read_records(str(tmp_path / "t1/coldstart_sft.jsonl")))
    assert {r["messages"][0]["content"] for r in sft} <= train  # no held-out problem leaks into cold start


def test_stages_that_sample_need_a_policy(tmp_path):
    with pytest.raises(ValueError, match="needs `policy`"):
        pp.prepare(_cfg("T3", tmp_path))
    with pytest.raises(ValueError, match="needs `policy`"):
        pp.prepare(_cfg("D", tmp_path))


def test_user_queries_are_used_and_checked(tmp_path):
    good = [{"prompt": [{"role": "user", "content": f"{i}+1?"}], "answer": str(i + 1)} for i in range(5)]
    path = tmp_path / "q.jsonl"
    write_jsonl(str(path), good)
    pp.prepare(_cfg("T2", tmp_path / "out", dataset=str(path), eval_dataset=str(path)))
    assert list(read_records(str(tmp_path / "out/queries.jsonl"))) == good
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good[0]) + "\n" + json.dumps({"prompt": good[1]["prompt"]}) + "\n")
    with pytest.raises(pp.RecordError, match=r"bad.jsonl: record 2: answer: missing"):
        pp.prepare(_cfg("T2", tmp_path / "out2", dataset=str(bad)))
    bad.write_text(json.dumps({"prompt": "not a list", "answer": "1"}) + "\n")
    with pytest.raises(pp.RecordError, match=r"record 1: prompt: expected a list"):
        pp.prepare(_cfg("T4", tmp_path / "out3", dataset=str(bad)))


def test_user_chats_for_the_cold_start(tmp_path):
    chats = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    path = tmp_path / "c.jsonl"
    write_jsonl(str(path), chats)
    report = pp.prepare(_cfg("T1", tmp_path / "out", dataset=str(path)))
    assert report["samples"] == 1 and list(read_records(str(tmp_path / "out/coldstart_sft.jsonl"))) == chats
    path.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(pp.RecordError, match=r"c.jsonl: record 1: messages: expected"):
        pp.prepare(_cfg("T1", tmp_path / "out2", dataset=str(path)))


def test_prepare_cli_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from qwen3_trainer.cli.main import _register, app

    _register()
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(f"stage: T2\nout: {tmp_path / 'o'}\nproblemz: 3\n")
    out = CliRunner().invoke(app, ["posttrain", "prepare", str(cfg)])
    assert out.exit_code == 2 and "problemz" in out.output and "Traceback" not in out.output
    cfg.write_text(f"stage: T2\nout: {tmp_path / 'o'}\nproblems: 6\nheldout: 2\n")
    out = CliRunner().invoke(app, ["posttrain", "prepare", str(cfg)])
    assert out.exit_code == 0, out.output
    assert len(list(read_records(str(tmp_path / "o/queries.jsonl")))) == 6


def test_t4_trains_the_reward_model_it_scores_with(tmp_path, hf_checkpoint):
    """The tiny preset's T4 preparation writes preference pairs, trains the reward model from the stage's
    init in the same job and exports it where T4's ``reward_model`` reward reads it; the trained model
    ranks the held-out pairs better than the init it started from."""
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.reward_model import load_pairs
    from qwen3_trainer.platform.posttrain.rewards import RewardModelScorer, reward_scores
    from qwen3_trainer.recipe.plan import plan
    from qwen3_trainer.recipe.presets import get_preset

    preset = get_preset("tiny")
    init = hf_checkpoint(vocab_size=preset.vocab_size)
    p = plan(preset, ["T4"])["T4"]
    root = str(tmp_path / "root")
    report = pp.prepare(pp.PrepareConfig.model_validate(p.prepare_config(root, init=init, teacher=None)))
    rm = report["reward_model"]
    assert rm["pairs"] == 36 and rm["eval_pairs"] == 12 and rm["steps"] == 6
    assert len(rm["eval_pair_accuracy"]) == 2 and rm["eval_pair_accuracy"][1] >= 0.75  # before and after training
    rewards = p.train_config(root, init=init, teacher=None, dump=str(tmp_path / "d"))["objective"]["params"]["rewards"]
    assert rewards[-1] == {"name": "reward_model", "weight": 0.5, "model": rm["checkpoint"]}
    tok = load_tokenizer()
    held = load_pairs(f"{p.workdir(root)}/data/reward_model/pairs_eval.jsonl", tok, 512)
    assert len(held) == 12

    def accuracy(path: str) -> float:
        model = RewardModelScorer(path, tok, "cpu", preset.vocab_size).model
        chosen = reward_scores(model, [c for c, _ in held], tok.pad, "cpu")
        rejected = reward_scores(model, [r for _, r in held], tok.pad, "cpu")
        return float((chosen > rejected).float().mean())

    before, after = accuracy(init), accuracy(rm["checkpoint"])
    print(f"held-out pair accuracy {before:.3f} -> {after:.3f}")
    assert after >= 0.75 and after > before


def test_reward_model_step_bad_input(tmp_path):
    """Only T4 trains a reward model; user pairs are checked record by record."""
    from pydantic import ValidationError

    from qwen3_trainer.recipe.presets import get_preset
    from qwen3_trainer.recipe.specs import RewardModelStep

    t2 = get_preset("tiny").spec("T2")
    with pytest.raises(ValidationError, match="only T4"):
        type(t2).model_validate({**t2.model_dump(), "prepare": {**t2.prepare.model_dump(),
                                                                "reward_model": RewardModelStep().model_dump()}})
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "1+1?"}], "chosen": "2"}) + "\n")
    with pytest.raises(pp.RecordError, match=r"pairs.jsonl: record 1: rejected: missing"):
        pp.read_user_records(str(bad), "pairs")


def test_reward_model_with_too_few_pairs_for_an_eval_share(tmp_path, hf_checkpoint):
    """3 pairs at eval_share 0.25 hold none out: the job trains without an evaluation file (it asked
    for one it never wrote before)."""
    from qwen3_trainer.recipe.plan import plan
    from qwen3_trainer.recipe.presets import get_preset

    preset = get_preset("tiny")
    p = plan(preset, ["T4"], max_steps=1)["T4"]
    cfg = p.prepare_config(str(tmp_path / "root"), init=hf_checkpoint(vocab_size=preset.vocab_size), teacher=None)
    cfg["reward_model"]["pairs"] = 3
    report = pp.prepare(pp.PrepareConfig.model_validate(cfg))["reward_model"]
    assert report["pairs"] == 3 and "eval_pairs" not in report and report["steps"] == 1
