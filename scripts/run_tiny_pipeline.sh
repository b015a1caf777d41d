#!/usr/bin/env bash
# The main job in miniature: install, start MLflow (sqlite store) and a Prefect server on 127.0.0.1,
# run all eight recipe stages with the `tiny` preset, and print where to browse the results.
#
#   bash scripts/run_tiny_pipeline.sh                     # everything under ~/.qtrain
#   bash scripts/run_tiny_pipeline.sh --stages S1,S2      # extra args go to `qtrain pipeline run`
#   QTRAIN_PIPELINE_ROOT=s3://bucket/runs bash scripts/run_tiny_pipeline.sh   # checkpoints on S3
#
# Re-running skips the stages already registered complete. The servers keep running afterwards so
# the UIs stay browsable; the last lines printed say how to stop them. Env: QTRAIN_HOME (state,
# default ~/.qtrain), MLFLOW_PORT (5000), PREFECT_PORT (4200), SKIP_INSTALL=1 (reuse .venv as is),
# BENCH_OUT=benchmarks/results/pipeline_tiny_cpu.json (record the run as a benchmark result).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
STATE=${QTRAIN_HOME:-$HOME/.qtrain}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PREFECT_PORT=${PREFECT_PORT:-4200}
mkdir -p "$STATE"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q torch==2.13.0 -e . -c constraints.txt   # torch pinned (CPU wheel); the tested set
fi
BIN="$REPO/.venv/bin"

up() { curl -fs -o /dev/null --max-time 3 "$1" 2>/dev/null; }   # quiet: it is asked again every second while servers start
wait_up() {  # url, what, log, seconds
  local deadline=$((SECONDS + $4))
  until up "$1"; do
    if [ $SECONDS -ge "$deadline" ]; then echo "error: $2 did not start; see $3" >&2; tail -20 "$3" >&2; exit 2; fi
    sleep 1
  done
}

MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
if ! up "$MLFLOW_URL/health"; then
  echo "starting MLflow on $MLFLOW_URL (sqlite store $STATE/mlflow-server.db)"
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --workers 1 --backend-store-uri "sqlite:///$STATE/mlflow-server.db" \
    --artifacts-destination "$STATE/mlflow-artifacts" >"$STATE/mlflow-server.log" 2>&1 &
  echo $! >"$STATE/mlflow-server.pid"
fi

PREFECT_URL="http://127.0.0.1:$PREFECT_PORT"
if ! up "$PREFECT_URL/api/health"; then
  echo "starting Prefect on $PREFECT_URL (state $STATE/prefect)"
  PREFECT_HOME="$STATE/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_API_URL="$PREFECT_URL/api" \
    PREFECT_API_URL="$PREFECT_URL/api" nohup "$BIN/prefect" server start \
    --host 127.0.0.1 --port "$PREFECT_PORT" >"$STATE/prefect-server.log" 2>&1 &
  echo $! >"$STATE/prefect-server.pid"
fi
wait_up "$MLFLOW_URL/health" "MLflow" "$STATE/mlflow-server.log" 180
wait_up "$PREFECT_URL/api/health" "Prefect" "$STATE/prefect-server.log" 180

export MLFLOW_TRACKING_URI="$MLFLOW_URL" PREFECT_API_URL="$PREFECT_URL/api" QTRAIN_HOME="$STATE"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
load=$(cut -d' ' -f1 /proc/loadavg)
start=$SECONDS
"$BIN/qtrain" pipeline run --preset tiny "$@"
echo "pipeline finished in $((SECONDS - start)) s (script: $SECONDS s)"
if [ -n "${BENCH_OUT:-}" ]; then   # record a benchmark result (BENCHMARKS.md, Pipeline)
  "$BIN/python" scripts/bench_pipeline.py --wall $((SECONDS - start)) --total $SECONDS --load-before "$load" --out "$BENCH_OUT"
fi

cat <<EOF

Browse the run:
  MLflow   $MLFLOW_URL   experiment "qwen3-pipeline": the pipeline run, its nested stage runs, plots
           (Artifacts > plots), registered models qwen3-tiny-teacher / qwen3-tiny-student (Models)
  Prefect  $PREFECT_URL/runs   flow run "qwen3-pipeline" (graph, stage sub-flows, artifacts)
  CLI      $BIN/qtrain pipeline show --latest      $BIN/qtrain pipeline ls
Stop the servers this script started:
  kill \$(cat $STATE/mlflow-server.pid $STATE/prefect-server.pid 2>/dev/null)
EOF
