"""The GPU script, proved on the CPU before a GPU is lent: its dry run goes the whole way
(API, both engines' workers, the bare side) with the tiny model, and writes only where told."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import gpu, results
from bench.env import ROOT
from llmq.catalog import load_catalog


def test_the_dry_run_measures_both_engines_and_writes_only_under_out(tmp_path):
    before = results.GPU.stat().st_mtime_ns if results.GPU.exists() else None
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    store = json.loads((tmp_path / "gpu.json").read_text())
    assert store["dry_run"] is True and store["device"] == "CPU (dry run)"
    engines = store["models"]["tiny"]["engines"]
    assert sorted(engines) == ["hf", "hf-continuous"]
    for engine in engines.values():
        assert sorted(engine["runs"]) == ["1", "2"]
        assert all(run["tokens"] > 0 for run in engine["runs"].values())
        assert engine["peak_memory_mb"] > 0
    efficiency = store["models"]["tiny"]["efficiency"]
    assert len(efficiency["pipeline"]) == len(efficiency["bare"]) == gpu.DRY_RUN.pairs
    section = (tmp_path / "gpu.md").read_text()
    assert section.startswith("## GPU: CPU (dry run) — dry run")
    assert "| tiny | hf-continuous |" in section and "| Pipeline efficiency, tiny |" in section
    after = results.GPU.stat().st_mtime_ns if results.GPU.exists() else None
    assert after == before


def test_the_dry_run_needs_somewhere_to_write():
    with pytest.raises(SystemExit):
        gpu.main(["--dry-run"])


def test_the_1b_model_is_skipped_unless_its_directory_is_there(tmp_path):
    models, skipped = gpu.model_sources(None, False, tmp_path)
    assert list(models) == ["smollm2-135m"] and "LLMQ_BENCH_GPU_1B" in skipped["1b"]
    _, skipped = gpu.model_sources(str(tmp_path / "absent"), False, tmp_path)
    assert "is not a directory" in skipped["1b"]
    models, skipped = gpu.model_sources(str(tmp_path), False, tmp_path)
    assert sorted(models) == ["1b", "smollm2-135m"] and not skipped


def test_each_model_gets_an_entry_per_engine(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(gpu.catalog({"small": gpu.SMOLLM2}, gpu.GpuParams()))
    catalog = load_catalog(path)
    hf, cb, bare = catalog.get("small-hf"), catalog.get("small-cb"), catalog.get("small-bare")
    assert (hf.engine, cb.engine, bare.engine) == ("hf", "hf-continuous", "hf")
    assert hf.max_batch_size == cb.max_batch_size == 128
    assert (hf.device, hf.dtype) == ("cuda", "bfloat16")


def test_no_gpu_results_make_no_section():
    assert gpu.markdown({"sections": {}}) == []
