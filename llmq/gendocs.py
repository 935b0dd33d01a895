"""`make docs`: rewrite the generated parts of docs/settings.md and .env.example from the code."""

from __future__ import annotations

from pathlib import Path

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


if __name__ == "__main__":
    main()
