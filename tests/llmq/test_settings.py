from pathlib import Path

from llmq.settings import settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_settings_doc_lists_every_variable():
    assert settings_table() in (ROOT / "docs" / "settings.md").read_text()
