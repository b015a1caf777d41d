"""``qtrain recipe``: the presets of the Qwen3 recipe, stage by stage (the one place stage knobs live).

Examples:
    qtrain recipe ls                                  # tiny, single-gpu, full: flavors and GPUs per stage
    qtrain recipe show full --stage D                 # one stage's spec (YAML)
    qtrain recipe show single-gpu > my-recipe.yaml    # a whole preset to edit ...
    qtrain pipeline run --preset my-recipe.yaml       # ... and run (a changed knob: a new config hash)
"""

from __future__ import annotations

from typing import Annotated

import typer

from qwen3_trainer.cli.output import bad_input, console, handle_errors, print_json, print_table

app = typer.Typer(help="The recipe's presets: ls, show.", no_args_is_help=True)


@app.command("ls")
@handle_errors
def ls_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """Every preset: teacher and student flavors, and per stage nodes x GPUs and steps."""
    from qwen3_trainer.recipe.graph import STAGES
    from qwen3_trainer.recipe.presets import PRESETS

    rows = []
    for p in PRESETS.values():
        scale = {s: f"{p.stages[s].scale.nodes}x{p.stages[s].scale.gpus_per_node or 'cpu'}" for s in STAGES}
        rows.append({"preset": p.name, "teacher": p.teacher_flavor, "student": p.student_flavor,
                     "scale": scale, "steps": {s: p.stages[s].training.steps for s in STAGES},
                     "description": p.description})
    if as_json:
        print_json(rows)
        return
    print_table(None, ["preset", "teacher", "student", *STAGES],
                [[r["preset"], r["teacher"], r["student"], *(f"{r['scale'][s]} · {r['steps'][s]}" for s in STAGES)]
                 for r in rows])
    console.print("nodes x GPUs per node · steps, per stage")


@app.command("show")
@handle_errors
def show_cmd(
    preset: Annotated[str, typer.Argument(help="A preset name (tiny, single-gpu, full) or a recipe .yaml file.")],
    stage: Annotated[str | None, typer.Option("--stage", "-s", help="Only this stage's spec.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """A preset (or one stage of it) with every field spelled out: edit it and pass it as --preset FILE."""
    import yaml

    from qwen3_trainer.recipe.files import dump_preset
    from qwen3_trainer.recipe.graph import parse_stages
    from qwen3_trainer.recipe.presets import get_preset

    with bad_input():
        p = get_preset(preset)
        names = parse_stages(stage)[:1] if stage else []
    if names:
        data = p.spec(names[0]).model_dump(mode="json")
        print_json(data) if as_json else typer.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
        return
    print_json(p.model_dump(mode="json")) if as_json else typer.echo(dump_preset(p), nl=False)
