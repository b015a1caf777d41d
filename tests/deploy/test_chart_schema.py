"""values.schema.json: wrong values fail `helm template` with a message naming the key."""

from __future__ import annotations

import pytest
from chart_helpers import helm_template

BAD_VALUES = {
    # --set arguments -> text the error must contain (the key's JSON pointer and the rule)
    "enum": (["--set", "s3.auth=iam"], "at '/s3/auth': value must be one of 'secret', 'workloadIdentity'"),
    "typo": (["--set", "mlflow.replica=2"], "at '/mlflow': additional properties 'replica' not allowed"),
    "minimum": (["--set", "jobs.runPolicy.backoffLimit=-1"], "at '/jobs/runPolicy/backoffLimit': minimum: got -1, want 0"),
    "root": (["--set", "podSecurityContext.runAsNonRoot=false"], "at '/podSecurityContext/runAsNonRoot'"),
    "service": (["--set", "mlflow.service.type=External"], "at '/mlflow/service/type'"),
    "no stages": (["--set", "jobs.stages.S1.nodes=8"], "at '/jobs': additional properties 'stages' not allowed"),
    "no shmSize": (["--set", "jobs.shmSize=64Gi"], "at '/jobs': additional properties 'shmSize' not allowed"),
    "pool key": (["--set", "jobs.nodePools.gpu.cpuPerGPU=4"], "at '/jobs/nodePools/gpu': additional properties 'cpuPerGPU'"),
    "quantity": (["--set", "jobs.nodePools.gpu.memoryPerGpu=lots"], "at '/jobs/nodePools/gpu/memoryPerGpu'"),
    "gpus": (["--set", "jobs.nodePools.gpu.gpusPerNode=32"], "at '/jobs/nodePools/gpu/gpusPerNode': maximum"),
    "pool name": (["--set", "jobs.nodePools.GPU.gpusPerNode=1"], "at '/jobs/nodePools': additional properties 'GPU'"),
    "requests": (["--set", "mlflow.resources.requests=null"], "at '/mlflow/resources'"),
    "image": (["--set", "trainerImage.repository="], "at '/trainerImage/repository'"),
    "queue": (["--set", "jobs.scheduling.gangScheduler=kueue"], "at '/jobs/scheduling/queueName': minLength: got 0, want 1"),
    "security": (["--set", "podSecurityContext.privileged=true"], "at '/podSecurityContext': additional properties"),
    "api": (["--set", "jobs.api=TFJob"], "at '/jobs/api': value must be one of 'PyTorchJob', 'TrainJob'"),
    "runtime": (["--set", "jobs.trainJob.runtime=mine"], "at '/jobs/trainJob/runtime': value must be one of"),
    # a mixed-up API choice: a Volcano PodGroup / priority only a runtime the chart installs can carry
    "cluster gang": (["--set", "jobs.api=TrainJob", "--set", "jobs.trainJob.runtime=cluster", "--set",
                      "jobs.scheduling.gangScheduler=volcano", "--set", "jobs.scheduling.queueName=q"],
                     "at '/jobs/scheduling/gangScheduler': 'not' failed"),
    "cluster priority": (["--set", "jobs.api=TrainJob", "--set", "jobs.trainJob.runtime=cluster", "--set",
                          "jobs.scheduling.priorityClassName=high"], "at '/jobs/scheduling/priorityClassName'"),
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


def test_valid_overrides_render(helm):
    done = helm_template(helm, "--set", "s3.auth=workloadIdentity",
                         "--set", "s3.workloadIdentityAnnotations.iam\\.gke\\.io/gcp-service-account=t@p.iam.gserviceaccount.com",
                         "--set", "jobs.scheduling.gangScheduler=volcano", "--set", "jobs.scheduling.queueName=q",
                         "--set", "jobs.nodePools.gpu.cpuPerGpu=16")
    assert done.returncode == 0, done.stderr
    # the same gang on Trainer v2 through the runtime the chart installs is fine
    done = helm_template(helm, "--set", "jobs.api=TrainJob", "--set", "jobs.scheduling.gangScheduler=volcano",
                         "--set", "jobs.scheduling.queueName=q")
    assert done.returncode == 0, done.stderr
