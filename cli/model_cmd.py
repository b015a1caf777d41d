"""``qtrain model``: the Qwen3 flavors this trainer builds.

Examples:
    qtrain model list
    qtrain model list --json
"""

from __future__ import annotations

from typing import Annotated

import typer

from qwen3_trainer.cli.output import handle_errors, print_json, print_table

app = typer.Typer(help="Qwen3 model flavors.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_flavors(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Table of flavors: layers, hidden, heads/kv, experts, total and active parameters."""
    from qwen3_trainer.model.flavors import FLAVORS, count_params

    rows = []
    for name, args in FLAVORS.items():
        n = count_params(args)
        experts = f"{args.moe_args.num_experts}/{args.moe_args.top_k}" if args.moe_enabled else "-"
        rows.append(
            {
                "flavor": name, "layers": args.n_layers, "hidden": args.dim,
                "heads": args.n_heads, "kv_heads": args.n_kv_heads, "experts": experts,
                "total_params": n.total, "active_params": n.active,
            }
        )
    if as_json:
        print_json(rows)
        return
    print_table(
        "Qwen3 flavors",
        ["flavor", "layers", "hidden", "heads/kv", "experts", "total params", "active params"],
        [
            [r["flavor"], r["layers"], r["hidden"], f"{r['heads']}/{r['kv_heads']}", r["experts"],
             f"{r['total_params']:,}", f"{r['active_params']:,}"]
            for r in rows
        ],
    )
