"""llmq: asynchronous LLM inference jobs on your own GPUs."""

__version__ = "0.1.0"
