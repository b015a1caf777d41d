"""``qtrain job``: render, submit and follow training jobs, locally (default) or on Kubernetes.

Examples:
    qtrain job render k8s/jobs/qwen3-30b-a3b-4x8.yaml              # the PyTorchJob YAML (+ ConfigMap)
    qtrain job render k8s/jobs/qwen3-30b-a3b-4x8.yaml --kind TrainJob   # Kubeflow Trainer v2 TrainJob instead
    qtrain job submit k8s/jobs/debugmodel-cpu.yaml --wait          # local processes, live display
    qtrain job submit k8s/jobs/qwen3-30b-a3b-4x8.yaml --backend k8s
    qtrain job submit k8s/jobs/debugmodel-cpu.yaml --replace       # rerun: replaces the finished job's record
    qtrain job status qwen3-debugmodel-cpu --json
    qtrain job logs qwen3-debugmodel-cpu --replica worker --index 0 -f
    qtrain job list -l qwen3-trainer.io/run-id=exp-42
    qtrain job cancel qwen3-debugmodel-cpu
"""

from __future__ import annotations

import functools
import re
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from qwen3_trainer.cli.output import (
    UsageError,
    bad_input,
    console,
    fail,
    handle_errors,
    print_json,
    print_table,
)

app = typer.Typer(help="Training jobs: render, submit, status, logs, cancel, list.", no_args_is_help=True)

METRICS_LINE = re.compile(r"\bstep\b", re.IGNORECASE)
STATE_STYLE = {"Succeeded": "green", "Failed": "red", "Restarting": "yellow", "Running": "cyan", "Suspended": "yellow"}


class Backend(StrEnum):
    local = "local"
    k8s = "k8s"


class Kind(StrEnum):
    PyTorchJob = "PyTorchJob"
    TrainJob = "TrainJob"


BackendOpt = Annotated[Backend, typer.Option("--backend", "-b", help="Where the job runs: local processes or Kubernetes.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="k8s: namespace (default: the kubeconfig context's).")]
KubeconfigOpt = Annotated[str | None, typer.Option("--kubeconfig", help="k8s: kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="k8s: kubeconfig context.")]
KindOpt = Annotated[Kind | None, typer.Option(
    "--kind", "-k", help="Kubeflow API: PyTorchJob (training operator v1.9) or TrainJob (Trainer v2); "
                         "default: the spec's `kind`, else PyTorchJob.")]


def _launcher(backend: Backend, namespace: str | None = None, kubeconfig: str | None = None, context: str | None = None):
    from qwen3_trainer.platform.jobs import get_launcher

    if backend is Backend.k8s:
        return get_launcher("k8s", namespace=namespace, kubeconfig=kubeconfig, context=context)
    return get_launcher("local")


TRAINER_ENTRY = ["qwen3_trainer.cli.main", "train"]   # the tail of JobSpec.entrypoint that runs `qtrain train`


def load_checked(path: Path, kind: Kind | None = None):
    """The JobSpec at ``path`` (as ``kind``, when given) and its folder, after the checks of ``qtrain
    train`` that need nothing outside the documents (fields, degrees against nodes x processes, steps,
    data section) on the training config it embeds or names. A config given as a URI is read, and
    checked, by the trainer."""
    from pydantic import ValidationError

    from qwen3_trainer.platform.jobs import load_spec, render
    from qwen3_trainer.platform.jobs.spec import URI, SpecError

    spec, base = load_spec(path, kind=kind.value if kind else None)
    with bad_input(FileNotFoundError, ValueError):   # render reads a `train` file: missing, not YAML/TOML
        render(spec, base)
    if list(spec.entrypoint[-2:]) != TRAINER_ENTRY or (isinstance(spec.train, str) and URI.match(spec.train)):
        return spec, base
    from qwen3_trainer.platform.train.run import PreflightError, check_config, read_config
    from qwen3_trainer.platform.validation import describe

    where = f"{path}: train"
    ranks = f"{spec.nodes} node(s) x {spec.procs_per_node} process(es) = {spec.world_size} rank(s)"
    try:
        if isinstance(spec.train, str):
            config = (base / spec.train).resolve()
            where = f"{path}: train ({config})"
            if not config.is_file():
                raise SpecError(f"{where}: config file not found")
            check_config(read_config(str(config)).model_dump(), spec.world_size)
        else:
            check_config(spec.train, spec.world_size)
    except ValidationError as exc:
        raise SpecError(f"{where}: {describe(exc)}") from None
    except PreflightError as exc:
        err = SpecError(f"{where}: {exc}")
        err.hint = f"the job runs {ranks}" if "world size" in str(exc) else None
        raise err from None
    return spec, base


def _launcher_errors(fn):
    """LauncherError -> one line + hint; exit 1 for auth/server trouble, 2 for what the user can fix."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from qwen3_trainer.platform.jobs.status import LauncherError

        try:
            return fn(*args, **kwargs)
        except LauncherError as exc:
            code = 1 if exc.status in (401, 403) or (exc.status or 0) >= 500 else 2
            fail(str(exc), exc.hint, code=code)

    return wrapper


@app.command("render")
@handle_errors
def render_cmd(
    spec: Annotated[Path, typer.Argument(help="JobSpec YAML file.")],
    kind: KindOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the Kubernetes objects a JobSpec becomes: ConfigMap + kubeflow.org/v1 PyTorchJob, or with
    --kind TrainJob ConfigMap + trainer.kubeflow.org/v1alpha1 TrainJob (+ the TrainingRuntime it
    references, unless the spec names one in `runtime`)."""
    from qwen3_trainer.platform.jobs import render

    job_spec, base = load_checked(spec, kind)
    rendered = render(job_spec, base)
    if as_json:
        print_json(rendered.objects)
    else:
        sys.stdout.write(rendered.to_yaml())


@app.command("submit")
@handle_errors
@_launcher_errors
def submit_cmd(
    spec: Annotated[Path, typer.Argument(help="JobSpec YAML file.")],
    backend: BackendOpt = Backend.local,
    kind: KindOpt = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait until the job ends, with a live display.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this many seconds.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a finished job of the same name (its record and logs; on k8s the PyTorchJob or TrainJob).")] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job. Exit code with --wait: 0 Succeeded, 1 Failed. A job name in use is refused (--replace)."""
    job_spec, base = load_checked(spec, kind)  # an invalid spec or config stops here, before any API call
    launcher = _launcher(backend, job_spec.namespace, kubeconfig, context)
    handle = launcher.submit(job_spec, base_dir=base, replace=replace)
    if not wait:
        if as_json:
            print_json(handle.__dict__)
        else:
            console.print(f"submitted [bold]{handle.name}[/] ({handle.backend}, run id {handle.run_id}); "
                          f"follow with: qtrain job status {handle.name} -b {handle.backend}", highlight=False)
        return
    final = _wait_live(launcher, handle.name, timeout, quiet=as_json)
    if as_json:
        print_json(final.summary())
    raise typer.Exit(0 if final.state == "Succeeded" else 1)


@app.command("status")
@handle_errors
@_launcher_errors
def status_cmd(
    name: Annotated[str, typer.Argument(help="Job name.")],
    backend: BackendOpt = Backend.local,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A job's state, conditions and replicas."""
    status = _launcher(backend, namespace, kubeconfig, context).status(name)
    if as_json:
        print_json(status.summary())
        return
    console.print(_status_view(status, None))
    for c in status.conditions:
        console.print(f"  {c.last_transition_time}  {c.type:<10} {c.status:<5} {c.reason}: {c.message}", highlight=False)


@app.command("logs")
@handle_errors
@_launcher_errors
def logs_cmd(
    name: Annotated[str, typer.Argument(help="Job name.")],
    replica: Annotated[str, typer.Option("--replica", "-r", help="master, worker or (TrainJob) node.")] = "master",
    index: Annotated[int, typer.Option("--index", "-i", help="Replica index (worker-<i>; node-<i>, where master is node 0 and worker i node i+1).")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the replica ends.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    backend: BackendOpt = Backend.local,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Print (or follow) the log of the master or of one worker (a TrainJob's: of one node)."""
    if replica.lower() not in ("master", "worker", "node"):
        raise UsageError(f"--replica must be master, worker or node, not {replica!r}")
    launcher = _launcher(backend, namespace, kubeconfig, context)
    for line in launcher.logs(name, replica=replica, index=index, follow=follow, tail=tail):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


@app.command("cancel")
@handle_errors
@_launcher_errors
def cancel_cmd(
    name: Annotated[str, typer.Argument(help="Job name.")],
    backend: BackendOpt = Backend.local,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Stop a job: local processes are killed (none survive), a PyTorchJob or TrainJob is deleted."""
    _launcher(backend, namespace, kubeconfig, context).cancel(name)
    console.print(f"cancelled {name}", highlight=False)


@app.command("list")
@handle_errors
@_launcher_errors
def list_cmd(
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE label filter (repeatable).")] = None,
    backend: BackendOpt = Backend.local,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs (matching the labels), with state, replicas and restarts."""
    selector = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        selector[key] = value
    jobs = _launcher(backend, namespace, kubeconfig, context).list(selector or None)
    if as_json:
        print_json([j.summary() for j in jobs])
        return
    print_table(None, ["name", "state", "replicas", "restarts", "run id", "started"],
                [[j.name, j.state, len(j.replicas), j.restarts, j.run_id or "-", j.start_time or "-"] for j in jobs])


# -- live display -----------------------------------------------------------------------------
def _status_view(status, metrics: str | None):
    style = STATE_STYLE.get(status.state, "white")
    head = Text.assemble((f"{status.name}", "bold"), f" ({status.backend}) ", (status.state, f"bold {style}"),
                         f"  restarts {status.restarts}")
    table = Table(box=None, pad_edge=False)
    for col in ("replica", "phase", "restarts", "exit"):
        table.add_column(col)
    for r in status.replicas:
        table.add_row(r.name, Text(r.phase, style=STATE_STYLE.get(r.phase, "white")), str(r.restarts),
                      "-" if r.exit_code is None else str(r.exit_code))
    parts = [head, table]
    if status.message:
        parts.append(Text(status.message, style="dim"))
    if metrics:
        parts.append(Text(f"last metrics: {metrics}"))
    return Group(*parts)


def _last_metrics(launcher, name: str) -> str | None:
    try:
        lines = list(launcher.logs(name, tail=50))
    except Exception:   # no pod yet, or a log read failing mid-run: the display simply has no metrics
        return None
    return next((line for line in reversed(lines) if METRICS_LINE.search(line)), None)


def _wait_live(launcher, name: str, timeout: float | None, quiet: bool):
    """Wait for the job; on a terminal, a live table of replicas and the master's last metrics line;
    otherwise one line per state change. Ctrl-C stops watching, not the job."""
    holder = {"status": None, "metrics": None, "read_at": 0.0}

    def metrics():
        if time.monotonic() - holder["read_at"] > 2.0:
            holder["metrics"] = _last_metrics(launcher, name)
            holder["read_at"] = time.monotonic()
        return holder["metrics"]

    try:
        if quiet or not console.is_terminal:
            def on_update(s):
                if not quiet:
                    console.print(f"{s.name}: {s.state} (restarts {s.restarts}) {s.message}", highlight=False)
            final = launcher.wait(name, timeout=timeout, on_update=on_update)
        else:
            def view():       # called by Live on every refresh: the metrics line stays fresh
                s = holder["status"]
                return _status_view(s, metrics()) if s else Text(f"waiting for {name}...")

            with Live(console=console, refresh_per_second=2, get_renderable=view) as live:
                final = launcher.wait(name, timeout=timeout, on_update=lambda s: holder.update(status=s))
                holder["read_at"] = 0.0
                live.refresh()
    except KeyboardInterrupt:
        fail(f"stopped watching {name}; the job keeps running",
             f"qtrain job status {name} -b {launcher.backend}, or qtrain job cancel {name}", code=130)
    if not quiet and not console.is_terminal:
        last = _last_metrics(launcher, name)
        if last:
            console.print(f"last metrics: {last}", highlight=False)
    return final
