"""`hf`: dynamic batching over transformers' `generate`, left-padded.

Each job keeps its own `max_tokens`, stop sequences, finish reason and exact token counts:
one stopping criterion tracks every row, so finished rows stop counting while the rest go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from llmq.catalog import ModelSpec
from llmq.settings import Settings
from workers.batching import earliest_stop, plan_sub_batches
from workers.engines.base import (
    NO_CONTROL,
    BatchControl,
    GenerationRequest,
    GenerationResult,
    failure,
)
from workers.loader import load_model

log = logging.getLogger(__name__)


@dataclass
class _Row:
    request: GenerationRequest
    prompt_ids: list[int]
    max_new: int
    done_at: int | None = None  # tokens generated when the row stopped
    reason: str | None = None
    text: str = ""  # decoded so far (streaming)
    sent: int = 0  # characters of `text` already streamed
    prefix_offset: int = 0
    read_offset: int = 0

    def reset(self) -> None:
        self.done_at = self.reason = None
        self.text, self.sent, self.prefix_offset, self.read_offset = "", 0, 0, 0


class _PerRowStop(StoppingCriteria):
    """Marks each row done on its own EOS, token budget, stop sequence or cancellation,
    and streams the text of the rows still running."""

    def __init__(self, rows, width, tokenizer, eos_ids, control: BatchControl):
        self.rows, self.width, self.tokenizer = rows, width, tokenizer
        self.eos_ids, self.is_cancelled, self.on_text = (
            eos_ids,
            control.is_cancelled,
            control.on_text,
        )
        self.first_token_at: float | None = None  # perf_counter at the first generated token
        self.stop_window = {
            i: max(len(s) for s in r.request.stop) + 2 for i, r in enumerate(rows) if r.request.stop
        }

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.width
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        deltas: dict[str, str] = {}
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
                elif self.on_text is not None:
                    delta = self._advance(input_ids[i, self.width :].tolist(), row)
                    if delta:
                        deltas[row.request.job_id] = delta
            done[i] = row.done_at is not None
        if deltas:
            self.on_text(deltas)
        return done

    def _advance(self, tokens: list[int], row: _Row) -> str:
        """Incremental detokenization: decode only the newest tokens, with a little context,
        and hold back the tail that could still become a stop sequence or a split character."""
        prefix = self.tokenizer.decode(
            tokens[row.prefix_offset : row.read_offset], skip_special_tokens=True
        )
        full = self.tokenizer.decode(tokens[row.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            row.text += full[len(prefix) :]
            row.prefix_offset, row.read_offset = row.read_offset, len(tokens)
        holdback = max((len(s) for s in row.request.stop), default=1) - 1
        ready = len(row.text) - holdback
        if ready <= row.sent:
            return ""
        delta, row.sent = row.text[row.sent : ready], ready
        return delta

    def _hit_stop(self, ids: torch.Tensor, row: _Row, i: int) -> bool:
        tail = ids[self.width :][-self.stop_window[i] :]
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return earliest_stop(text, row.request.stop) is not None


def render_prompt(tokenizer, req: GenerationRequest) -> list[int]:
    """Token ids of the prompt: chat template for `messages`, plain text for `prompt`."""
    if req.messages is not None:
        text = tokenizer.apply_chat_template(
            req.messages, add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(req.prompt)["input_ids"]


def prepare_prompt(
    tokenizer, req: GenerationRequest, context_length: int
) -> tuple[list[int], GenerationResult | None]:
    """The prompt's token ids, or the failure that ends the job before it runs: a chat
    template that rejects its messages (say, a role it does not know) or a prompt that leaves
    no room in the context. Either is this job's input, so it fails this job alone."""
    try:
        ids = render_prompt(tokenizer, req)
    except Exception as exc:
        what = "messages" if req.messages is not None else "prompt"
        return [], failure(
            f"invalid_{what}", f"the model's chat template rejected the {what}: {exc}"
        )
    if len(ids) >= context_length:
        return ids, too_long(len(ids), context_length)
    return ids, None


def too_long(prompt_tokens: int, context_length: int) -> GenerationResult:
    return failure(
        "context_length_exceeded",
        f"prompt is {prompt_tokens} tokens; the model's context is {context_length}",
        prompt_tokens,
    )


def eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    eos_list = eos if isinstance(eos, list) else [eos]
    return {int(e) for e in eos_list if e is not None} | {tokenizer.eos_token_id}


class HFEngine:
    name = "hf"

    def __init__(self, spec: ModelSpec, settings: Settings):
        self.spec = spec
        self.max_time_s = settings.max_generation_s
        self.max_batch_tokens = spec.max_batch_tokens
        self.model, self.tokenizer, self.device = load_model(spec, settings.cache_dir)
        config_len = getattr(self.model.config, "max_position_embeddings", None)
        self.context_length = min(spec.context_length, config_len or spec.context_length)
        self.eos_ids = eos_ids(self.model, self.tokenizer)

    def render(self, req: GenerationRequest) -> list[int]:
        return render_prompt(self.tokenizer, req)

    def prepare(self, req: GenerationRequest) -> tuple[list[int], GenerationResult | None]:
        return prepare_prompt(self.tokenizer, req, self.context_length)

    def generate(
        self, requests: list[GenerationRequest], control: BatchControl = NO_CONTROL
    ) -> list[GenerationResult]:
        self._entered = time.perf_counter()  # time to first token counts from here
        results: list[GenerationResult | None] = [None] * len(requests)
        rows: list[tuple[int, _Row]] = []
        for i, req in enumerate(requests):
            ids, refused = self.prepare(req)
            if refused is not None:
                results[i] = refused
            else:
                room = self.context_length - len(ids)
                rows.append((i, _Row(req, ids, min(req.max_tokens, room))))
        plan = plan_sub_batches(
            [len(r.prompt_ids) for _, r in rows],
            [r.max_new for _, r in rows],
            self.max_batch_tokens,
        )
        for chunk in plan:
            batch = [rows[k] for k in chunk]
            for (i, _), result in zip(
                batch,
                self._run_splitting([r for _, r in batch], control),
                strict=True,
            ):
                results[i] = result
        return [r for r in results if r is not None]

    def _run_splitting(self, rows: list[_Row], control: BatchControl) -> list[GenerationResult]:
        """Run rows together; on out-of-memory, retry the halves instead of failing the jobs."""
        try:
            return self._run(rows, control)
        except torch.OutOfMemoryError:
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if len(rows) == 1:
                return [failure("out_of_memory", "the job alone does not fit in device memory")]
            log.warning("out of memory at batch %d; retrying as two halves", len(rows))
            for row in rows:
                sent = row.sent
                row.reset()
                row.sent = sent  # what was streamed stays streamed; greedy reruns repeat it
            half = len(rows) // 2
            return self._run_splitting(rows[:half], control) + self._run_splitting(
                rows[half:], control
            )

    @torch.inference_mode()
    def _run(self, rows: list[_Row], control: BatchControl) -> list[GenerationResult]:
        width = max(len(r.prompt_ids) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor(
            [[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], dtype=torch.long
        )
        attention = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
            dtype=torch.long,
        )
        first = rows[0].request
        sampling = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        criteria = _PerRowStop(rows, width, self.tokenizer, self.eos_ids, control)
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            max_new_tokens=max(r.max_new for r in rows),
            stopping_criteria=StoppingCriteriaList([criteria]),
            pad_token_id=pad,
            max_time=self._time_left(control.deadline),
            **sampling,
        )
        generated = output[:, width:].tolist()
        first_s = (
            None if criteria.first_token_at is None else criteria.first_token_at - self._entered
        )
        results = [
            self._result(row, tokens, len(rows))
            for row, tokens in zip(rows, generated, strict=True)
        ]
        for result in results:
            if result.completion_tokens:
                result.first_token_s = first_s
        return results

    def _time_left(self, deadline: float | None) -> float:
        if deadline is None:
            return self.max_time_s
        return max(0.5, min(self.max_time_s, deadline - time.monotonic()))

    def _result(self, row: _Row, tokens: list[int], batch_size: int) -> GenerationResult:
        count = row.done_at if row.done_at is not None else len(tokens)
        reason = row.reason or "length"
        text = self.tokenizer.decode(tokens[:count], skip_special_tokens=True)
        cut = earliest_stop(text, row.request.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        return GenerationResult(text, reason, len(row.prompt_ids), count, batch_size=batch_size)
