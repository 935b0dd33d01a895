"""How pydantic's errors become the field names a client wrote, one error per field."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

_MISSING = object()


def field_path(
    loc: tuple[Any, ...] | list[Any], body: Any = _MISSING, missing: bool = False
) -> str:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'.

    Given the request body, the parts of `loc` that are not places in it are left out: the
    tags pydantic adds for the members of a union ('metadata.k.constrained-str' ->
    'metadata.k') and a rejected dict key itself ('metadata.<key>.[key]' -> 'metadata'),
    so a field is named the way the client wrote it, and a bad key is not echoed. `missing`:
    the error is about a field the body lacks, whose name is kept.
    """
    if "[key]" in loc:
        loc = loc[: list(loc).index("[key]") - 1]
    node = body if loc and loc[0] == "body" else _MISSING
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        if isinstance(node, dict) and (part in node or missing):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif node is not _MISSING:
            continue  # a union member's tag
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


NOT_UTF8 = "must be text that can be encoded as UTF-8 (a lone surrogate such as \\ud800 cannot)"


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """One error per field. Of a union's errors, the member that matched the input's type
    speaks; the others only say "not a string", "not an int" (`*_type` errors), and are left
    out where the matching member named a place inside the field."""
    chosen: dict[str, dict[str, Any]] = {}
    for error in exc.errors():
        field = field_path(error["loc"], exc.body, missing=error["type"] == "missing")
        if field not in chosen or (
            chosen[field]["type"].endswith("_type") and not error["type"].endswith("_type")
        ):
            chosen[field] = error
    return [
        {"field": f, "message": NOT_UTF8 if e["type"] == "string_unicode" else e["msg"]}
        for f, e in chosen.items()
        if not (e["type"].endswith("_type") and any(_inside(other, f) for other in chosen))
    ]


def _inside(field: str, parent: str) -> bool:
    return field.startswith(parent) and field[len(parent) : len(parent) + 1] in ("[", ".")
