"""Load a catalog model onto its device, once per process.

GGUF weights take seconds to dequantize, so the first load saves the dequantized weights as
safetensors (with config and tokenizer) under the cache directory, keyed by source and dtype;
later starts load from there. `prepare_cache` builds that copy ahead of time (`llmq models
prepare`, run by `make install` and the container build), so no user's job waits on it.
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
from workers import startup

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


def check_gpu_settings(spec: ModelSpec, device: str) -> None:
    """Refuse, with a clear message, settings that only work on CUDA."""
    if device.startswith("cuda"):
        return
    if spec.quantization != "none":
        raise CatalogError(
            f"model {spec.name!r}: quantization {spec.quantization!r} (bitsandbytes) needs a CUDA "
            'device; set quantization = "none" to run on CPU'
        )
    if spec.device_map not in (None, "cpu"):
        raise CatalogError(
            f"model {spec.name!r}: device_map {spec.device_map!r} spreads a model over GPUs and "
            "needs CUDA; remove it to run on CPU"
        )


def quantization_config(spec: ModelSpec, dtype: torch.dtype) -> Any:
    if spec.quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise CatalogError(
            f"model {spec.name!r}: quantization {spec.quantization!r} needs `pip install bitsandbytes`"
        ) from None
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)


def cache_path(spec: ModelSpec, cache_dir: Path, dtype: torch.dtype) -> Path:
    """Where the dequantized copy of a GGUF source lives; a changed source file gets a new one."""
    source = spec.resolve_source()
    stat = (source.directory / str(source.gguf_file)).stat()
    identity = f"{source.cache_key}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}"
    return cache_dir / f"{spec.name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def needs_cache(spec: ModelSpec) -> bool:
    """Whether a worker of this model loads GGUF weights, which the cache holds dequantized."""
    return spec.loads_weights and spec.source is not None and bool(spec.resolve_source().gguf_file)


def prepare_cache(
    spec: ModelSpec, cache_dir: Path, dtype: torch.dtype | None = None
) -> tuple[Path, bool]:
    """The cache entry a worker of this model loads, built now if missing: (its path, built).

    `dtype` defaults to the one a worker on this machine picks; a build without the GPU it
    will run on (a container image) names the GPU's dtype.
    """
    source = spec.resolve_source()
    if not source.gguf_file:
        raise CatalogError(f"model {spec.name!r} has no GGUF source: it loads without a cache")
    dtype = dtype or pick_dtype(spec.dtype, pick_device(spec.device))
    directory = cache_path(spec, cache_dir, dtype)
    if (directory / "model.safetensors").is_file():
        return directory, False
    _dequantize_to_cache(source.directory, source.gguf_file, dtype, directory)
    return directory, True


def load_model(spec: ModelSpec, cache_dir: Path) -> tuple[Any, Any, str]:
    """Returns (model, tokenizer, device); the model is in eval mode on its device."""
    startup.weights_started()
    device = pick_device(spec.device)
    check_gpu_settings(spec, device)
    dtype = pick_dtype(spec.dtype, device)
    source = spec.resolve_source()
    started = time.perf_counter()
    directory = source.directory
    if source.gguf_file:
        directory, built = prepare_cache(spec, cache_dir, dtype)
        if not built:
            log.info("loading %s from the cache %s", spec.name, directory)
    extra: dict[str, Any] = {}
    if spec.device_map:
        extra["device_map"] = spec.device_map
    quant = quantization_config(spec, dtype)
    if quant is not None:
        extra["quantization_config"] = quant
        extra.setdefault("device_map", device)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **extra)
    if "device_map" in extra:
        device = str(model.device)
    else:
        model.to(device)
    model.eval()
    if spec.compile:
        model.forward = torch.compile(model.forward)
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

    log.info(
        "dequantizing %s (once; later starts load the cache; `llmq models prepare` does it "
        "ahead of time)",
        gguf_file,
    )
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
