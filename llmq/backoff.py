"""When to restart a process that keeps exiting: capped exponential back-off.

Shared by the scheduler's local backend (worker processes) and `llmq dev` (its children), so a
crash loop costs a little CPU and a readable log line instead of a restart storm.
"""

from __future__ import annotations


def restart_delay_s(crashes: int, first_s: float, cap_s: float) -> float:
    """Wait before the next start after `crashes` exits in a row: first_s, doubling, at most cap_s."""
    if crashes <= 0:
        return 0.0
    return min(cap_s, first_s * 2.0 ** (crashes - 1))


def crashes_in_a_row(previous: int, uptime_s: float, healthy_after_s: float) -> int:
    """The count after one more exit: a process that stayed up healthy_after_s starts again at 1."""
    return 1 if uptime_s >= healthy_after_s else previous + 1
