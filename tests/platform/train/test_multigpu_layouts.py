"""benchmarks/multigpu.py's layout table: every layout of N GPUs trains on the one-GPU run's global
batch, and is compared with the right one-GPU reference (pipeline stages need untied embeddings)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import multigpu  # noqa: E402


@pytest.mark.parametrize("gpus", [2, 4, 8])
@pytest.mark.parametrize("flavor", ["1.7B", "30B-A3B-8L"])
def test_every_layout_sees_the_same_global_batch(flavor, gpus):
    table = multigpu.layouts(flavor, gpus)
    for name, lay in table.items():
        p = lay.parallelism
        data_parallel = lay.processes // (p.get("tp", 1) * p.get("pp", 1))
        assert data_parallel * lay.mb * lay.accum == 2 * gpus, name
        assert lay.ac == (lay.processes == 1 and gpus > 2), name
    assert (f"ep{gpus}" in table) == (flavor == "30B-A3B-8L")
    assert {"single", "single-repeat", f"fsdp{gpus}"} <= set(table)


def test_references():
    dense, moe = multigpu.layouts("1.7B", 4), multigpu.layouts("30B-A3B-8L", 4)
    assert multigpu.reference_of(dense["pp2xfsdp2"]) == "single-untied"  # 1.7B ties its embeddings
    assert multigpu.reference_of(dense["tp2xfsdp2"]) == "single"
    assert multigpu.reference_of(moe["pp2xfsdp2"]) == "single" and "single-untied" not in moe
    assert multigpu.precision_of(dense["fsdp4"], "cuda").endswith("(FSDP mixed precision)")
    assert multigpu.precision_of(dense["single"], "cuda").endswith("(autocast)")
