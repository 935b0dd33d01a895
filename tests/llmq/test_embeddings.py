"""Prompt embeddings without torch: the numpy forward pass is the real all-MiniLM-L6-v2."""

from __future__ import annotations

import math
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from llmq import embeddings

SENTENCES = [
    "What is the capital of France?",
    "Tell me France's capital city",
    "How do I bake bread?",
    "A man is playing a guitar on stage.",
    "Le chat est assis sur le tapis.",
    "x",
    "An unusually long prompt that keeps going " * 40,  # past the 256-token limit
]


@pytest.fixture(scope="module")
def ours() -> np.ndarray:
    return embeddings.embed(SENTENCES)


def test_the_vectors_are_sentence_transformers_own(tmp_path, ours):
    from sentence_transformers import SentenceTransformer

    with zipfile.ZipFile(embeddings.model_zip()) as z:
        z.extractall(tmp_path)
    reference = SentenceTransformer(str(tmp_path), device="cpu").encode(SENTENCES)
    assert ours.shape == (len(SENTENCES), embeddings.DIMENSIONS)
    assert ours.dtype == np.float32
    cosine = (ours * reference).sum(1) / np.linalg.norm(reference, axis=1)
    assert np.all(cosine > 1 - 1e-4), cosine


def test_vectors_are_unit_and_do_not_depend_on_the_batch(ours):
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    one_by_one = np.concatenate([embeddings.embed([s]) for s in SENTENCES])
    assert np.allclose(one_by_one, ours, atol=1e-5)
    assert embeddings.embed([]).shape == (0, embeddings.DIMENSIONS)


@pytest.mark.parametrize("x", [-4.0, -1.5, -0.3, 0.0, 1e-4, 0.7, 2.2, 6.0])
def test_erf_matches_the_standard_library(x):
    assert embeddings.erf(np.array([x]))[0] == pytest.approx(math.erf(x), abs=2e-7)


def test_embedding_imports_no_torch():
    # The API process embeds prompts, and must never load torch.
    code = (
        "import sys; from llmq.embeddings import embed; embed(['hello']); "
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
