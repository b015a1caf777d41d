"""``qtrain pipeline``: the whole Qwen3 recipe as one resumable Prefect pipeline, tracked in MLflow.

Examples:
    qtrain pipeline run --preset tiny                              # all eight stages on this CPU
    qtrain pipeline run --preset tiny --stages S1,S2 --root s3://bucket/runs
    qtrain pipeline run --preset tiny --backend k8s --namespace qwen3
    qtrain pipeline show --latest --json                           # each stage: status, checkpoint, MLflow run
    qtrain pipeline ls
    qtrain pipeline render --preset full --stage S3                # the PyTorchJob a stage would submit
    qtrain pipeline render --preset full --stage D --job prepare   # its data-preparation job (teacher responses)

Re-running with the same root skips every stage whose checkpoint is registered complete for the
same config hash. Prefect: set PREFECT_API_URL to report to a server (else a temporary one starts);
MLflow: --mlflow-uri or MLFLOW_TRACKING_URI (else sqlite under $QTRAIN_HOME).
"""

from __future__ import annotations

import os
import signal
from typing import Annotated

import typer

from qwen3_trainer.cli.output import (
    UsageError,
    bad_input,
    console,
    fail,
    handle_errors,
    print_json,
    print_table,
)

app = typer.Typer(help="The Qwen3 recipe as a Prefect pipeline: run, show, ls, render.", no_args_is_help=True)

RootOpt = Annotated[str | None, typer.Option("--root", help="Run root: a folder or s3://bucket/prefix (default $QTRAIN_PIPELINE_ROOT or ~/.qtrain/pipelines).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
StudentInitOpt = Annotated[str | None, typer.Option("--student-init", help="D: the student's own init (HF or DCP checkpoint, local or s3://).")]


def _params(**kw):
    from qwen3_trainer.workflows.plan import PipelineParams

    with bad_input():   # the recipe layer says "unknown preset/stage" with ValueErrors
        return PipelineParams.model_validate({k: v for k, v in kw.items() if v is not None})


@app.command("run")
@handle_errors
def run_cmd(
    preset: Annotated[str, typer.Option("--preset", "-p", help="tiny, single-gpu, full, or a recipe .yaml file.")] = "tiny",
    root: RootOpt = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="Where stage jobs run: local or k8s.")] = "local",
    stages: Annotated[str | None, typer.Option("--stages", help="Comma-separated stages to run, e.g. S1,S2 (default: all).")] = None,
    mlflow_uri: Annotated[str | None, typer.Option("--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite).")] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment.")] = "qwen3-pipeline",
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Cap every stage's steps (smoke runs).")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="k8s: namespace of the jobs.")] = None,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register each stage's HF export in the MLflow model registry.")] = True,
    student_init: StudentInitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the pipeline (skipping stages already registered complete) and print each stage's result."""
    from qwen3_trainer.platform.tracking import TrackingError
    from qwen3_trainer.workflows.lineage import Lineage, default_uri
    from qwen3_trainer.workflows.plan import preflight
    from qwen3_trainer.workflows.registry import Registry, new_pipeline_id

    if backend not in ("local", "k8s"):
        raise UsageError(f"--backend must be local or k8s, not {backend!r}")
    params = _params(preset=preset, root=root, backend=backend, stages=stages, mlflow_uri=mlflow_uri,
                     experiment=experiment, max_steps=max_steps, namespace=namespace, register_models=register,
                     student_init=student_init)
    with bad_input():   # preflight's ValueErrors are about the input: configs, root, upstream stages
        preflight(params)
    try:
        Lineage(params.mlflow_uri or default_uri(), params.experiment)
    except TrackingError as exc:
        raise UsageError(str(exc), hint="start it (scripts/run_tiny_pipeline.sh does) or pass --mlflow-uri") from None

    # a loaded 2-core machine can take longer than Prefect's default 20 s to start its temporary server
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from qwen3_trainer.workflows.flows import qwen3_pipeline

    pipeline_id = new_pipeline_id(params.preset)
    # SIGTERM (a stopped worker, `kill`) unwinds like Ctrl-C: the running stage cancels its job first
    signal.signal(signal.SIGTERM, _terminate)
    console.print(f"pipeline [bold]{pipeline_id}[/] · root {params.root} · stages {','.join(params.stages)}")
    try:
        qwen3_pipeline(params, pipeline_id=pipeline_id)
    except Exception as exc:  # noqa: BLE001 - a failed stage: one line, the record says the rest
        fail(f"pipeline {pipeline_id} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
             f"qtrain pipeline show --id {pipeline_id} --root {params.root}", code=1)
    _show(Registry(params.root).load_pipeline(pipeline_id), as_json)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@app.command("show")
@handle_errors
def show_cmd(
    root: RootOpt = None,
    latest: Annotated[bool, typer.Option("--latest", help="The most recent pipeline run (the default).")] = False,
    pipeline_id: Annotated[str | None, typer.Option("--id", help="A pipeline id from `qtrain pipeline ls`.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Each stage of a pipeline run: status, checkpoint URI, MLflow run."""
    from qwen3_trainer.workflows.registry import Registry

    registry = Registry(_params(root=root).root)
    with bad_input():   # "no pipeline runs under ROOT" / "no pipeline ID"
        record = registry.load_pipeline(pipeline_id) if pipeline_id and not latest else registry.latest()
    _show(record, as_json)


def _show(record, as_json: bool) -> None:
    stages = [{"stage": s, **r.model_dump()} for s, r in record.stages.items()]
    if as_json:
        print_json({**record.model_dump(exclude={"stages"}), "stages": stages})
        return
    console.print(f"pipeline [bold]{record.pipeline_id}[/] ({record.preset}, {record.backend}): {record.status}"
                  + (f" · MLflow {record.mlflow_url}" if record.mlflow_url else ""))
    print_table(None, ["stage", "status", "checkpoint", "MLflow run"],
                [[s["stage"], s["status"], s["checkpoint_uri"] or "", s["mlflow_run_id"] or ""] for s in stages])


@app.command("ls")
@handle_errors
def ls_cmd(root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """Pipeline runs under the root, oldest first."""
    from qwen3_trainer.workflows.registry import Registry

    runs = Registry(_params(root=root).root).pipelines()
    if as_json:
        print_json([r.model_dump(exclude={"stages"}) | {"stages": {s: v.status for s, v in r.stages.items()}}
                    for r in runs])
        return
    print_table(None, ["pipeline", "preset", "status", "stages done", "created"],
                [[r.pipeline_id, r.preset, r.status,
                  sum(v.status in ("completed", "skipped") for v in r.stages.values()), r.created_at] for r in runs])


@app.command("render")
@handle_errors
def render_cmd(
    preset: Annotated[str, typer.Option("--preset", "-p", help="tiny, single-gpu, full, or a recipe .yaml file.")] = "full",
    stage: Annotated[str, typer.Option("--stage", "-s", help="The stage to render.")] = "S1",
    job: Annotated[str, typer.Option("--job", "-j", help="Which of the stage's jobs: train, prepare or eval.")] = "train",
    root: Annotated[str, typer.Option("--root", help="Run root the config points at.")] = "s3://qwen3-trainer/pipelines",
    backend: Annotated[str, typer.Option("--backend", "-b", help="local or k8s (k8s reads $QTRAIN_CLUSTER_CONFIG).")] = "k8s",
    student_init: StudentInitOpt = None,
) -> None:
    """Print the PyTorchJob (+ ConfigMap) a stage's job submits, with placeholder upstream checkpoints."""
    from qwen3_trainer.platform.jobs import render
    from qwen3_trainer.recipe.graph import GRAPH, parse_stages
    from qwen3_trainer.recipe.jobs import job_spec
    from qwen3_trainer.workflows.plan import plan, preset_of, validate_configs
    from qwen3_trainer.workflows.stage_job import cluster_config

    with bad_input():
        (name,) = parse_stages(stage)[:1] or [stage]
    if stage.upper() != name:
        raise UsageError(f"--stage takes one stage, not {stage!r}")
    if job not in ("train", "prepare", "eval"):
        raise UsageError(f"--job must be train, prepare or eval, not {job!r}")
    params = _params(preset=preset, root=root, backend=backend, stages=[name], student_init=student_init)
    with bad_input():
        plans = plan(params)
        validate_configs(params, plans)
    p, spec = plans[name], plans[name].spec
    the_preset = preset_of(params)
    init = (f"{params.root}/stages/<{p.upstream}>/ckpt/step-N" if p.upstream
            else the_preset.student_init or "<student-init>" if GRAPH[name].role == "student" else None)
    teacher = f"{params.root}/stages/<{p.teacher}>/ckpt/step-N" if p.teacher else None
    cfg = {"train": lambda: p.train_config(params.root, init=init, teacher=teacher, dump=f"/tmp/qtrain/{name}-{p.config_hash}"),
           "prepare": lambda: p.prepare_config(params.root, init=init, teacher=teacher),
           "eval": lambda: p.eval_config(params.root)}[job]()
    if cfg is None:
        raise UsageError(f"stage {name} of preset {the_preset.name} has no {job} job")
    with bad_input():  # the cluster contract: node pools, GPUs per node, resources that fit
        js = job_spec(p, the_preset, cfg, kind=job, backend=backend, pipeline_id="render",
                      cluster=cluster_config(backend), remote_storage=root.startswith("s3://"))
    res = js.resources
    who = (f"student {spec.flavor} (init {init}) · teacher {the_preset.teacher_flavor} ({p.teacher})"
           if GRAPH[name].role == "student" else f"{spec.flavor} (from {p.upstream or 'scratch'})")
    typer.echo(f"# stage {name} ({GRAPH[name].flow}) · {job} job · preset {the_preset.name} · {who}\n"
               f"# {js.nodes} node(s) x {js.gpus_per_node or 'no'} GPU(s) · objective {spec.objective.name} · "
               f"layout {_layout(spec.layout)} · config hash {p.config_hash}\n"
               f"# per pod: cpu {res.cpu}, memory {res.memory}, /dev/shm {res.shm}")
    typer.echo(render(js).to_yaml(), nl=False)


def _layout(layout) -> str:
    """The degrees that differ from one process ('fsdp' when only dp_shard is left to the world size)."""
    shown = [f"{k}{v}" for k, v in layout.model_dump().items() if k != "dp_shard" and v != 1]
    return " x ".join(["fsdp", *shown])
