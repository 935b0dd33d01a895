"""`llmq models prepare`: the GGUF cache is built ahead of time, once, and a worker's load then
reads it instead of dequantizing."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from llmq.catalog import get_catalog, load_catalog

REPO = Path(__file__).resolve().parents[2]


def prepare(env: dict[str, str], *models: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "models", "prepare", *models],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_prepare_builds_the_cache_once_and_a_worker_load_reads_it(tmp_path, caplog):
    from workers.loader import load_model

    src = get_catalog().get("smollm2-135m").resolve_source()
    gguf = tmp_path / "model.gguf"
    shutil.copy(src.directory / str(src.gguf_file), gguf)
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        f'[models.local-gguf]\nsource = {{ path = "{gguf}" }}\ndevice = "cpu"\n\n'
        '[models.echoes]\nengine = "echo"\n'
    )
    cache_dir = tmp_path / "cache"
    env = dict(os.environ, LLMQ_CATALOG_PATH=str(catalog), LLMQ_CACHE_DIR=str(cache_dir))

    first = prepare(env)  # every model with a GGUF source
    assert first.returncode == 0, first.stdout + first.stderr
    assert "local-gguf" in first.stdout and "built in" in first.stdout
    assert "echoes" not in first.stdout
    again = prepare(env, "local-gguf")
    assert again.returncode == 0 and "already there" in again.stdout, again.stdout

    spec = load_catalog(catalog).get("local-gguf")
    with caplog.at_level(logging.INFO, logger="workers.loader"):
        load_model(spec, cache_dir)
    assert "from the cache" in caplog.text and "dequantizing" not in caplog.text


def test_prepare_names_unknown_models_and_skips_weightless_ones():
    unknown = prepare(dict(os.environ), "no-such-model")
    assert unknown.returncode == 1 and "no-such-model" in unknown.stdout
    echo = prepare(dict(os.environ), "echo")
    assert echo.returncode == 0 and "nothing to prepare" in echo.stdout
