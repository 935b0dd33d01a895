"""`make docs`: rewrite the generated parts of the docs from the code: the settings table
(docs/settings.md), the LLMQ_* part of .env.example and the metrics table (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

from llmq.metrics import metrics_table
from llmq.settings import env_example, settings_table

ROOT = Path(__file__).resolve().parent.parent
ENV_MARKER = "# -- llmq settings "


def main() -> None:
    doc = ROOT / "docs" / "settings.md"
    text = doc.read_text()
    doc.write_text(text[: text.index("| variable |")] + settings_table())
    example = ROOT / ".env.example"
    text = example.read_text()
    head, marker_line = text.split(ENV_MARKER, 1)
    marker_line = ENV_MARKER + marker_line.split("\n", 1)[0] + "\n"
    example.write_text(head + marker_line + env_example())
    _replace_table(ROOT / "docs" / "operations.md", "| metric |", metrics_table())


def _replace_table(path: Path, header: str, table: str) -> None:
    """Swap the Markdown table that starts with `header` for `table`."""
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    path.write_text("".join(lines[:start]) + table + "".join(lines[end:]))


if __name__ == "__main__":
    main()
