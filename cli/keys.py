"""`llmq keys`: create, list and revoke API keys, straight in Postgres."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, fail
from llmq.settings import get_settings

app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    admin: Annotated[bool, typer.Option(help="May manage keys and see every key's usage.")] = False,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Jobs queued or running at once.")
    ] = None,
    budget_usd: Annotated[str | None, typer.Option(help="Spend limit per period, in USD.")] = None,
    budget_period: Annotated[str | None, typer.Option(help="day or month.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Default webhook endpoint.")] = None,
    fair_share_weight: Annotated[
        float, typer.Option(help="The key's share of a busy model against other keys'.")
    ] = 1.0,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from decimal import Decimal, InvalidOperation

    from llmq import ssrf
    from llmq.db import session_scope
    from llmq.errors import InvalidField
    from llmq.keys import Limits, create_key, webhook_secret

    try:
        budget = Decimal(budget_usd) if budget_usd is not None else None
    except InvalidOperation:
        fail(f"--budget-usd {budget_usd!r} is not a number")
    if webhook_url:
        try:
            ssrf.check_url(webhook_url, get_settings())
        except ssrf.UnsafeUrl as exc:
            fail(f"--webhook-url: {exc}")
    limits = Limits(rpm, tpm, max_concurrent, budget, budget_period)
    try:
        with session_scope() as session:
            row, plain = create_key(session, name, admin, limits, webhook_url, fair_share_weight)
            secret = webhook_secret(row)
    except InvalidField as exc:
        fail(f"--{exc.field.replace('_', '-')}: {exc.message}")
    console.print("webhook signing secret (verify deliveries with it; shown only now):")
    print(secret)
    console.print(f"created key {row.prefix}… for {name!r}; it is shown only now:")
    print(plain)


@app.command("list")
def keys_list() -> None:
    """Every key with its limits (never the key itself)."""
    from rich.table import Table

    from llmq.db import session_scope
    from llmq.keys import describe, list_keys

    with session_scope() as session:
        rows = [describe(r) for r in list_keys(session)]
    table = Table("id", "prefix", "name", "admin", "rpm", "tpm", "concurrent", "budget", "revoked")
    for r in rows:
        budget = f"${r['budget_usd']}/{r['budget_period']}" if r["budget_usd"] else ""
        table.add_row(
            r["id"], r["prefix"], r["name"], "yes" if r["admin"] else "",
            str(r["rpm"] or ""), str(r["tpm"] or ""), str(r["max_concurrent"] or ""),
            budget, r["revoked_at"] or "",
        )  # fmt: skip
    console.print(table)


@app.command("revoke")
def keys_revoke(ident: Annotated[str, typer.Argument(help="Key id or display prefix.")]) -> None:
    """Revoke a key; its next request is refused, by every API process."""
    import redis

    from llmq.db import session_scope
    from llmq.errors import KeyNotFound
    from llmq.key_cache import announce_changed
    from llmq.keys import revoke_key

    try:
        with session_scope() as session:
            row = revoke_key(session, ident)
    except KeyNotFound as exc:
        fail(str(exc))
    settings = get_settings()
    try:
        announce_changed(redis.Redis.from_url(settings.redis_url), settings.redis_prefix, row.id)
    except redis.RedisError as exc:
        fail(
            f"revoked {row.prefix}…, but the API processes could not be told ({exc}): they may "
            f"accept it for up to {settings.auth_cache_ttl_s:g} s; run this again to tell them"
        )
    console.print(f"revoked {row.prefix}… ({row.name})")
