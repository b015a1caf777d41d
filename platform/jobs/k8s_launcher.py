"""The Kubernetes launcher: the one module of qwen3-trainer that talks to a Kubernetes API server.

It submits the rendered ConfigMap + PyTorchJob (render.py), reads the job's conditions and its pods'
phases (pods found by the operator's ``training.kubeflow.org/*`` labels), watches the job until it
ends, reads or follows a replica's log, cancels (deletes, cascading to pods, Services and the
ConfigMap, which is owned by the job) and lists jobs by label. Same method names and JobStatus shape
as the local launcher.

Authentication: an explicit kubeconfig, else ``$KUBECONFIG`` / ``~/.kube/config``, else the
in-cluster service account. The namespace defaults to the spec's (submit) or the kubeconfig
context's (everything else). Every API failure becomes a LauncherError: one line naming the action,
the object and the server's message, plus a hint for 401/403/404/409/422 and unreachable servers.
The kubernetes client is used directly rather than kubeflow's TrainingClient, which folds every API
error into a RuntimeError and loses the status code these hints need.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from qwen3_trainer.platform.jobs.local_state import last_error_line
from qwen3_trainer.platform.jobs.render import API_VERSION, CONTAINER, KIND, RenderedJob, render
from qwen3_trainer.platform.jobs.spec import JobSpec
from qwen3_trainer.platform.jobs.status import (
    Condition,
    JobHandle,
    JobStatus,
    LauncherError,
    ReplicaStatus,
)

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WATCH_S = 5          # a watch is renewed this often, so pod phases refresh even when the job is idle
REPLACE_WAIT_S = 60  # submit --replace: how long the deletion of the finished job may take
LOG_TAIL = 200       # lines of a failed pod's log searched for the line that says why


class K8sLauncher:
    backend = "k8s"

    def __init__(self, namespace: str | None = None, kubeconfig: str | None = None, context: str | None = None,
                 api_client: k8s.ApiClient | None = None):
        self.api, default_ns = (api_client, "default") if api_client else _connect(kubeconfig, context)
        self.namespace = namespace or default_ns
        self.custom = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)

    # -- submit ---------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, base_dir: str | Path | None = None, replace: bool = False) -> JobHandle:
        """Create the ConfigMap, then the PyTorchJob, then make the job the ConfigMap's owner. A job of
        the same name is refused (409), unless it has finished and ``replace`` is set: it is then
        deleted first (with its pods and ConfigMap)."""
        rendered = render(spec, base_dir)
        ns = spec.namespace
        name = spec.name
        if replace and self._exists(name, ns):
            self._delete_finished(name, ns)
        if rendered.configmap:
            self._create_configmap(rendered, ns, name)
        try:
            created = self._call("create", f"PyTorchJob {ns}/{name}", ns, self.custom.create_namespaced_custom_object,
                                 GROUP, VERSION, ns, PLURAL, rendered.job)
        except LauncherError:
            if rendered.configmap:
                self._ignore_missing(self.core.delete_namespaced_config_map, f"{name}-config", ns)
            raise
        if rendered.configmap:
            owner = {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": created["metadata"]["uid"],
                     "controller": False, "blockOwnerDeletion": False}
            self._call("patch", f"ConfigMap {ns}/{name}-config", ns, self.core.patch_namespaced_config_map,
                       f"{name}-config", ns, {"metadata": {"ownerReferences": [owner]}})
        return JobHandle(self.backend, name, ns, spec.run)

    def _delete_finished(self, name: str, ns: str) -> None:
        current = self.status(name, ns)
        if not current.finished:
            raise LauncherError(f"PyTorchJob {ns}/{name} already exists ({current.state})", status=409,
                                hint=f"qtrain job cancel {name} --backend k8s, or choose another name")
        self.cancel(name, ns)
        end = time.monotonic() + REPLACE_WAIT_S
        while self._exists(name, ns):
            if time.monotonic() > end:
                raise LauncherError(f"PyTorchJob {ns}/{name} is still being deleted after {REPLACE_WAIT_S:.0f}s",
                                    hint="submit again once `qtrain job status` says it is gone", status=409)
            time.sleep(0.5)

    def _create_configmap(self, rendered: RenderedJob, ns: str, name: str) -> None:
        what = f"ConfigMap {ns}/{name}-config"
        try:
            self._call("create", what, ns, self.core.create_namespaced_config_map, ns, rendered.configmap)
        except LauncherError as exc:
            if exc.status != 409:
                raise
            # left behind by a job that no longer exists? then it is stale: replace it
            if self._exists(name, ns):
                raise LauncherError(f"PyTorchJob {ns}/{name} already exists", status=409,
                                    hint=f"qtrain job cancel {name} --backend k8s, or choose another name") from exc
            self._call("delete", what, ns, self.core.delete_namespaced_config_map, f"{name}-config", ns)
            self._call("create", what, ns, self.core.create_namespaced_config_map, ns, rendered.configmap)

    # -- read -----------------------------------------------------------------------------------
    def status(self, name: str, namespace: str | None = None) -> JobStatus:
        ns = namespace or self.namespace
        job = self._call("get", f"PyTorchJob {ns}/{name}", ns, self.custom.get_namespaced_custom_object,
                         GROUP, VERSION, ns, PLURAL, name)
        pods = self._call("list", f"pods of {ns}/{name}", ns, self.core.list_namespaced_pod, ns,
                          label_selector=f"{JOB_NAME_LABEL}={name}")
        status = _job_status(job, pods.items)
        if status.state == "Failed":
            _add_cause(status, self._failure_line(ns, pods.items))
        return status

    def _failure_line(self, ns: str, pods: list) -> str | None:
        """Why the first failed pod failed: the last error line of its container's termination message
        (terminationMessagePolicy FallbackToLogsOnError puts the log's tail there), else of its log."""
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            cs = next((c for c in (pod.status.container_statuses or []) if c.name == CONTAINER), None)
            terminated = cs and (cs.state and cs.state.terminated or cs.last_state and cs.last_state.terminated)
            if pod.status.phase != "Failed" and not (terminated and terminated.exit_code):
                continue
            if terminated and terminated.message:
                line = last_error_line(terminated.message.splitlines())
                if line:
                    return f"{pod.metadata.name}: {line}"
            try:
                text = self.core.read_namespaced_pod_log(pod.metadata.name, ns, container=CONTAINER,
                                                         tail_lines=LOG_TAIL)
            except (ApiException, urllib3.exceptions.HTTPError):
                continue             # no log to read (pod gone, no permission): the condition stays as is
            line = last_error_line(str(text).splitlines())
            if line:
                return f"{pod.metadata.name}: {line}"
        return None

    def wait(self, name: str, timeout: float | None = None,
             on_update: Callable[[JobStatus], None] | None = None, namespace: str | None = None) -> JobStatus:
        """Watch the job until Succeeded or Failed; ``on_update`` sees each new status. A watch
        event (or WATCH_S without one) triggers a fresh read of the job and its pods."""
        ns = namespace or self.namespace
        end = None if timeout is None else time.monotonic() + timeout
        last, version = None, None
        while True:
            current = self.status(name, ns)
            if on_update and current != last:
                on_update(current)
            last = current
            if current.finished:
                return current
            if end is not None and time.monotonic() > end:
                raise LauncherError(f"PyTorchJob {ns}/{name} still {current.state} after {timeout:.0f}s",
                                    hint=f"qtrain job status {name} --backend k8s")
            window = WATCH_S if end is None else max(1, min(WATCH_S, int(end - time.monotonic()) + 1))
            version = self._next_event(name, ns, version, window)

    def _next_event(self, name: str, ns: str, version: str | None, window: int) -> str | None:
        """Block until the job changes after ``version`` (or ``window`` s pass); the new version."""
        stream = k8s_watch.Watch().stream(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
            field_selector=f"metadata.name={name}", resource_version=version, timeout_seconds=window)
        try:
            for event in stream:
                if event["type"] == "DELETED":
                    raise LauncherError(f"PyTorchJob {ns}/{name} was deleted while waiting", status=404)
                if event["type"] == "ERROR":          # e.g. 410 Gone: start again from a fresh list
                    return None
                return event["object"]["metadata"].get("resourceVersion", version)
            return version
        except ApiException as exc:
            raise _api_error(exc, "watch", f"PyTorchJob {ns}/{name}", ns) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unreachable(exc) from exc
        finally:
            stream.close()

    def logs(self, name: str, replica: str = "master", index: int = 0, follow: bool = False,
             namespace: str | None = None, tail: int | None = None) -> Iterator[str]:
        """Lines of one replica's ``pytorch`` container log (``master`` of an elastic job is worker-0);
        ``follow`` streams until the pod ends; ``tail`` keeps only the last lines."""
        ns = namespace or self.namespace
        selector = f"{JOB_NAME_LABEL}={name},{REPLICA_TYPE_LABEL}={replica.lower()},{REPLICA_INDEX_LABEL}={index}"
        pods = self._call("list", f"pods of {ns}/{name}", ns, self.core.list_namespaced_pod, ns, label_selector=selector)
        if not pods.items and replica.lower() == "master" and index == 0:   # elastic: no Master, worker-0
            selector = f"{JOB_NAME_LABEL}={name},{REPLICA_TYPE_LABEL}=worker,{REPLICA_INDEX_LABEL}=0"
            pods = self._call("list", f"pods of {ns}/{name}", ns, self.core.list_namespaced_pod, ns, label_selector=selector)
        if not pods.items:
            raise LauncherError(f"PyTorchJob {ns}/{name} has no {replica.lower()}-{index} pod (yet)", status=404,
                                hint=f"qtrain job status {name} --backend k8s")
        pod = pods.items[0].metadata.name
        kwargs = {"container": CONTAINER, "follow": follow, "_preload_content": False}
        if tail is not None:
            kwargs["tail_lines"] = tail
        resp = self._call("read log of", f"pod {ns}/{pod}", ns, self.core.read_namespaced_pod_log, pod, ns, **kwargs)
        try:
            pending = b""
            for chunk in resp.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if pending:
                yield pending.decode(errors="replace")
        finally:
            resp.release_conn()

    def list(self, selector: dict[str, str] | None = None, namespace: str | None = None) -> list[JobStatus]:
        """PyTorchJobs in the namespace whose labels match ``selector``."""
        ns = namespace or self.namespace
        label_selector = ",".join(f"{k}={v}" for k, v in (selector or {}).items()) or None
        jobs = self._call("list", f"PyTorchJobs in {ns}", ns, self.custom.list_namespaced_custom_object,
                          GROUP, VERSION, ns, PLURAL, label_selector=label_selector)
        pods = self._call("list", f"pods in {ns}", ns, self.core.list_namespaced_pod, ns, label_selector=JOB_NAME_LABEL)
        by_job: dict[str, list] = {}
        for pod in pods.items:
            by_job.setdefault(pod.metadata.labels[JOB_NAME_LABEL], []).append(pod)
        return [_job_status(job, by_job.get(job["metadata"]["name"], [])) for job in jobs["items"]]

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, name: str, namespace: str | None = None) -> None:
        """Delete the PyTorchJob; its pods, Services and ConfigMap go with it (foreground deletion)."""
        ns = namespace or self.namespace
        self._call("delete", f"PyTorchJob {ns}/{name}", ns, self.custom.delete_namespaced_custom_object,
                   GROUP, VERSION, ns, PLURAL, name, body=k8s.V1DeleteOptions(propagation_policy="Foreground"))

    # -- helpers --------------------------------------------------------------------------------
    def _call(self, action: str, what: str, ns: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with API errors as LauncherErrors naming ``action what``."""
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise _api_error(exc, action, what, ns) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> LauncherError:
        reason = getattr(exc, "reason", None) or exc
        return LauncherError(f"cannot reach the Kubernetes API at {self.api.configuration.host}: {reason}",
                             hint="check KUBECONFIG and the current context (kubectl cluster-info)")

    def _exists(self, name: str, ns: str) -> bool:
        try:
            self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _api_error(exc, "get", f"PyTorchJob {ns}/{name}", ns) from exc

    def _ignore_missing(self, fn, *args) -> None:
        try:
            fn(*args)
        except ApiException:
            pass


def _connect(kubeconfig: str | None, context: str | None) -> tuple[k8s.ApiClient, str]:
    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if kubeconfig or Path(path.split(os.pathsep)[0]).exists():
        try:
            configuration = k8s.Configuration()
            k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
            _, active = k8s_config.list_kube_config_contexts(config_file=path)
            if context:
                active = next(c for c in k8s_config.list_kube_config_contexts(config_file=path)[0]
                              if c["name"] == context)
        except (k8s_config.ConfigException, OSError, StopIteration) as exc:
            raise LauncherError(f"cannot load kubeconfig {path}: {exc}",
                                hint="set KUBECONFIG or pass --kubeconfig / --context") from exc
        namespace = active.get("context", {}).get("namespace") or "default"
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        namespace = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else "default"
    else:
        raise LauncherError("no Kubernetes credentials: no kubeconfig and not running in a cluster",
                            hint="set KUBECONFIG (or ~/.kube/config), or use --backend local")
    configuration.retries = 1        # fail fast on an unreachable server instead of 3 silent retries
    return k8s.ApiClient(configuration), namespace


_HINTS = {
    401: "the credentials were rejected: refresh them (kubectl auth whoami) or check KUBECONFIG / the context",
    403: "RBAC: the account needs create/get/list/watch/delete on pytorchjobs.kubeflow.org and configmaps, "
         "get/list on pods and pods/log in namespace {ns} (kubectl auth can-i create pytorchjobs.kubeflow.org -n {ns})",
    409: "an object with this name exists: qtrain job cancel NAME --backend k8s, or choose another name",
    422: "the API server rejected the manifest: inspect it with qtrain job render SPEC",
}


def _api_error(exc: ApiException, action: str, what: str, ns: str) -> LauncherError:
    try:
        message = json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError):
        message = exc.reason or str(exc.body)
    hint = _HINTS.get(exc.status)
    if exc.status == 404:
        hint = ("is the Kubeflow training operator installed? (kubectl get crd pytorchjobs.kubeflow.org)"
                if action in ("create", "list") and "PyTorchJob" in what
                else "qtrain job list --backend k8s shows the jobs of the namespace")
    if exc.status == 403:
        hint = hint.format(ns=ns)
    return LauncherError(f"cannot {action} {what}: {exc.status} {exc.reason}: {message}",
                         hint=hint, status=exc.status)


def _add_cause(status: JobStatus, line: str | None) -> None:
    """Append the failing replica's error line to the Failed condition's message."""
    if not line:
        return
    for i in range(len(status.conditions) - 1, -1, -1):
        c = status.conditions[i]
        if c.type == "Failed" and c.status == "True":
            message = c.message.rstrip(".")
            status.conditions[i] = c.model_copy(update={"message": f"{message}: {line}" if message else line})
            return


def _job_status(job: dict, pods: list) -> JobStatus:
    meta, status = job["metadata"], job.get("status") or {}
    conditions = [Condition(type=c["type"], status=c.get("status", "True"), reason=c.get("reason", ""),
                            message=c.get("message", ""), last_transition_time=c.get("lastTransitionTime", ""))
                  for c in status.get("conditions") or []]
    replicas = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        labels = pod.metadata.labels or {}
        cs = next((c for c in (pod.status.container_statuses or []) if c.name == CONTAINER), None)
        terminated = cs and (cs.state and cs.state.terminated or cs.last_state and cs.last_state.terminated)
        replicas.append(ReplicaStatus(
            name=pod.metadata.name, replica_type=labels.get(REPLICA_TYPE_LABEL, "").capitalize(),
            index=int(labels.get(REPLICA_INDEX_LABEL, 0)), phase=pod.status.phase or "Unknown",
            restarts=cs.restart_count if cs else 0, exit_code=terminated.exit_code if terminated else None))
    return JobStatus(name=meta["name"], namespace=meta.get("namespace", ""), backend="k8s",
                     run_id=(meta.get("labels") or {}).get("qwen3-trainer.io/run-id"),
                     conditions=conditions, replicas=replicas, restarts=sum(r.restarts for r in replicas),
                     start_time=status.get("startTime"), completion_time=status.get("completionTime"))
