"""The `llmq` command: local stack, processes, keys, usage, submit, get, prune, batch, ab,
demo.

Each command lives in the module of its kind; this one only puts them together, in the
order `llmq --help` lists them.
"""

from __future__ import annotations

import typer

from cli import ab, batches, jobs, keys, local, processes, retention

app = typer.Typer(
    help="llmq: asynchronous LLM inference jobs on your own GPUs.", no_args_is_help=True
)
app.add_typer(keys.app, name="keys")
app.command()(processes.worker)
app.command("webhook-worker")(processes.webhook_worker)
app.command()(processes.api)
app.command()(processes.flower)
app.command()(processes.scheduler)
app.command()(jobs.status)
app.command()(local.services)
app.command()(local.migrate)
app.command()(local.dev)
app.command()(jobs.usage)
app.command()(jobs.submit)
app.command()(jobs.get)
app.command()(retention.prune)
app.add_typer(batches.app, name="batch")
app.add_typer(ab.app, name="ab")
app.command()(local.demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
