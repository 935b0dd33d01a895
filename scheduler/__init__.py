"""The scheduler: resizes each model's worker pool from its queue and sweeps lost work.

Not built yet: until it is, run one worker per model (`llmq worker --model NAME`), as
`llmq dev` does.
"""
