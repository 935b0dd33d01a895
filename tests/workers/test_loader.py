"""Loading: the GGUF cache is used on the second start and renewed when the source changes."""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from llmq.catalog import get_catalog
from llmq.errors import CatalogError


def test_gguf_cache_is_reused_and_invalidated(tmp_path, caplog):
    from workers.loader import cache_path, load_model

    real = get_catalog().get("smollm2-135m")
    src = real.resolve_source()
    copy = tmp_path / "model.gguf"
    shutil.copy(src.directory / src.gguf_file, copy)
    spec = real.model_copy(
        update={
            "source": real.source.model_copy(
                update={"package": None, "file": None, "path": str(copy)}
            )
        }
    )
    cache_dir = tmp_path / "cache"

    with caplog.at_level(logging.INFO, logger="workers.loader"):
        model, tokenizer, _ = load_model(spec, cache_dir)
        first = cache_path(spec, cache_dir, model.dtype)
        assert (first / "model.safetensors").is_file()
        assert "dequantizing" in caplog.text
        caplog.clear()
        again, _, _ = load_model(spec, cache_dir)
        assert "from the cache" in caplog.text and "dequantizing" not in caplog.text
    ids = tokenizer("What is the capital of France?", return_tensors="pt")
    assert again(**ids).logits.argmax(-1).tolist() == model(**ids).logits.argmax(-1).tolist()

    os.utime(copy, ns=(0, 0))  # the source changed: a new cache entry
    assert cache_path(spec, cache_dir, model.dtype) != first


@pytest.mark.parametrize(
    ("update", "fragment"),
    [({"quantization": "4bit"}, "needs a CUDA device"), ({"device_map": "auto"}, "needs CUDA")],
)
def test_gpu_only_settings_are_refused_on_cpu(update, fragment):
    from workers.loader import load_model

    spec = get_catalog().get("tiny").model_copy(update=update)
    with pytest.raises(CatalogError, match=fragment):
        load_model(spec, cache_dir=None)


def test_cuda_device_without_cuda_is_a_clear_error():
    import torch

    from workers.loader import pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(CatalogError, match="needs CUDA"):
        pick_device("cuda")
