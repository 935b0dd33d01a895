"""How llmq runs Flower: one command line for `llmq flower`, `llmq dev` and compose.

The password travels in the environment (`FLOWER_BASIC_AUTH`), not on the command line where
`ps` shows it. `max_tasks` bounds Flower's memory; offline workers (each restart is a new
node name) are forgotten after a while.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from llmq.settings import Settings


def flower_argv(
    settings: Settings,
    *,
    port: int | None = None,
    address: str = "127.0.0.1",
    loglevel: str = "warning",
) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "flower",
        f"--port={port or settings.flower_port}", f"--address={address}",
        f"--max_tasks={settings.flower_max_tasks}",
        f"--purge_offline_workers={settings.flower_purge_offline_workers_s}",
        f"--logging={loglevel.lower()}",
    ]  # fmt: skip


def flower_env(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    if settings.flower_basic_auth:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    return env
