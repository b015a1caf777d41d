"""Fixtures of the post-training tests: an S3 bucket on the session's moto server and small HF
checkpoints of debugmodel (seeded random init; optionally another vocabulary size)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def s3_bucket(s3_server):
    from qwen3_trainer.model import storage

    fs, _ = storage.filesystem("s3://qwen3-posttrain-tests")
    fs.mkdir("qwen3-posttrain-tests")
    return "s3://qwen3-posttrain-tests"


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """``hf_checkpoint(vocab_size=None, seed=0, flavor="debugmodel", n_layers=None, tied=None)`` -> path of
    a seeded HF checkpoint of that flavor (optionally another vocabulary, depth or embedding tie)."""
    from qwen3_trainer.model.build import build_model
    from qwen3_trainer.model.flavors import get_flavor
    from qwen3_trainer.model.hf_interop import to_hf

    made: dict = {}

    def make(vocab_size: int | None = None, seed: int = 0, flavor: str = "debugmodel", n_layers: int | None = None,
             tied: bool | None = None) -> str:
        key = (vocab_size, seed, flavor, n_layers, tied)
        if key not in made:
            args = get_flavor(flavor)
            args.max_seq_len = 128
            if vocab_size:
                args.vocab_size = vocab_size
            if n_layers:
                args.n_layers = n_layers
            if tied is not None:
                args.enable_weight_tying = tied
            path = tmp_path_factory.mktemp("ckpt") / "hf"
            made[key] = to_hf(build_model(args, device="cpu", seed=seed), str(path))
        return made[key]

    return make
