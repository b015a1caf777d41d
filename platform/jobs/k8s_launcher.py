"""The Kubernetes launcher: the one module of qwen3-trainer that talks to a Kubernetes API server.

It submits the rendered ConfigMap + PyTorchJob (render.py) or ConfigMap + TrainingRuntime + TrainJob
(trainjob.py), reads the job's conditions and its pods' phases (k8s_status.py maps both APIs onto
our statuses), watches the job until it ends, reads or follows a replica's log, cancels (deletes,
cascading to pods, Services, the JobSet and what the job owns: its ConfigMap and own runtime) and
lists jobs of both kinds by label. Same method names and JobStatus shape as the local launcher.

A job is found by name: the kind it was submitted as, else a PyTorchJob, else a TrainJob. A TrainJob
naming a runtime is submitted only once that runtime is known to exist (a TrainingRuntime in the
namespace, or a ClusterTrainingRuntime where the account may read it; where it may not, Trainer's
admission webhook refuses the TrainJob and nothing is left behind either). ``list`` lists the kinds
the account may list and the cluster serves, failing only when neither answers.

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

from qwen3_trainer.platform.jobs.k8s_status import APIS, PYTORCHJOB, TRAINJOB, JobApi, add_cause, job_status
from qwen3_trainer.platform.jobs.k8s_status import terminated_state as _terminated
from qwen3_trainer.platform.jobs.local_state import last_error_line
from qwen3_trainer.platform.jobs.render import render
from qwen3_trainer.platform.jobs.spec import JobSpec
from qwen3_trainer.platform.jobs.status import JobHandle, JobStatus, LauncherError

RUNTIME_PLURALS = {"TrainingRuntime": "trainingruntimes", "ClusterTrainingRuntime": "clustertrainingruntimes"}
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
        self._kinds: dict[tuple[str, str], JobApi] = {}     # (namespace, name) -> the API it was found in

    # -- submit ---------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, base_dir: str | Path | None = None, replace: bool = False) -> JobHandle:
        """Create the ConfigMap (and a TrainJob's own TrainingRuntime), then the job, then make the job
        their owner. A job of the same name is refused (409), unless it has finished and ``replace`` is
        set: it is then deleted first (with its pods and what it owns). A TrainJob whose named runtime
        does not exist is refused (404) before anything is created."""
        rendered = render(spec, base_dir)
        api = APIS[rendered.kind]
        ns, name = spec.namespace, spec.name
        self._kinds[(ns, name)] = api
        if spec.runtime is not None:
            self._check_runtime(spec)
        if replace and self._exists(api, name, ns):
            self._delete_finished(api, name, ns)
        owned = []        # (what, delete function, name): created before the job, owned by it after
        if rendered.configmap:
            self._create_owned(api, ns, name, f"ConfigMap {ns}/{name}-config", self.core.create_namespaced_config_map,
                               self.core.delete_namespaced_config_map, (ns, rendered.configmap), f"{name}-config")
            owned.append(("ConfigMap", f"{name}-config"))
        if rendered.runtime:
            plural = RUNTIME_PLURALS["TrainingRuntime"]
            self._create_owned(api, ns, name, f"TrainingRuntime {ns}/{name}",
                               self._custom_create(TRAINJOB.group, TRAINJOB.version, plural),
                               self._custom_delete(TRAINJOB.group, TRAINJOB.version, plural),
                               (ns, rendered.runtime), name)
            owned.append(("TrainingRuntime", name))
        try:
            created = self._call("create", f"{api.kind} {ns}/{name}", ns, self.custom.create_namespaced_custom_object,
                                 api.group, api.version, ns, api.plural, rendered.job)
        except LauncherError as exc:
            for kind, obj in owned:
                self._ignore_missing(self._deleter(kind), obj, ns)
            if spec.runtime is not None and exc.status == 422 and "runtimeRef" in str(exc):
                raise _runtime_missing(spec) from exc     # the webhook's words for what _check_runtime says
            raise
        owner = {"apiVersion": api.api_version, "kind": api.kind, "name": name, "uid": created["metadata"]["uid"],
                 "controller": False, "blockOwnerDeletion": False}
        patch = {"metadata": {"ownerReferences": [owner]}}
        for kind, obj in owned:
            if kind == "ConfigMap":
                self._call("patch", f"ConfigMap {ns}/{obj}", ns, self.core.patch_namespaced_config_map, obj, ns, patch)
            else:
                self._call("patch", f"TrainingRuntime {ns}/{obj}", ns, self.custom.patch_namespaced_custom_object,
                           TRAINJOB.group, TRAINJOB.version, ns, RUNTIME_PLURALS[kind], obj, patch)
        return JobHandle(self.backend, name, ns, spec.run)

    def _check_runtime(self, spec: JobSpec) -> None:
        """Refuse a TrainJob whose runtime does not exist. A ClusterTrainingRuntime the account may not
        read (a namespaced Role cannot grant it) is left to Trainer's webhook."""
        ref, ns = spec.runtime, spec.namespace
        what = _runtime_name(spec)
        args = (TRAINJOB.group, TRAINJOB.version, RUNTIME_PLURALS[ref.kind], ref.name)
        try:
            if ref.kind == "ClusterTrainingRuntime":
                self.custom.get_cluster_custom_object(*args)
            else:
                self.custom.get_namespaced_custom_object(args[0], args[1], ns, *args[2:])
        except ApiException as exc:
            if exc.status == 404:
                raise _runtime_missing(spec) from exc
            if exc.status == 403 and ref.kind == "ClusterTrainingRuntime":
                return
            raise _api_error(exc, "get", what, ns) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _delete_finished(self, api: JobApi, name: str, ns: str) -> None:
        current = self.status(name, ns)
        if not current.finished:
            raise LauncherError(f"{api.kind} {ns}/{name} already exists ({current.state})", status=409,
                                hint=f"qtrain job cancel {name} --backend k8s, or choose another name")
        self.cancel(name, ns)
        end = time.monotonic() + REPLACE_WAIT_S
        while self._exists(api, name, ns):
            if time.monotonic() > end:
                raise LauncherError(f"{api.kind} {ns}/{name} is still being deleted after {REPLACE_WAIT_S:.0f}s",
                                    hint="submit again once `qtrain job status` says it is gone", status=409)
            time.sleep(0.5)

    def _create_owned(self, api: JobApi, ns: str, name: str, what: str, create, delete, args: tuple, obj: str) -> None:
        """Create an object the job will own; one left behind by a job that no longer exists is stale
        and replaced, one of a job that exists (of either kind: they share the name) is a name conflict."""
        try:
            self._call("create", what, ns, create, *args)
        except LauncherError as exc:
            if exc.status != 409:
                raise
            for other in (api, *(a for a in APIS.values() if a is not api)):
                if self._exists(other, name, ns, strict=other is api):
                    raise LauncherError(f"{other.kind} {ns}/{name} already exists", status=409,
                                        hint=f"qtrain job cancel {name} --backend k8s, or choose another name") from exc
            self._call("delete", what, ns, delete, obj, ns)
            self._call("create", what, ns, create, *args)

    def _custom_create(self, group: str, version: str, plural: str):
        return lambda ns, body: self.custom.create_namespaced_custom_object(group, version, ns, plural, body)

    def _custom_delete(self, group: str, version: str, plural: str):
        return lambda obj, ns: self.custom.delete_namespaced_custom_object(group, version, ns, plural, obj)

    def _deleter(self, kind: str):
        if kind == "ConfigMap":
            return self.core.delete_namespaced_config_map
        return self._custom_delete(TRAINJOB.group, TRAINJOB.version, RUNTIME_PLURALS[kind])

    # -- read -----------------------------------------------------------------------------------
    def status(self, name: str, namespace: str | None = None) -> JobStatus:
        ns = namespace or self.namespace
        api, job = self._get_job(name, ns)
        pods = self._call("list", f"pods of {ns}/{name}", ns, self.core.list_namespaced_pod, ns,
                          label_selector=f"{api.job_label}={name}")
        status = job_status(api, job, pods.items)
        if status.state == "Failed":
            add_cause(status, self._failure_line(api, ns, pods.items))
        return status

    def _get_job(self, name: str, ns: str) -> tuple[JobApi, dict]:
        """The job named ``name``: of the kind it is known as, else a PyTorchJob, else a TrainJob. Not
        found: the first kind's 404."""
        known = self._kinds.get((ns, name))
        missing = None
        for api in [known] if known else [PYTORCHJOB, TRAINJOB]:
            try:
                job = self.custom.get_namespaced_custom_object(api.group, api.version, ns, api.plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise _api_error(exc, "get", f"{api.kind} {ns}/{name}", ns) from exc
                missing = missing or _api_error(exc, "get", f"{api.kind} {ns}/{name}", ns)
                continue
            except urllib3.exceptions.HTTPError as exc:
                raise self._unreachable(exc) from exc
            self._kinds[(ns, name)] = api
            return api, job
        raise missing

    def _api_of(self, name: str, ns: str) -> JobApi:
        return self._kinds.get((ns, name)) or self._get_job(name, ns)[0]

    def _failure_line(self, api: JobApi, ns: str, pods: list) -> str | None:
        """Why the first failed pod failed: the last error line of its container's termination message
        (terminationMessagePolicy FallbackToLogsOnError puts the log's tail there), else of its log."""
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            _, terminated = _terminated(pod, api.container)
            if pod.status.phase != "Failed" and not (terminated and terminated.exit_code):
                continue
            if terminated and terminated.message:
                line = last_error_line(terminated.message.splitlines())
                if line:
                    return f"{pod.metadata.name}: {line}"
            try:
                text = self.core.read_namespaced_pod_log(pod.metadata.name, ns, container=api.container,
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
            api = self._api_of(name, ns)
            if end is not None and time.monotonic() > end:
                raise LauncherError(f"{api.kind} {ns}/{name} still {current.state} after {timeout:.0f}s",
                                    hint=f"qtrain job status {name} --backend k8s")
            window = WATCH_S if end is None else max(1, min(WATCH_S, int(end - time.monotonic()) + 1))
            version = self._next_event(api, name, ns, version, window)

    def _next_event(self, api: JobApi, name: str, ns: str, version: str | None, window: int) -> str | None:
        """Block until the job changes after ``version`` (or ``window`` s pass); the new version."""
        stream = k8s_watch.Watch().stream(
            self.custom.list_namespaced_custom_object, api.group, api.version, ns, api.plural,
            field_selector=f"metadata.name={name}", resource_version=version, timeout_seconds=window)
        try:
            for event in stream:
                if event["type"] == "DELETED":
                    raise LauncherError(f"{api.kind} {ns}/{name} was deleted while waiting", status=404)
                if event["type"] == "ERROR":          # e.g. 410 Gone: start again from a fresh list
                    return None
                return event["object"]["metadata"].get("resourceVersion", version)
            return version
        except ApiException as exc:
            raise _api_error(exc, "watch", f"{api.kind} {ns}/{name}", ns) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unreachable(exc) from exc
        finally:
            stream.close()

    def logs(self, name: str, replica: str = "master", index: int = 0, follow: bool = False,
             namespace: str | None = None, tail: int | None = None) -> Iterator[str]:
        """Lines of one replica's trainer container log (``master`` of an elastic job is worker-0; a
        TrainJob's ``node`` i, master = node 0, worker i = node i+1); ``follow`` streams until the pod
        ends; ``tail`` keeps only the last lines."""
        ns, replica = namespace or self.namespace, replica.lower()
        api = self._api_of(name, ns)
        pods = self._call("list", f"pods of {ns}/{name}", ns, self.core.list_namespaced_pod, ns,
                          label_selector=api.replica_selector(name, replica, index))
        if not pods.items and api is PYTORCHJOB and replica == "master" and index == 0:   # elastic: worker-0
            pods = self._call("list", f"pods of {ns}/{name}", ns, self.core.list_namespaced_pod, ns,
                              label_selector=api.replica_selector(name, "worker", 0))
        if not pods.items:
            raise LauncherError(f"{api.kind} {ns}/{name} has no {replica}-{index} pod (yet)", status=404,
                                hint=f"qtrain job status {name} --backend k8s")
        # a restarted JobSet recreates its pods under new names: read the newest
        pod = max(pods.items, key=lambda p: str(p.metadata.creation_timestamp or "")).metadata.name
        kwargs = {"container": api.container, "follow": follow, "_preload_content": False}
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
        """PyTorchJobs, then TrainJobs, in the namespace whose labels match ``selector``. A kind the
        cluster does not serve (404) or the account may not list (403) is skipped, unless both are."""
        ns = namespace or self.namespace
        label_selector = ",".join(f"{k}={v}" for k, v in (selector or {}).items()) or None
        out, skipped = [], []
        for api in (PYTORCHJOB, TRAINJOB):
            try:
                jobs = self._call("list", f"{api.kind}s in {ns}", ns, self.custom.list_namespaced_custom_object,
                                  api.group, api.version, ns, api.plural, label_selector=label_selector)
            except LauncherError as exc:
                if exc.status not in (403, 404):
                    raise
                skipped.append(exc)
                continue
            if not jobs["items"]:
                continue
            pods = self._call("list", f"pods in {ns}", ns, self.core.list_namespaced_pod, ns,
                              label_selector=api.job_label)
            by_job: dict[str, list] = {}
            for pod in pods.items:
                by_job.setdefault(pod.metadata.labels[api.job_label], []).append(pod)
            for job in jobs["items"]:
                self._kinds[(ns, job["metadata"]["name"])] = api
                out.append(job_status(api, job, by_job.get(job["metadata"]["name"], [])))
        if len(skipped) == 2:
            raise skipped[0]
        return out

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, name: str, namespace: str | None = None) -> None:
        """Delete the job; its pods, Services, JobSet and what it owns (ConfigMap, own TrainingRuntime)
        go with it (foreground deletion)."""
        ns = namespace or self.namespace
        api = self._api_of(name, ns)
        self._call("delete", f"{api.kind} {ns}/{name}", ns, self.custom.delete_namespaced_custom_object,
                   api.group, api.version, ns, api.plural, name,
                   body=k8s.V1DeleteOptions(propagation_policy="Foreground"))

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

    def _exists(self, api: JobApi, name: str, ns: str, strict: bool = True) -> bool:
        """Whether the job exists; not ``strict``: a kind the account may not read (403) counts as absent."""
        try:
            self.custom.get_namespaced_custom_object(api.group, api.version, ns, api.plural, name)
            return True
        except ApiException as exc:
            if exc.status == 404 or (exc.status == 403 and not strict):
                return False
            raise _api_error(exc, "get", f"{api.kind} {ns}/{name}", ns) from exc

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


def _runtime_name(spec: JobSpec) -> str:
    ref = spec.runtime
    return f"{ref.kind} {ref.name}" if ref.kind == "ClusterTrainingRuntime" else f"TrainingRuntime {spec.namespace}/{ref.name}"


def _runtime_missing(spec: JobSpec) -> LauncherError:
    ref, ns = spec.runtime, spec.namespace
    listing = f"kubectl get {RUNTIME_PLURALS[ref.kind]}" + ("" if ref.kind == "ClusterTrainingRuntime" else f" -n {ns}")
    return LauncherError(f"TrainJob {ns}/{spec.name}: its runtime {_runtime_name(spec)} does not exist on the cluster",
                         status=404, hint=f"{listing} lists those there are; or drop `runtime` to render a "
                                          "TrainingRuntime for this job")


_HINTS = {
    401: "the credentials were rejected: refresh them (kubectl auth whoami) or check KUBECONFIG / the context",
    403: "RBAC: the account needs create/get/list/watch/delete on pytorchjobs.kubeflow.org (or trainjobs."
         "trainer.kubeflow.org) and configmaps, get/list on pods and pods/log in namespace {ns} "
         "(kubectl auth can-i create pytorchjobs.kubeflow.org -n {ns})",
    409: "an object with this name exists: qtrain job cancel NAME --backend k8s, or choose another name",
    422: "the API server rejected the manifest: inspect it with qtrain job render SPEC",
}


def _api_error(exc: ApiException, action: str, what: str, ns: str) -> LauncherError:
    try:
        message = json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError):
        message = exc.reason or str(exc.body)
    status, hint = exc.status, _HINTS.get(exc.status)
    api = next((a for a in APIS.values() if what.startswith(f"{a.kind} ") or what.startswith(f"{a.kind}s ")), None)
    if status == 404:
        hint = (api.crd_hint if api and action in ("create", "list")
                else "qtrain job list --backend k8s shows the jobs of the namespace")
    if status == 403 and "denied the request" in message:
        # an admission webhook (Trainer's validates every TrainJob) refused the object: bad input, not RBAC
        status, hint = 422, ("its runtime must exist first: kubectl get trainingruntimes,clustertrainingruntimes"
                             if "runtimeRef" in message or "unsupported runtime" in message else _HINTS[422])
    elif status == 403:
        hint = hint.format(ns=ns)
    return LauncherError(f"cannot {action} {what}: {exc.status} {exc.reason}: {message}", hint=hint, status=status)
