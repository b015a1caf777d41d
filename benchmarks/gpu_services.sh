# Sourced on the device machine from the repo root, AFTER `source benchmarks/gpu_env.sh`: starts the same two
# real services that tests/conftest.py starts in CI, so the trainer reaches S3 and MLflow with no network:
#   * a moto S3 server on 127.0.0.1:$SVC_S3_PORT (default 5000), bucket `qwen3-trainer` created;
#   * an MLflow tracking server on 127.0.0.1:$SVC_MLFLOW_PORT (default 5001): sqlite store and proxied
#     artifacts under $SVC_MLFLOW_DIR (default /tmp/mlflow), one worker, job execution off.
# Both run in their own sessions (setsid), log to $SVC_LOG_DIR (default /tmp/svc-logs); `svc_stop` ends them.
# Exports: AWS_ENDPOINT_URL_S3, MLFLOW_S3_ENDPOINT_URL (both the moto URL), AWS_ACCESS_KEY_ID=testing,
# AWS_SECRET_ACCESS_KEY=testing, AWS_DEFAULT_REGION=us-east-1, MLFLOW_TRACKING_URI (the MLflow URL).
# A server already answering on its port (an earlier call on a still-warm machine) is reused, not restarted.
# A server that does not answer within its timeout ends the calling shell (exit 1) after printing its log tail.
#
# The wheels come from .whl-svc/ (git-ignored; the device machine has no boto/moto/mlflow/flask/sqlalchemy/
# cryptography). Three of them are slimmed repacks of the PyPI wheels (same name and version; RECORD rewritten
# with the hashes of the kept files, so `pip install --no-index --no-deps` accepts them):
#   * botocore 1.43.117: botocore/data/<service>/ kept only for s3, sts, sso, sso-oidc (plus the top-level
#     endpoints/partitions/_retry/sdk-default-configuration JSON); 16 MB -> 0.8 MB;
#   * mlflow 3.17.2: mlflow/server/js/ (the web UI build) dropped; the REST API and /health are unaffected,
#     the UI page is not served; 12 MB -> 4.3 MB;
#   * moto 5.2.5: the data of moto/ssm/resources, moto/ec2/resources and moto/emr/resources dropped (those
#     services' default AMIs/parameters/release lists; S3 never loads them); 7.2 MB -> 3.0 MB.
# mlflow-skinny and mlflow-tracing are not carried: the full mlflow wheel holds every one of their files,
# byte for byte, and mlflow only asks whether the `mlflow` distribution is installed. Not carried either, as
# nothing on this path imports them: gunicorn (uvicorn serves), huey (job execution off), greenlet (no async
# SQLAlchemy), docker, skops, gitpython. The install replaces $SVC_SITE/bin (console scripts only; unused here).
# Validated off-device on CPython 3.12 with only the packages the device machine already has plus .whl/.

SVC_SITE=${SVC_SITE:-/tmp/site}
SVC_PYTHON=${SVC_PYTHON:-python3}
SVC_S3_PORT=${SVC_S3_PORT:-5000}
SVC_MLFLOW_PORT=${SVC_MLFLOW_PORT:-5001}
SVC_MLFLOW_DIR=${SVC_MLFLOW_DIR:-/tmp/mlflow}
SVC_LOG_DIR=${SVC_LOG_DIR:-/tmp/svc-logs}

"$SVC_PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SVC_SITE" \
    .whl-svc/*.whl >/dev/null 2>&1 || { echo "SERVICE WHEELS INSTALL FAILED"; exit 1; }
mkdir -p "$SVC_LOG_DIR" "$SVC_MLFLOW_DIR/artifacts"

_svc_up() { "$SVC_PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; }

# _svc_start NAME URL CMD...: unless URL answers already, runs CMD in a new session (its pid is the
# process-group id, kept in NAME.pid).
_svc_start() {
    local name=$1; shift
    _svc_up "$1" && { echo "$name already up at $1"; return; }
    shift
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$SVC_LOG_DIR/$name.pid" "$@" >"$SVC_LOG_DIR/$name.log" 2>&1 </dev/null &
}

# _svc_wait NAME URL SECONDS: polls URL until it answers; on timeout or death prints the log tail and exits.
_svc_wait() {
    local name=$1 url=$2 deadline=$((SECONDS + $3)) pid
    until _svc_up "$url"; do
        pid=$(cat "$SVC_LOG_DIR/$name.pid" 2>/dev/null)
        if [ $SECONDS -gt $deadline ] || { [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; }; then
            echo "SERVICE $name DID NOT START ($url); last lines of $SVC_LOG_DIR/$name.log:"
            tail -n 40 "$SVC_LOG_DIR/$name.log"
            svc_stop
            exit 1
        fi
        sleep 0.5
    done
}

# svc_stop: ends both servers (each by its own process group).
svc_stop() {
    local name pid
    for name in moto mlflow; do
        pid=$(cat "$SVC_LOG_DIR/$name.pid" 2>/dev/null) && kill -- -"$pid" 2>/dev/null
        rm -f "$SVC_LOG_DIR/$name.pid"
    done
}

S3_URL=http://127.0.0.1:$SVC_S3_PORT
MLFLOW_URL=http://127.0.0.1:$SVC_MLFLOW_PORT
_svc_start moto "$S3_URL/" "$SVC_PYTHON" -m moto.server -H 127.0.0.1 -p "$SVC_S3_PORT"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false _svc_start mlflow "$MLFLOW_URL/health" "$SVC_PYTHON" -m mlflow server \
    --host 127.0.0.1 --port "$SVC_MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$SVC_MLFLOW_DIR/mlflow.db" --artifacts-destination "$SVC_MLFLOW_DIR/artifacts"
_svc_wait moto "$S3_URL/" 60
_svc_wait mlflow "$MLFLOW_URL/health" 180

export AWS_ENDPOINT_URL_S3=$S3_URL MLFLOW_S3_ENDPOINT_URL=$S3_URL MLFLOW_TRACKING_URI=$MLFLOW_URL
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
"$SVC_PYTHON" -c "import boto3; s3 = boto3.client('s3'); 'qwen3-trainer' in [b['Name'] for b in s3.list_buckets()['Buckets']] or s3.create_bucket(Bucket='qwen3-trainer')" \
    || { echo "BUCKET qwen3-trainer NOT CREATED"; svc_stop; exit 1; }
echo "services up: S3 $S3_URL (bucket qwen3-trainer), MLflow $MLFLOW_URL; logs in $SVC_LOG_DIR"
