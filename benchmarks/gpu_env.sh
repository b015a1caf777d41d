# Sourced by the device-call scripts (gpu_run*.sh): installs the wheels carried in .whl/ (the device
# machine has torch 2.11 and no network) and this package into /tmp, and points PYTHONPATH at them.
# `bash scripts/fetch_gpu_wheels.sh` fills .whl/.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/pkg . >/dev/null 2>&1 || { echo PKG INSTALL FAILED; exit 1; }
export PYTHONPATH=/tmp/pkg:/tmp/site
