"""`llmq prune`: clear old finished jobs' prompts and outputs, straight in Postgres."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, fail
from llmq.settings import get_settings


def prune(
    older_than_days: Annotated[
        float | None,
        typer.Option(
            help="Jobs finished more than this many days ago; default LLMQ_RETENTION_DAYS."
        ),
    ] = None,
) -> None:
    """Clear the prompt, messages and output of jobs finished more than N days ago, a chunk
    per transaction; the jobs' ids, status and tokens and the usage ledger are kept."""
    from llmq import retention

    days = get_settings().retention_days if older_than_days is None else older_than_days
    if days <= 0:
        fail("give --older-than-days above 0 (or set LLMQ_RETENTION_DAYS)")
    total = retention.prune(days, progress=lambda n: console.print(f"pruned {n:,} job(s)…"))
    console.print(f"pruned {total:,} job(s) finished more than {days:g} day(s) ago")
