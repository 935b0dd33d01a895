"""Backends resize pools: `local` worker processes, or Kubernetes Deployments."""

from __future__ import annotations

from typing import Protocol


class Backend(Protocol):
    name: str

    def current(self, model: str) -> int:
        """Replicas the pool has or is starting, not counting those leaving it."""

    def scale(self, model: str, replicas: int) -> None:
        """Grow or shrink the pool to `replicas`; shrinking drains before it stops."""

    def tick(self) -> int:
        """Housekeeping between decisions; returns how many workers had to be killed."""

    def close(self) -> None:
        """Stop what this backend started (drained), as the scheduler exits."""
