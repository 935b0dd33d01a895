"""The `echo` engine: deterministic per-job text, token counts and finish reasons in a mixed batch."""

from llmq.catalog import ModelSpec
from workers.engines.base import BatchControl, GenerationRequest
from workers.engines.echo import EchoEngine


def test_mixed_batch():
    engine = EchoEngine(ModelSpec(name="e", engine="echo", context_length=50))
    requests = [
        GenerationRequest("a", "one two three four five", None, max_tokens=3),
        GenerationRequest("b", "one two three", None, max_tokens=10),
        GenerationRequest(
            "c", None, [{"role": "user", "content": "alpha beta gamma"}], 10, stop=["beta"]
        ),
        GenerationRequest("d", "word " * 60, None, max_tokens=2),
    ]
    streamed: dict[str, str] = {}
    control = BatchControl(is_cancelled=lambda job_id: job_id == "b", on_text=streamed.update)
    results = engine.generate(requests, control)
    a, b, c, d = results
    assert (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) == (
        "one two three",
        "length",
        5,
        3,
    )
    assert (b.text, b.finish_reason) == ("one two three", "cancelled")
    assert (c.text, c.finish_reason) == ("alpha ", "stop")
    assert d.error["code"] == "context_length_exceeded" and d.text is None
    assert all(r.batch_size == 4 for r in results)
    assert streamed == {"a": a.text, "b": b.text, "c": c.text}
