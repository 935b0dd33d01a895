"""`hf-continuous`: transformers' continuous batching (paged attention).

Jobs join and leave the running batch at token boundaries, so a long job never holds short
ones back and a new job does not wait for the batch in flight. It is driven by
`workers/continuous_loop.py` through the `ContinuousEngine` interface
(`workers/engines/base.py`), not by the batch loop: requests go in one by one, and
results come out as each finishes. On this CPU it is slower than `hf`; it is built for GPUs.
"""

from __future__ import annotations

import math

from transformers import ContinuousBatchingConfig, GenerationConfig

from llmq.catalog import ModelSpec
from llmq.settings import Settings
from workers.engines.base import GenerationRequest, GenerationResult
from workers.engines.hf import eos_ids, prepare_prompt, render_prompt
from workers.loader import load_model

PAGE_TOKENS = 64
# Sampling processors exist only when the defaults are not neutral; each request overrides
# them (greedy requests use top_k=1).
SAMPLING_DEFAULTS = {"temperature": 0.7, "top_p": 0.95, "top_k": 50}


class HFContinuousEngine:
    name = "hf-continuous"

    def __init__(self, spec: ModelSpec, settings: Settings):
        self.spec = spec
        self.model, self.tokenizer, self.device = load_model(spec, settings.cache_dir)
        config_len = getattr(self.model.config, "max_position_embeddings", None)
        self.context_length = min(spec.context_length, config_len or spec.context_length)
        self.eos_ids = sorted(eos_ids(self.model, self.tokenizer))
        pages_per_request = math.ceil(self.context_length / PAGE_TOKENS)
        cb_config = ContinuousBatchingConfig(
            page_size=PAGE_TOKENS,
            num_blocks=pages_per_request * spec.max_batch_size,
            max_batch_tokens=spec.max_batch_tokens or 64 * spec.max_batch_size,
            max_requests_per_batch=spec.max_batch_size,
            per_request_processors=True,
        )
        generation = GenerationConfig(
            do_sample=True,
            max_new_tokens=spec.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **SAMPLING_DEFAULTS,
        )
        self.manager = self.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=cb_config
        )
        self.manager.start()

    def render(self, req: GenerationRequest) -> list[int]:
        return render_prompt(self.tokenizer, req)

    def prepare(self, req: GenerationRequest) -> tuple[list[int], GenerationResult | None]:
        """The prompt's ids, or why the job fails before it joins the batch."""
        return prepare_prompt(self.tokenizer, req, self.context_length)

    def add(self, req: GenerationRequest, prompt_ids: list[int], max_new_tokens: int) -> None:
        sampling = (
            {"top_k": 1}
            if req.temperature == 0
            else {"temperature": req.temperature, "top_p": req.top_p, "top_k": 0}
        )
        self.manager.add_request(
            prompt_ids,
            request_id=req.job_id,
            max_new_tokens=max_new_tokens,
            streaming=True,
            eos_token_id=self.eos_ids,
            **sampling,
        )

    def poll(self, timeout_s: float) -> list:
        """Every output ready now (waiting up to `timeout_s` for the first)."""
        outputs = []
        first = self.manager.get_result(timeout=timeout_s)
        while first is not None:
            outputs.append(first)
            first = self.manager.get_result(timeout=0)
        return outputs

    def cancel(self, job_id: str) -> None:
        self.manager.cancel_request(job_id)

    def close(self) -> None:
        """Stop the generation thread, so the worker process can exit."""
        self.manager.stop(block=True, timeout=10)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
