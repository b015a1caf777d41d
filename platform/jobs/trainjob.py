"""Render a JobSpec (``kind: TrainJob``) to a Kubeflow Trainer v2 ``trainer.kubeflow.org/v1alpha1``
TrainJob, the ConfigMap holding its training config (render.py's) and, when the spec names no runtime,
the namespaced TrainingRuntime it references. Every object is built with the ``kubeflow-trainer-api``
models (v2.3.0) and serialized by them.

Shape, as Trainer v2.3 runs it: the runtime's JobSet has one replicated Job ``node`` (labelled
``trainer.kubeflow.org/trainjob-ancestor-step: trainer``) whose container ``node`` is the trainer.
The TrainJob's ``trainer`` sets that container's image, command, args and env and the job's
``numNodes``, ``numProcPerNode`` and ``resourcesPerNode``; the Torch plugin injects PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK (the Job completion index), PET_MASTER_ADDR and PET_MASTER_PORT,
so the container runs render.py's torchrun line unchanged. What ``trainer`` cannot carry goes into the
runtime's pod template through ``runtimePatches`` (manager ``qwen3-trainer.io/qtrain``).

    JobSpec                                   TrainJob                          TrainingRuntime
    nodes, procs, image, entrypoint, env      trainer.*                         -
    resources (+ GPUs, RDMA ``extended``)     trainer.resourcesPerNode          -
    node_pool, shm, config volume,            runtimePatches: nodeSelector,     -
      service account, pull secrets,            tolerations, affinity, volumes,
      pod security context, pod labels          mounts, ... , pod metadata
    scheduling gang=kueue + queue             label kueue.x-k8s.io/queue-name   -
    gang=volcano / scheduler-plugins          -                                 podGroupPolicy, schedulerName,
                                                                                queue annotation
    priority_class                            -                                 pod priorityClassName
    run_policy.active_deadline_seconds        spec.activeDeadlineSeconds        -
    run_policy.backoff_limit, restart_policy  -                                 JobSet failurePolicy, Job
                                                                                podFailurePolicy (below)
    run_policy.ttl_seconds_after_finished     -                                 JobSet ttlSecondsAfterFinished
    image_pull_policy                         -                                 container imagePullPolicy

Restarts: the Job fails on its first failed pod (backoffLimit 0) and the JobSet recreates the whole gang
up to ``backoff_limit`` times (``failurePolicy.maxRestarts``), as the local launcher does. ExitCode: a
pod failure policy fails the Job on exit codes 1-127 (a trainer error) and a JobSet rule fails the
JobSet on that (reason ``PodFailurePolicy``), so only signals (>= 128: OOM kill, preemption) restart;
OnFailure restarts on any failure; Never restarts nothing. What v2 cannot express at all is refused
by the JobSpec (spec.py ``_trainjob_limits``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from kubeflow_trainer_api import models as m

from qwen3_trainer.platform.jobs.render import (
    CONFIG_DIR,
    CONFIG_HASH_ANNOTATION,
    DEFAULT_SCHEDULER,
    KUEUE_QUEUE_LABEL,
    STATIC_RDZV,
    RenderedJob,
    check_fields,
    config_map,
    env_entries,
    job_labels,
    pod_resources,
    training_config,
)
from qwen3_trainer.platform.jobs.spec import JobSpec, RuntimeRef

GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainJob"
NODE = "node"                     # the runtime's replicated Job and its trainer container
MANAGER = "qwen3-trainer.io/qtrain"   # owner of our runtime patch (Kueue writes its own)
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
FRAMEWORK_LABEL = "trainer.kubeflow.org/framework"
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
TRAINER_ERROR_EXIT_CODES = list(range(1, 128))   # ExitCode: these fail the job, >= 128 restarts it
Q = m.IoK8sApimachineryPkgApiResourceQuantity


def render_trainjob(spec: JobSpec, base_dir: str | Path | None = None) -> RenderedJob:
    """JobSpec -> TrainJob (+ ConfigMap, + TrainingRuntime when ``spec.runtime`` is None)."""
    config_name, config_text, config_arg = training_config(spec, Path(base_dir or "."))
    labels = job_labels(spec)
    configmap = config_map(spec, labels, config_name, config_text)
    ref = spec.runtime or RuntimeRef(name=spec.name, kind="TrainingRuntime")
    metadata_labels = dict(labels)
    if spec.scheduling.gang == "kueue":
        metadata_labels[KUEUE_QUEUE_LABEL] = spec.scheduling.queue
    job = m.TrainerV1alpha1TrainJob(
        apiVersion=API_VERSION, kind=KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=spec.name, namespace=spec.namespace, labels=metadata_labels,
            annotations=dict(spec.annotations) or None),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtimeRef=m.TrainerV1alpha1RuntimeRef(apiGroup=GROUP, kind=ref.kind, name=ref.name),
            trainer=_trainer(spec, config_arg),
            runtimePatches=[_runtime_patch(spec, labels, config_text)],
            activeDeadlineSeconds=spec.run_policy.active_deadline_seconds,
        ),
    )
    runtime = None if spec.runtime else render_runtime(spec, spec.name, labels).to_dict()
    return RenderedJob(job=job.to_dict(), configmap=configmap, runtime=runtime)


def _trainer(spec: JobSpec, config_arg: str) -> m.TrainerV1alpha1Trainer:
    requests, limits = pod_resources(spec)
    return m.TrainerV1alpha1Trainer(
        image=spec.image, command=["torchrun"], args=[*STATIC_RDZV, *spec.entrypoint, config_arg],
        env=[_env_var(name, value, secret) for name, value, secret in env_entries(spec)],
        numNodes=spec.nodes, numProcPerNode=spec.procs_per_node,
        resourcesPerNode=m.IoK8sApiCoreV1ResourceRequirements(
            requests={k: Q(v) for k, v in requests.items()}, limits={k: Q(v) for k, v in limits.items()}),
    )


def _env_var(name: str, value: str | None, secret) -> m.IoK8sApiCoreV1EnvVar:
    if secret is None:
        return m.IoK8sApiCoreV1EnvVar(name=name, value=value)
    ref = m.IoK8sApiCoreV1SecretKeySelector(name=secret.name, key=secret.key)
    return m.IoK8sApiCoreV1EnvVar(name=name, valueFrom=m.IoK8sApiCoreV1EnvVarSource(secretKeyRef=ref))


def _runtime_patch(spec: JobSpec, labels: dict, config_text: str | None) -> m.TrainerV1alpha1RuntimePatch:
    """The runtime's ``node`` pod template as this job needs it (what ``trainer`` cannot carry)."""
    volumes = [m.IoK8sApiCoreV1Volume(name="dshm", emptyDir=m.IoK8sApiCoreV1EmptyDirVolumeSource(
        medium="Memory", sizeLimit=Q(spec.resources.shm)))]
    mounts = [m.IoK8sApiCoreV1VolumeMount(name="dshm", mountPath="/dev/shm")]
    annotations = {}
    if config_text is not None:
        volumes.append(m.IoK8sApiCoreV1Volume(name="train-config", configMap=m.IoK8sApiCoreV1ConfigMapVolumeSource(
            name=f"{spec.name}-config")))
        mounts.append(m.IoK8sApiCoreV1VolumeMount(name="train-config", mountPath=CONFIG_DIR, readOnly=True))
        annotations[CONFIG_HASH_ANNOTATION] = hashlib.sha256(config_text.encode()).hexdigest()
    pool = spec.node_pool
    pod = m.TrainerV1alpha1PodSpecPatch(
        containers=[m.TrainerV1alpha1ContainerPatch(name=NODE, volumeMounts=mounts)],
        volumes=volumes,
        nodeSelector=dict(pool.node_selector) or None,
        tolerations=[m.IoK8sApiCoreV1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                                                tolerationSeconds=t.toleration_seconds)
                     for t in pool.tolerations] or None,
        affinity=_strict(m.IoK8sApiCoreV1Affinity, pool.affinity, "V1Affinity", "node_pool.affinity"),
        serviceAccountName=spec.service_account,
        imagePullSecrets=[m.IoK8sApiCoreV1LocalObjectReference(name=n) for n in spec.image_pull_secrets] or None,
        securityContext=_strict(m.IoK8sApiCoreV1PodSecurityContext, spec.pod_security_context,
                                "V1PodSecurityContext", "pod_security_context"),
    )
    template = m.TrainerV1alpha1PodTemplatePatch(
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=dict(labels), annotations=annotations or None),
        spec=pod)
    node = m.TrainerV1alpha1ReplicatedJobPatch(
        name=NODE, template=m.TrainerV1alpha1JobTemplatePatch(spec=m.TrainerV1alpha1JobSpecPatch(template=template)))
    return m.TrainerV1alpha1RuntimePatch(
        manager=MANAGER,
        trainingRuntimeSpec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(template=m.TrainerV1alpha1JobSetTemplatePatch(
            spec=m.TrainerV1alpha1JobSetSpecPatch(replicatedJobs=[node]))))


def _strict(model, data: dict | None, k8s_klass: str, path: str):
    """A kubernetes object given in its YAML form, refused on an unknown or mistyped field (the
    generated models' from_dict would drop it silently)."""
    if not data:
        return None
    check_fields(data, k8s_klass, path)
    return model.from_dict(data)


def render_runtime(spec: JobSpec, name: str, labels: dict[str, str]) -> m.TrainerV1alpha1TrainingRuntime:
    """The namespaced TrainingRuntime holding the runtime-owned knobs of ``spec`` (module docstring):
    the job's own runtime, and the one the chart installs (templates/jobs/trainingruntime.yaml renders
    the same object from the cluster contract; tests/deploy compares them)."""
    sched, rp = spec.scheduling, spec.run_policy
    group_policy = None
    if sched.gang == "volcano":
        group_policy = m.TrainerV1alpha1PodGroupPolicy(volcano=m.TrainerV1alpha1VolcanoPodGroupPolicySource())
    elif sched.gang == "scheduler-plugins":
        group_policy = m.TrainerV1alpha1PodGroupPolicy(coscheduling=m.TrainerV1alpha1CoschedulingPodGroupPolicySource(
            scheduleTimeoutSeconds=sched.schedule_timeout_seconds))
    pod = m.IoK8sApiCoreV1PodSpec(
        restartPolicy="Never",        # a failed pod fails its Job; the JobSet restarts the gang
        containers=[m.IoK8sApiCoreV1Container(name=NODE, image=spec.image, imagePullPolicy=spec.image_pull_policy)],
        priorityClassName=sched.priority_class,
        schedulerName=sched.scheduler_name or DEFAULT_SCHEDULER.get(sched.gang),
    )
    exit_policy = None
    if spec.restart_policy == "ExitCode":
        exit_policy = m.IoK8sApiBatchV1PodFailurePolicy(rules=[m.IoK8sApiBatchV1PodFailurePolicyRule(
            action="FailJob", onExitCodes=m.IoK8sApiBatchV1PodFailurePolicyOnExitCodesRequirement(
                containerName=NODE, operator="In", values=TRAINER_ERROR_EXIT_CODES))])
    node = m.JobsetV1alpha2ReplicatedJob(
        name=NODE,
        template=m.IoK8sApiBatchV1JobTemplateSpec(
            metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels={ANCESTOR_LABEL: "trainer"}),
            spec=m.IoK8sApiBatchV1JobSpec(backoffLimit=0, podFailurePolicy=exit_policy,
                                          template=m.IoK8sApiCoreV1PodTemplateSpec(spec=pod))))
    restarts = 0 if spec.restart_policy == "Never" else rp.backoff_limit
    rules = None
    if exit_policy is not None:
        rules = [m.JobsetV1alpha2FailurePolicyRule(name="TrainerError", action="FailJobSet",
                                                    onJobFailureReasons=["PodFailurePolicy"])]
    queue = {VOLCANO_QUEUE_ANNOTATION: sched.queue} if sched.gang == "volcano" and sched.queue else None
    return m.TrainerV1alpha1TrainingRuntime(
        apiVersion=API_VERSION, kind="TrainingRuntime",
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, namespace=spec.namespace, labels={**labels, FRAMEWORK_LABEL: "torch"}),
        spec=m.TrainerV1alpha1TrainingRuntimeSpec(
            mlPolicy=m.TrainerV1alpha1MLPolicy(numNodes=spec.nodes, torch=m.TrainerV1alpha1TorchMLPolicySource()),
            podGroupPolicy=group_policy,
            template=m.TrainerV1alpha1JobSetTemplateSpec(
                metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(annotations=queue) if queue else None,
                spec=m.JobsetV1alpha2JobSetSpec(
                    replicatedJobs=[node],
                    failurePolicy=m.JobsetV1alpha2FailurePolicy(maxRestarts=restarts, rules=rules),
                    ttlSecondsAfterFinished=rp.ttl_seconds_after_finished))),
    )


def round_trip(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` read back through its kubeflow-trainer-api model: equal to ``obj`` when no field is lost."""
    model = {"TrainJob": m.TrainerV1alpha1TrainJob, "TrainingRuntime": m.TrainerV1alpha1TrainingRuntime,
             "ClusterTrainingRuntime": m.TrainerV1alpha1ClusterTrainingRuntime}[obj["kind"]]
    return model.from_dict(obj).to_dict()
