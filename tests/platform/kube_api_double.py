"""A small in-process HTTP double of the Kubernetes API, for the k8s launcher's tests.

It speaks real HTTP (``http.server``, one thread per request) to the real ``kubernetes`` client, so
the launcher's requests, serialization, streaming and error handling run as they do against a
cluster. What it emulates, exactly:

- ``kubeflow.org/v1`` PyTorchJobs under ``/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs`` and
  ``trainer.kubeflow.org/v1alpha1`` TrainJobs under ``/apis/trainer.kubeflow.org/v1alpha1/namespaces/
  {ns}/trainjobs``: create (409 AlreadyExists, 422 Invalid for a bad name or no
  ``spec.pytorchReplicaSpecs`` / ``spec.runtimeRef``; a TrainJob whose runtime does not exist is
  refused with 403 as Trainer's validating admission webhook refuses it), get, list with
  ``labelSelector`` and ``fieldSelector=metadata.name=…``, delete (cascading to the job's pods and to
  ConfigMaps and TrainingRuntimes whose ownerReferences name it), and **watch** (``?watch=true``):
  chunked JSON lines ``{"type": ADDED|MODIFIED|DELETED, "object": …}``, starting with ADDED for
  current objects (or after ``resourceVersion``), ending at ``timeoutSeconds``; ``served`` lists the
  job resources the cluster has (the others answer 404, as without their CRD);
- TrainingRuntimes (namespaced: create, get, merge-patch, delete) and ClusterTrainingRuntimes
  (cluster-scoped get; ``forbid_cluster_scope`` answers 403, as to an account with a namespaced Role);
- core/v1 ConfigMaps (create, get, merge-patch, delete) and Pods (list with ``labelSelector``:
  ``k=v``, ``k!=v``, ``k``; read ``/log`` with ``tailLines`` and ``follow``: streams new lines until
  the pod is Succeeded/Failed or deleted);
- ``GET /version``; bearer-token authentication (401), namespaces marked forbidden (403), and errors
  injected for the next matching request (any code, with a Kubernetes ``Status`` body).

What it does not emulate: the training operator and Trainer themselves (no controller runs; a test
drives the job with ``operator_start`` / ``trainer_start`` / ``set_condition`` / ``set_pod`` /
``append_log`` the way the controllers and the kubelet would), admission/OpenAPI schema validation
beyond the runtime check, strategic-merge semantics beyond a JSON merge
patch, resourceVersion conflicts and 410 Gone, other kinds and API groups, TLS, and list paging.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

JOB_PATH = re.compile(r"^/apis/(?:kubeflow\.org/v1|trainer\.kubeflow\.org/v1alpha1)/namespaces/([^/]+)/"
                      r"(pytorchjobs|trainjobs|trainingruntimes)(?:/([^/]+))?$")
CLUSTER_RUNTIME_PATH = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/clustertrainingruntimes(?:/([^/]+))?$")
JOBS = ("pytorchjobs", "trainjobs")
JOB_POD_LABELS = ("training.kubeflow.org/job-name", "jobset.sigs.k8s.io/jobset-name")
CORE_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/(configmaps|pods)(?:/([^/]+))?(/log)?$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "AlreadyExists",
           422: "Invalid", 500: "InternalError"}


def status_body(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": REASONS.get(code, "Unknown"), "code": code}


def matches(labels: dict, selector: str | None) -> bool:
    for term in filter(None, (selector or "").split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


class KubeApiDouble:
    def __init__(self, token: str | None = None):
        self.token = token
        self.objects: dict[tuple[str, str, str], dict] = {}      # (plural, ns, name) -> object
        self.logs: dict[tuple[str, str], str] = {}                # (ns, pod) -> log text
        self.events: list[tuple[int, str, dict, str]] = []        # job watch history: rv, type, object, plural
        self.served = set(JOBS)                                   # job resources whose CRD is installed
        self.forbid_cluster_scope = False
        self.requests: list[tuple[str, str]] = []                 # (method, path) seen
        self.forbidden_namespaces: set[str] = set()
        self._injected: list[tuple[str, str, int, str]] = []
        self._rv = 0
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self.stopping = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self, path, namespace: str = "default", token: str | None = None) -> str:
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "double",
               "clusters": [{"name": "double", "cluster": {"server": self.url}}],
               "users": [{"name": "u", "user": {"token": token or self.token or "none"}}],
               "contexts": [{"name": "double", "context": {"cluster": "double", "user": "u", "namespace": namespace}}]}
        path.write_text(json.dumps(cfg))
        return str(path)

    # -- test-side control: what the operator and the kubelet would do -----------------------
    def inject_error(self, method: str, path_contains: str, code: int, message: str) -> None:
        self._injected.append((method, path_contains, code, message))

    def get(self, plural: str, ns: str, name: str) -> dict | None:
        with self._cond:
            obj = self.objects.get((plural, ns, name))
            return copy.deepcopy(obj) if obj else None

    def add_cluster_runtime(self, name: str) -> None:
        """A ClusterTrainingRuntime, as Trainer's manifests install ``torch-distributed``."""
        self._put("clustertrainingruntimes", "", {"apiVersion": "trainer.kubeflow.org/v1alpha1",
                                                  "kind": "ClusterTrainingRuntime", "metadata": {"name": name}})

    def trainer_start(self, ns: str, name: str) -> list[str]:
        """Create the node pods Trainer's JobSet would (Pending, names with a random suffix, the JobSet's
        labels), from the TrainJob and its runtime as Trainer merges them."""
        from qwen3_trainer.platform.jobs.trainjob_pods import node_plan

        job = self.get("trainjobs", ns, name)
        ref = job["spec"]["runtimeRef"]
        runtime = self.get("trainingruntimes", ns, ref["name"]) if ref.get("kind") == "TrainingRuntime" else None
        plan = node_plan(job, runtime)
        pods = []
        for i in range(plan.nodes):
            pod = f"{name}-node-0-{i}-{uuid.uuid4().hex[:5]}"
            labels = {**plan.template["metadata"].get("labels", {}), "jobset.sigs.k8s.io/jobset-name": name,
                      "jobset.sigs.k8s.io/replicatedjob-name": "node", "jobset.sigs.k8s.io/job-index": "0",
                      "batch.kubernetes.io/job-completion-index": str(i)}
            self._put("pods", ns, {"apiVersion": "v1", "kind": "Pod",
                                   "metadata": {"name": pod, "namespace": ns, "labels": labels},
                                   "spec": copy.deepcopy(plan.template["spec"]), "status": {"phase": "Pending"}})
            pods.append(pod)
        self.set_condition(ns, name, "Created", "JobsCreationSucceeded", "succeeded to create Jobs")
        return pods

    def operator_start(self, ns: str, name: str) -> list[str]:
        """Create the pods the operator would (Pending), named and labelled as it names them."""
        job = self.get("pytorchjobs", ns, name)
        pods = []
        for rtype, rspec in job["spec"]["pytorchReplicaSpecs"].items():
            for i in range(rspec["replicas"]):
                pod = f"{name}-{rtype.lower()}-{i}"
                labels = {**rspec["template"]["metadata"].get("labels", {}),
                          "training.kubeflow.org/job-name": name, "training.kubeflow.org/operator-name": "pytorchjob-controller",
                          "training.kubeflow.org/replica-type": rtype.lower(), "training.kubeflow.org/replica-index": str(i)}
                if rtype == "Master":
                    labels["training.kubeflow.org/job-role"] = "master"
                self._put("pods", ns, {"apiVersion": "v1", "kind": "Pod",
                                       "metadata": {"name": pod, "namespace": ns, "labels": labels},
                                       "spec": rspec["template"]["spec"], "status": {"phase": "Pending"}})
                pods.append(pod)
        self.set_condition(ns, name, "Created", "PyTorchJobCreated", f"PyTorchJob {name} is created.")
        return pods

    def set_condition(self, ns: str, name: str, type_: str, reason: str, message: str) -> None:
        """The controller's condition update (a TrainJob's types: Created, Suspended, Complete, Failed)."""
        with self._cond:
            plural = next(p for p in JOBS if (p, ns, name) in self.objects)
            job = copy.deepcopy(self.objects[(plural, ns, name)])
            conds = job.setdefault("status", {}).setdefault("conditions", [])
            for c in conds:
                if c["type"] in ("Running", "Restarting") and type_ in ("Running", "Restarting", "Succeeded", "Failed"):
                    c["status"] = "False"
            conds[:] = [c for c in conds if c["type"] != type_]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            conds.append({"type": type_, "status": "True", "reason": reason, "message": message,
                          "lastUpdateTime": stamp, "lastTransitionTime": stamp})
            if type_ == "Running":
                job["status"].setdefault("startTime", stamp)
            if type_ in ("Succeeded", "Complete", "Failed"):
                job["status"]["completionTime"] = stamp
            self._put(plural, ns, job)

    def set_pod(self, ns: str, pod: str, phase: str, exit_code: int | None = None, restarts: int = 0) -> None:
        with self._cond:
            obj = copy.deepcopy(self.objects[("pods", ns, pod)])
            state = {"terminated": {"exitCode": exit_code}} if exit_code is not None else {"running": {}}
            container = obj["spec"]["containers"][0]
            image = container.get("image", "")
            obj["status"] = {"phase": phase, "containerStatuses": [
                {"name": container["name"], "image": image, "imageID": f"{image}@sha256:{'0' * 64}",
                 "restartCount": restarts, "state": state, "ready": phase == "Running"}]}
            self._put("pods", ns, obj)
            job = obj["metadata"].get("labels", {}).get("jobset.sigs.k8s.io/jobset-name")
            if job and ("trainjobs", ns, job) in self.objects:
                self._count_nodes(ns, job)

    def _count_nodes(self, ns: str, name: str) -> None:
        """Trainer's status.jobsStatus follows its pods, so a TrainJob watch sees every pod change."""
        pods = [o for (p, n, _), o in self.objects.items() if p == "pods" and n == ns
                and o["metadata"]["labels"].get("jobset.sigs.k8s.io/jobset-name") == name]
        phases = [o["status"].get("phase") for o in pods]
        job = copy.deepcopy(self.objects[("trainjobs", ns, name)])
        job.setdefault("status", {})["jobsStatus"] = [{
            "name": "node", "ready": phases.count("Running"), "succeeded": phases.count("Succeeded"),
            "failed": phases.count("Failed"), "active": phases.count("Running") + phases.count("Pending"),
            "suspended": 0}]
        self._put("trainjobs", ns, job)

    def append_log(self, ns: str, pod: str, text: str) -> None:
        with self._cond:
            self.logs[(ns, pod)] = self.logs.get((ns, pod), "") + text
            self._cond.notify_all()

    # -- storage ------------------------------------------------------------------------------
    def _put(self, plural: str, ns: str, obj: dict, event: str | None = None) -> dict:
        with self._cond:
            key = (plural, ns, obj["metadata"]["name"])
            event = event or ("MODIFIED" if key in self.objects else "ADDED")
            self._rv += 1
            meta = obj["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            meta["resourceVersion"] = str(self._rv)
            self.objects[key] = obj
            if plural in JOBS:
                self.events.append((self._rv, event, copy.deepcopy(obj), plural))
            self._cond.notify_all()
            return copy.deepcopy(obj)

    def _delete(self, plural: str, ns: str, name: str) -> dict:
        with self._cond:
            obj = self.objects.pop((plural, ns, name))
            self._rv += 1
            if plural in JOBS:
                self.events.append((self._rv, "DELETED", copy.deepcopy(obj), plural))
                uid = obj["metadata"]["uid"]
                for key in list(self.objects):
                    o = self.objects[key]
                    owned = any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", []))
                    labels = o["metadata"].get("labels", {})
                    mine = any(labels.get(label) == name for label in JOB_POD_LABELS)
                    if key[1] == ns and (owned or (key[0] == "pods" and mine)):
                        del self.objects[key]
            self._cond.notify_all()
            return obj



def wait_beside(launcher, name: str, *workers, timeout: float = 30):
    """Run ``workers`` (an operator emulation, a log follower) on threads while ``launcher.wait`` watches
    job ``name``; returns (final status, the states it reported on the way)."""
    threads = [threading.Thread(target=w) for w in workers]
    for t in threads:
        t.start()
    states: list[str] = []
    final = launcher.wait(name, timeout=timeout, on_update=lambda s: states.append(s.state))
    for t in threads:
        t.join()
    return final, states

def _handler(api: KubeApiDouble):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"     # one request per connection; streams switch to chunked 1.1

        def log_message(self, *args):     # quiet
            pass

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_DELETE(self):
            self._serve("DELETE")

        def do_PATCH(self):
            self._serve("PATCH")

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _start_stream(self, content_type: str) -> None:
            """Chunked HTTP/1.1, as the API server streams watches and followed logs (a client reads
            each chunk as it comes)."""
            self.protocol_version = "HTTP/1.1"
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()

        def _chunk(self, data: bytes) -> None:
            if data:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        def _end_stream(self) -> None:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _error(self, code: int, message: str) -> None:
            self._send(code, status_body(code, message))

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            api.requests.append((method, url.path))
            if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                return self._error(401, "Unauthorized")
            for i, (m, part, code, message) in enumerate(api._injected):
                if m == method and part in url.path:
                    del api._injected[i]
                    return self._error(code, message)
            if url.path == "/version":
                return self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-double"})
            job, core = JOB_PATH.match(url.path), CORE_PATH.match(url.path)
            cluster_runtime = CLUSTER_RUNTIME_PATH.match(url.path)
            if cluster_runtime:
                return self._cluster_runtime(method, cluster_runtime.group(1))
            ns = (job or core).group(1) if (job or core) else None
            if ns in api.forbidden_namespaces:
                return self._error(403, f'{url.path} is forbidden: User "system:serviceaccount:ci:runner" '
                                        f'cannot {method.lower()} resource in the namespace "{ns}"')
            if job and job.group(2) == "trainingruntimes":
                return self._core(method, ns, "trainingruntimes", job.group(3), False, q)
            if job and job.group(2) in api.served:
                return self._jobs(method, ns, job.group(2), job.group(3), q)
            if core:
                return self._core(method, ns, core.group(2), core.group(3), bool(core.group(4)), q)
            return self._error(404, "the server could not find the requested resource")

        def _jobs(self, method, ns, plural, name, q):
            key = (plural, ns, name)
            group, kind = ("kubeflow.org", "PyTorchJob") if plural == "pytorchjobs" else ("trainer.kubeflow.org", "TrainJob")
            required = "pytorchReplicaSpecs" if plural == "pytorchjobs" else "runtimeRef"
            if name is None and method == "POST":
                obj = self._body()
                n = obj.get("metadata", {}).get("name", "")
                if not DNS1123.match(n) or not obj.get("spec", {}).get(required):
                    return self._error(422, f'{kind}.{group} "{n}" is invalid: metadata.name or '
                                            f"spec.{required}: Invalid value")
                if plural == "trainjobs":
                    denied = self._missing_runtime(ns, obj["spec"]["runtimeRef"])
                    if denied:
                        return self._error(403, denied)
                if (plural, ns, n) in api.objects:
                    return self._error(409, f'{plural}.{group} "{n}" already exists')
                obj["metadata"]["namespace"] = ns
                return self._send(201, api._put(plural, ns, obj))
            if name is None and method == "GET":
                if q.get("watch") in ("true", "1", "True"):
                    return self._watch(ns, plural, q)
                items = [copy.deepcopy(o) for (p, n_, _), o in sorted(api.objects.items())
                         if p == plural and n_ == ns and self._selected(o, q)]
                version = "v1" if plural == "pytorchjobs" else "v1alpha1"
                return self._send(200, {"apiVersion": f"{group}/{version}", "kind": f"{kind}List",
                                        "metadata": {"resourceVersion": str(api._rv)}, "items": items})
            if key not in api.objects:
                return self._error(404, f'{plural}.{group} "{name}" not found')
            if method == "GET":
                return self._send(200, api.get(plural, ns, name))
            if method == "DELETE":
                api._delete(plural, ns, name)
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                                        "details": {"name": name, "group": group, "kind": plural}})
            return self._error(405, f"{method} not supported")

        def _missing_runtime(self, ns, ref) -> str | None:
            """Trainer's validating webhook: the referenced runtime must exist (its message, as it words it)."""
            kind = ref.get("kind", "ClusterTrainingRuntime")
            key = ("trainingruntimes", ns, ref["name"]) if kind == "TrainingRuntime" else \
                ("clustertrainingruntimes", "", ref["name"])
            if key in api.objects:
                return None
            return (f'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
                    f'spec.runtimeRef: Invalid value: {{"name": "{ref["name"]}", "kind": "{kind}"}}: '
                    f'{key[0]}.trainer.kubeflow.org "{ref["name"]}" not found: specified {kind[0].lower() + kind[1:]} '
                    f"must be created before the TrainJob is created")

        def _cluster_runtime(self, method, name):
            if api.forbid_cluster_scope:
                return self._error(403, f'clustertrainingruntimes.trainer.kubeflow.org "{name}" is forbidden: User '
                                        '"system:serviceaccount:ci:runner" cannot get resource at the cluster scope')
            if method != "GET" or name is None:
                return self._error(405, f"{method} not supported")
            if ("clustertrainingruntimes", "", name) not in api.objects:
                return self._error(404, f'clustertrainingruntimes.trainer.kubeflow.org "{name}" not found')
            return self._send(200, api.get("clustertrainingruntimes", "", name))

        def _selected(self, obj, q) -> bool:
            field = q.get("fieldSelector", "")
            if field.startswith("metadata.name=") and obj["metadata"]["name"] != field.split("=", 1)[1]:
                return False
            return matches(obj["metadata"].get("labels", {}), q.get("labelSelector"))

        def _watch(self, ns, plural, q):
            self._start_stream("application/json")
            deadline = time.monotonic() + float(q.get("timeoutSeconds", 30))
            with api._cond:
                if "resourceVersion" in q and q["resourceVersion"] not in ("", "0"):
                    since = int(q["resourceVersion"])
                    pending = []
                else:
                    since = api._rv
                    pending = [("ADDED", copy.deepcopy(o)) for (p, n_, _), o in sorted(api.objects.items())
                               if p == plural and n_ == ns and self._selected(o, q)]
            while True:
                try:
                    for kind, obj in pending:
                        self._chunk((json.dumps({"type": kind, "object": obj}) + "\n").encode())
                except (BrokenPipeError, ConnectionResetError):
                    return
                with api._cond:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or api.stopping:
                        return self._end_stream()
                    fresh = [e for e in api.events if e[0] > since]
                    if not fresh:
                        api._cond.wait(timeout=min(remaining, 0.5))
                        fresh = [e for e in api.events if e[0] > since]
                    pending = [(kind, copy.deepcopy(obj)) for rv, kind, obj, p in fresh
                               if p == plural and obj["metadata"]["namespace"] == ns and self._selected(obj, q)]
                    since = max([since, *(e[0] for e in fresh)])

        def _core(self, method, ns, plural, name, is_log, q):
            key = (plural, ns, name)
            if is_log:
                return self._log(ns, name, q)
            if name is None and method == "POST" and plural in ("configmaps", "trainingruntimes"):
                obj = self._body()
                if (plural, ns, obj["metadata"]["name"]) in api.objects:
                    return self._error(409, f'{plural} "{obj["metadata"]["name"]}" already exists')
                obj["metadata"]["namespace"] = ns
                return self._send(201, api._put(plural, ns, obj))
            if name is None and method == "GET":
                items = [copy.deepcopy(o) for (p, n_, _), o in sorted(api.objects.items())
                         if p == plural and n_ == ns and matches(o["metadata"].get("labels", {}), q.get("labelSelector"))]
                return self._send(200, {"apiVersion": "v1", "kind": plural.title()[:-1] + "List",
                                        "metadata": {"resourceVersion": str(api._rv)}, "items": items})
            if key not in api.objects:
                return self._error(404, f'{plural} "{name}" not found')
            if method == "GET":
                return self._send(200, api.get(plural, ns, name))
            if method == "DELETE":
                api._delete(plural, ns, name)
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            if method == "PATCH":
                merged = _merge(api.get(plural, ns, name), self._body())
                return self._send(200, api._put(plural, ns, merged))
            return self._error(405, f"{method} not supported")

        def _log(self, ns, pod, q):
            if ("pods", ns, pod) not in api.objects:
                return self._error(404, f'pods "{pod}" not found')
            text = api.logs.get((ns, pod), "")
            if q.get("follow") not in ("true", "True", "1"):
                lines = text.splitlines(keepends=True)
                if "tailLines" in q:
                    lines = lines[-int(q["tailLines"]):] if int(q["tailLines"]) else []
                data = "".join(lines).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return None
            self._start_stream("text/plain")
            sent = 0
            while True:
                with api._cond:
                    text = api.logs.get((ns, pod), "")
                    pod_obj = api.objects.get(("pods", ns, pod))
                    done = pod_obj is None or pod_obj.get("status", {}).get("phase") in ("Succeeded", "Failed")
                    if len(text) == sent and not done and not api.stopping:
                        api._cond.wait(timeout=0.5)
                        continue
                try:
                    self._chunk(text[sent:].encode())
                except (BrokenPipeError, ConnectionResetError):
                    return None
                sent = len(text)
                if done or api.stopping:
                    return self._end_stream()

    return Handler


def _merge(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out
