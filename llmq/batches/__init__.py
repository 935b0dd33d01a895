"""Batches: OpenAI's asynchronous Batch API over ordinary jobs. `validate` reads an input
file into jobs, `records` creates, lists and cancels batches, `finalize` writes their output
and error files exactly once."""
