"""values.schema.json: wrong values fail `helm template` with a message naming the key."""

from __future__ import annotations

import pytest
from chart_helpers import helm_template

BAD_VALUES = {
    # --set arguments -> text the error must contain (the key's JSON pointer and the rule)
    "enum": (["--set", "s3.auth=iam"], "at '/s3/auth': value must be one of 'secret', 'workloadIdentity'"),
    "typo": (["--set", "mlflow.replica=2"], "at '/mlflow': additional properties 'replica' not allowed"),
    "minimum": (["--set", "jobs.stages.S2.nodes=0"], "at '/jobs/stages/S2/nodes': minimum: got 0, want 1"),
    "root": (["--set", "podSecurityContext.runAsNonRoot=false"], "at '/podSecurityContext/runAsNonRoot'"),
    "service": (["--set", "mlflow.service.type=External"], "at '/mlflow/service/type'"),
    "stage name": (["--set", "jobs.stages.S9.nodePool=gpu"], "at '/jobs/stages': additional properties 'S9' not allowed"),
    "pool name": (["--set", "jobs.nodePools.GPU.gpusPerNode=1"], "at '/jobs/nodePools': additional properties 'GPU'"),
    "requests": (["--set", "mlflow.resources.requests=null"], "at '/mlflow/resources'"),
    "image": (["--set", "trainerImage.repository="], "at '/trainerImage/repository'"),
    "queue": (["--set", "jobs.gangScheduler=kueue"], "at '/jobs/queueName': minLength: got 0, want 1"),
    "s3 secret": (["--set", "s3.credentialsSecret="], "at '/s3/credentialsSecret': minLength"),
    "identity": (["--set", "s3.auth=workloadIdentity"], "at '/s3/workloadIdentityAnnotations': minProperties"),
    "worker api": (["--set", "prefect.server.enabled=false"], "at '/prefect/worker/apiUrl': minLength"),
    "bucket": (["--set", "s3.bucket=My_Bucket"], "at '/s3/bucket'"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_fails_naming_the_key(helm, case):
    args, message = BAD_VALUES[case]
    done = helm_template(helm, *args)
    assert done.returncode != 0, f"{case}: rendered although invalid"
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


def test_bad_values_file_fails(helm, tmp_path):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("prefect:\n  worker:\n    concurrencyLimit: many\n")
    done = helm_template(helm, "-f", bad)
    assert done.returncode != 0
    assert "at '/prefect/worker/concurrencyLimit': got string, want integer" in done.stderr, done.stderr


def test_unknown_node_pool_fails_naming_the_stage(helm):
    # cross-key rule the schema cannot express: checked in templates/jobs/configmap.yaml
    done = helm_template(helm, "--set", "jobs.stages.S3.nodePool=tpu")
    assert done.returncode != 0
    assert 'jobs.stages.S3.nodePool: "tpu" is not a key of jobs.nodePools (cpu, gpu)' in done.stderr


def test_valid_overrides_render(helm):
    done = helm_template(helm, "--set", "s3.auth=workloadIdentity",
                         "--set", "s3.workloadIdentityAnnotations.iam\\.gke\\.io/gcp-service-account=t@p.iam.gserviceaccount.com",
                         "--set", "jobs.gangScheduler=volcano", "--set", "jobs.queueName=q")
    assert done.returncode == 0, done.stderr
