"""The `llmq` command: the top layer, the one package that may start every process.

Nothing in llmq/, api/, workers/ or scheduler/ imports it.
"""
