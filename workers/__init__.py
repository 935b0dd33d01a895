"""Celery workers: one process per (model, device); one engine thread owns the model."""
