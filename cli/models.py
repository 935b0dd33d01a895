"""`llmq models prepare`: the work a model's first worker would do, done ahead of time."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.common import console, fail
from llmq.errors import CatalogError
from llmq.settings import get_settings

app = typer.Typer(help="The catalog's models on this machine.", no_args_is_help=True)

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@app.command()
def prepare(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="Catalog models (default: every one with a GGUF source)."),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            help="The dtype to cache: auto is what a worker on this machine picks; an image "
            "built without its GPU names the GPU's (bfloat16)."
        ),
    ] = "auto",
) -> None:
    """Dequantize GGUF weights into the cache (LLMQ_CACHE_DIR) so no worker start does it.

    Quick when the cache already holds them; a changed GGUF file gets a new entry."""
    from llmq.catalog import get_catalog

    if dtype not in DTYPE_CHOICES:
        fail(f"--dtype: one of {', '.join(DTYPE_CHOICES)}, not {dtype!r}")
    from workers.loader import DTYPES, needs_cache, prepare_cache

    catalog, cache_dir = get_catalog(), get_settings().cache_dir
    unknown = [name for name in models or () if name not in catalog]
    if unknown:
        fail(f"not in the catalog: {', '.join(unknown)} (it has {', '.join(catalog.names())})")
    named = bool(models)
    failed = False
    for name in models or catalog.names():
        spec = catalog.get(name)
        try:
            if not needs_cache(spec):
                if named:
                    console.print(f"{name}: nothing to prepare (no GGUF source)")
                continue
            started = time.perf_counter()
            path, built = prepare_cache(spec, cache_dir, DTYPES.get(dtype))
        except CatalogError as exc:
            console.print(f"[red]{name}[/red]: {exc}", soft_wrap=True)
            failed = True
            continue
        took = f"built in {time.perf_counter() - started:.1f} s" if built else "already there"
        console.print(f"{name}: {path} ({took})", soft_wrap=True)
    if failed:
        raise typer.Exit(1)
