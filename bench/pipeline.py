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


def prompts(count: int) -> list[str]:
    """`count` distinct prompts: the stories, then the same topics told again in new styles."""
    styles = ["", " Tell it as a poem.", " Tell it as a letter.", " Tell it in the future."]
    return [PROMPTS[i % len(PROMPTS)] + styles[i // len(PROMPTS) % len(styles)]
            for i in range(count)]  # fmt: skip


def run_jobs(
    client: httpx.Client,
    model: str,
    prompts: list[str],
    concurrent: bool,
    new_tokens: int = NEW_TOKENS,
) -> dict:
    """Submit the prompts (all at once, or one after another) and wait for every result."""

    def one(prompt: str) -> dict:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": new_tokens, "temperature": 0}  # fmt: skip
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
    """A catalog model and the prompts through one batched `generate` call, in this process:
    what the pipeline's tokens/s are measured against."""

    def __init__(
        self, prompts: list[str], model: str = "smollm2-135m", new_tokens: int = NEW_TOKENS
    ):
        from llmq.catalog import get_catalog
        from llmq.settings import get_settings
        from workers.loader import load_model

        self.new_tokens = new_tokens
        self.model, self.tokenizer, self.device = load_model(
            get_catalog().get(model), get_settings().cache_dir
        )
        self.texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]

    def run(self, batch: int | None = None) -> dict:
        """The first `batch` prompts (all by default) as one batch."""
        import torch

        inputs = self.tokenizer(
            self.texts[:batch], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=self.new_tokens, do_sample=False, pad_token_id=pad
            )
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        tokens = 0
        for row in out[:, inputs["input_ids"].shape[1] :].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
        return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
