"""Load a catalog model onto its device, once per process.

GGUF weights take seconds to dequantize, so the first load saves the dequantized weights as
safetensors (with config and tokenizer) under the cache directory, keyed by source and dtype;
later starts load from there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmq.catalog import ModelSpec
from llmq.errors import CatalogError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CatalogError(f"device {requested!r} needs CUDA, and no CUDA device is visible")
    return requested


def pick_dtype(requested: str, device: str) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if requested in ("float16", "bfloat16") and device == "cpu":
        log.warning("dtype %s on CPU is slow; float32 is the usual choice", requested)
    return DTYPES[requested]


def load_model(spec: ModelSpec, cache_dir: Path) -> tuple[Any, Any, str]:
    """Returns (model, tokenizer, device); the model is in eval mode on its device."""
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    source = spec.resolve_source()
    started = time.perf_counter()
    if source.gguf_file:
        key = hashlib.sha256(f"{source.cache_key}|{dtype}".encode()).hexdigest()[:16]
        cached = cache_dir / f"{spec.name}-{key}"
        if not (cached / "model.safetensors").is_file():
            _dequantize_to_cache(source.directory, source.gguf_file, dtype, cached)
        directory, gguf_file = cached, None
    else:
        directory, gguf_file = source.directory, None
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, gguf_file=gguf_file)
    model.to(device).eval()
    _prepare_tokenizer(tokenizer, model)
    log.info(
        "loaded %s on %s (%s) in %.1fs", spec.name, device, dtype, time.perf_counter() - started
    )
    return model, tokenizer, device


def _prepare_tokenizer(tokenizer: Any, model: Any) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _dequantize_to_cache(directory: Path, gguf_file: str, dtype: torch.dtype, target: Path) -> None:
    """Dequantize a GGUF model once and save it in a form `from_pretrained` loads fast."""
    from safetensors.torch import save_file

    log.info("dequantizing %s (first start; later starts load the cache)", gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype)
    config = AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
