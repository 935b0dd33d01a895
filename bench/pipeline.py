"""Figures 1, 2 and 5: pipeline efficiency, batching gain, and the worker's peak memory."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

TOPICS = [
    "the ocean", "a lighthouse keeper", "a robot gardener", "the first snow", "a lost key",
    "an old library", "a mountain village", "a night train", "a curious cat", "the desert wind",
    "a jazz musician", "a paper boat", "the northern lights", "a city at dawn", "a clockmaker",
    "a forgotten island", "a beekeeper", "a winter market", "a river journey", "an astronomer",
    "a bakery", "a storm at sea", "a chess player", "a kite festival", "a glass blower",
    "an abandoned mine", "a violin maker", "a garden maze", "a fishing boat", "a city of bridges",
    "a map maker", "a long summer",
]  # fmt: skip
PROMPTS = [f"Write a long, detailed story about {t}." for t in TOPICS]
NEW_TOKENS = 32


def run_jobs(client: httpx.Client, model: str, prompts: list[str], concurrent: bool) -> dict:
    """Submit the prompts (all at once, or one after another) and wait for every result."""

    def one(prompt: str) -> dict:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": NEW_TOKENS, "temperature": 0}  # fmt: skip
        job = client.post("/v1/jobs", json=body).json()
        while job["status"] in ("queued", "running"):
            job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
        return job

    started = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(len(prompts)) as pool:
            jobs = list(pool.map(one, prompts))
    else:
        jobs = [one(p) for p in prompts]
    seconds = time.perf_counter() - started
    assert all(j["status"] == "succeeded" for j in jobs), [j["error"] for j in jobs]
    tokens = sum(j["usage"]["completion_tokens"] for j in jobs)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "batch_sizes": sorted({j["timings"]["batch_size"] for j in jobs}),
    }


class BareGenerate:
    """The same model and prompts through one batched `generate` call, in this process."""

    def __init__(self, prompts: list[str]):
        from llmq.catalog import get_catalog
        from llmq.settings import get_settings
        from workers.loader import load_model

        self.model, self.tokenizer, device = load_model(
            get_catalog().get("smollm2-135m"), get_settings().cache_dir
        )
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        self.batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)

    def run(self) -> dict:
        import torch

        eos = self.tokenizer.eos_token_id
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **self.batch, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=eos
            )
        seconds = time.perf_counter() - started
        tokens = 0
        for row in out[:, self.batch["input_ids"].shape[1] :].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
        return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
