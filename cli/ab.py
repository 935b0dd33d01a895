"""`llmq ab report ALIAS`: an alias's variants side by side, from `GET /v1/usage?group_by=variant`."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import check, client, console, fail

app = typer.Typer(help="A/B tests of an alias's variants.", no_args_is_help=True)

ROWS = [  # (label, field of a usage row)
    ("model", "model"),
    ("jobs", "jobs"),
    ("failed", "failed"),
    ("failure rate", "failure_rate"),
    ("prompt tokens", "prompt_tokens"),
    ("completion tokens", "completion_tokens"),
    ("cost USD", "cost_usd"),
    ("GPU cost USD", "gpu_cost_usd"),
    ("latency p50 ms", "latency_p50_ms"),
    ("latency p95 ms", "latency_p95_ms"),
]


@app.command()
def report(
    alias: Annotated[str, typer.Argument(help="The alias, as clients name it.")],
    start: Annotated[str | None, typer.Option(help="ISO-8601 start (included).")] = None,
    end: Annotated[str | None, typer.Option(help="ISO-8601 end (excluded).")] = None,
) -> None:
    """Each variant (then each rule) of the alias as a column, in the catalog's order: jobs,
    failures, tokens, cost and latency of the jobs that ended, for the CLI's key (every
    key's for an admin key)."""
    from rich.table import Table

    params = {"group_by": "variant", "alias": alias}
    params |= ({"start": start} if start else {}) | ({"end": end} if end else {})
    with client() as api:
        spec = check(api.get(f"/v1/models/{alias}")).get("llmq") or {}  # unknown: fails, by name
        rows = check(api.get("/v1/usage", params=params))["data"]
    if not rows:
        fail(f"no ended jobs of alias {alias!r} yet")
    order = [v["name"] for v in spec.get("variants", []) + spec.get("rules", [])]
    rows.sort(
        key=lambda row: order.index(row["variant"]) if row["variant"] in order else len(order)
    )
    table = Table(alias, *(row["variant"] for row in rows), title=f"A/B report: {alias}")
    for label, field in ROWS:
        table.add_row(label, *(_cell(row[field]) for row in rows))
    console.print(table)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if isinstance(value, float) else str(value)
