#!/usr/bin/env bash
# Run the tiny pipeline against `prefect server start` and the MLflow server, then open both UIs in
# headless Chromium and save screenshots into docs/ (shown in the README's Pipeline section):
#   docs/pipeline-prefect-flow-run.png       Prefect: the qwen3-pipeline flow run and its stage sub-flows
#   docs/pipeline-mlflow-runs.png            MLflow: the experiment, pipeline run with nested stage runs
#   docs/pipeline-mlflow-loss.png            MLflow: loss through the pipeline (PNG artifact)
#   docs/pipeline-mlflow-thinking-budget.png MLflow: T4's thinking-budget curve (PNG artifact)
#
#   bash scripts/screenshots.sh        # state in $QTRAIN_HOME (default: a fresh folder under /tmp)
# Needs Debian's chromium (installed with apt-get when missing) and playwright-core from npm
# (installed into ~/.cache/qwen3-trainer/playwright).
set -euo pipefail
cd "$(dirname "$0")/.."
export QTRAIN_HOME=${QTRAIN_HOME:-$(mktemp -d /tmp/qwen3-screens-XXXX)}
export MLFLOW_PORT=${MLFLOW_PORT:-5055} PREFECT_PORT=${PREFECT_PORT:-4255}

if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core
fi
PW=${PLAYWRIGHT_DIR:-$HOME/.cache/qwen3-trainer/playwright}
[ -d "$PW/node_modules/playwright-core" ] || npm install --silent --prefix "$PW" playwright-core@1.65.1

export QTRAIN_PIPELINE_ROOT="$QTRAIN_HOME/pipelines"
bash scripts/run_tiny_pipeline.sh "$@"

show=$(.venv/bin/qtrain pipeline show --latest --json)
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$show" "$1"; }
export PREFECT_URL="http://127.0.0.1:$PREFECT_PORT" MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
export FLOW_RUN_ID=$(field 'd["prefect_flow_run_id"]') PARENT_RUN_ID=$(field 'd["mlflow_run_id"]')
export THINK_RUN_ID=$(field '[s["mlflow_run_id"] for s in d["stages"] if s["stage"] == "T4"][0]')
export EXPERIMENT_ID=$(curl -fsS "$MLFLOW_URL/api/2.0/mlflow/runs/get?run_id=$PARENT_RUN_ID" |
  python3 -c "import json,sys; print(json.load(sys.stdin)['run']['info']['experiment_id'])")
export OUT_DIR="$(pwd)/docs" NODE_PATH="$PW/node_modules"
mkdir -p "$OUT_DIR"
cp scripts/screenshots.mjs "$PW/screenshots.mjs"   # resolves playwright-core from $PW/node_modules
node "$PW/screenshots.mjs"
echo "servers still up; stop: kill \$(cat $QTRAIN_HOME/mlflow-server.pid) \$(cat $QTRAIN_HOME/prefect-server.pid)"
