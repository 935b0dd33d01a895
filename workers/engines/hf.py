"""`hf`: dynamic batching over transformers' `generate`, left-padded.

Each job keeps its own `max_tokens`, stop sequences, finish reason and exact token counts:
one stopping criterion tracks every row, so finished rows stop counting while the rest go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from llmq.catalog import ModelSpec
from llmq.settings import Settings
from workers.batching import earliest_stop
from workers.engines.base import GenerationRequest, GenerationResult, failure
from workers.loader import load_model

log = logging.getLogger(__name__)


@dataclass
class _Row:
    request: GenerationRequest
    prompt_ids: list[int]
    max_new: int
    done_at: int | None = None  # tokens generated when the row stopped
    reason: str | None = None


class _PerRowStop(StoppingCriteria):
    """Marks each row done on its own EOS, token budget, stop sequence or cancellation."""

    def __init__(self, rows, width, tokenizer, eos_ids, is_cancelled):
        self.rows, self.width, self.tokenizer = rows, width, tokenizer
        self.first_token_at: float | None = None  # perf_counter at the first generated token
        self.eos_ids, self.is_cancelled = eos_ids, is_cancelled
        self.stop_window = {
            i: max(len(s) for s in r.request.stop) + 2 for i, r in enumerate(rows) if r.request.stop
        }

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.width
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if row.done_at is None:
                if last[i] in self.eos_ids or (
                    i in self.stop_window and self._hit_stop(input_ids[i], row, i)
                ):
                    row.done_at, row.reason = generated, "stop"
                elif generated >= row.max_new:
                    row.done_at, row.reason = generated, "length"
                elif self.is_cancelled(row.request.job_id):
                    row.done_at, row.reason = generated, "cancelled"
            done[i] = row.done_at is not None
        return done

    def _hit_stop(self, ids: torch.Tensor, row: _Row, i: int) -> bool:
        tail = ids[self.width :][-self.stop_window[i] :]
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return earliest_stop(text, row.request.stop) is not None


class HFEngine:
    name = "hf"

    def __init__(self, spec: ModelSpec, settings: Settings):
        self.spec = spec
        self.max_time_s = settings.max_generation_s
        self.model, self.tokenizer, self.device = load_model(spec, settings.cache_dir)
        config_len = getattr(self.model.config, "max_position_embeddings", None)
        self.context_length = min(spec.context_length, config_len or spec.context_length)
        eos = self.model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in eos_list if e is not None} | {self.tokenizer.eos_token_id}

    def render(self, req: GenerationRequest) -> list[int]:
        """Token ids of the prompt: chat template for `messages`, plain text for `prompt`."""
        if req.messages is not None:
            text = self.tokenizer.apply_chat_template(
                req.messages, add_generation_prompt=True, tokenize=False
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(req.prompt)["input_ids"]

    def generate(
        self, requests: list[GenerationRequest], is_cancelled: Callable[[str], bool]
    ) -> list[GenerationResult]:
        entered = time.perf_counter()
        results: list[GenerationResult | None] = [None] * len(requests)
        rows: list[tuple[int, _Row]] = []
        for i, req in enumerate(requests):
            ids = self.render(req)
            room = self.context_length - len(ids)
            if room <= 0:
                results[i] = failure(
                    "context_length_exceeded",
                    f"prompt is {len(ids)} tokens; the model's context is {self.context_length}",
                    len(ids),
                )
            else:
                rows.append((i, _Row(req, ids, min(req.max_tokens, room))))
        if rows:
            for (i, _), result in zip(
                rows, self._run([r for _, r in rows], is_cancelled, entered), strict=True
            ):
                results[i] = result
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _run(
        self, rows: list[_Row], is_cancelled: Callable[[str], bool], entered: float
    ) -> list[GenerationResult]:
        width = max(len(r.prompt_ids) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        attention = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows]
        )
        first = rows[0].request
        sampling = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        criteria = _PerRowStop(rows, width, self.tokenizer, self.eos_ids, is_cancelled)
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            max_new_tokens=max(r.max_new for r in rows),
            stopping_criteria=StoppingCriteriaList([criteria]),
            pad_token_id=pad,
            max_time=self.max_time_s,
            **sampling,
        )
        generated = output[:, width:].tolist()
        first_s = None if criteria.first_token_at is None else criteria.first_token_at - entered
        results = [self._result(row, tokens) for row, tokens in zip(rows, generated, strict=True)]
        for result in results:
            if result.completion_tokens:
                result.first_token_s = first_s
        return results

    def _result(self, row: _Row, tokens: list[int]) -> GenerationResult:
        count = row.done_at if row.done_at is not None else len(tokens)
        reason = row.reason or "length"
        text = self.tokenizer.decode(tokens[:count], skip_special_tokens=True)
        cut = earliest_stop(text, row.request.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        return GenerationResult(text, reason, len(row.prompt_ids), count)
