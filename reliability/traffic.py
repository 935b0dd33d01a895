"""Jobs flowing while faults happen: a thread that submits a seeded mix through the API.

Most jobs go to `echo`, some to the tiny transformers model, some carry a webhook, some come
from a key with a budget, and now and then a recent job is cancelled. Every id the API
accepted with a 2xx is kept: the suite checks that each of them still exists.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

WORDS = [
    "queue",
    "worker",
    "batch",
    "token",
    "ledger",
    "budget",
    "redis",
    "postgres",
    "webhook",
    "chaos",
    "model",
    "job",
]


@dataclass
class Submitted:
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> key name
    answers: Counter = field(default_factory=Counter)  # "202", "402", "error:ConnectError", ...
    cancels: Counter = field(default_factory=Counter)


class Traffic:
    def __init__(self, api_url: str, keys: dict[str, dict], hook_url, seed: int):
        self.api_url, self.keys, self.hook_url = api_url, keys, hook_url
        self.rng = random.Random(seed)
        self.result = Submitted()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> Submitted:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.result

    def body(self) -> tuple[str, dict]:
        """(key name, submit body) for the next job."""
        rng = self.rng
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10)))
        roll = rng.random()
        name, model = ("budget", "echo") if 0.25 <= roll < 0.40 else ("plain", "echo")
        if roll < 0.12:
            model = "tiny"
        body: dict = {"model": model, "prompt": prompt, "temperature": 0}
        body["max_tokens"] = rng.randint(2, 6) if model == "tiny" else rng.randint(1, 12)
        if (0.12 <= roll < 0.25) or (roll < 0.12 and rng.random() < 0.4) or rng.random() < 0.1:
            body["webhook_url"] = self.hook_url(name)
        return name, body

    def _loop(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=10) as client:
            recent: list[tuple[str, str]] = []
            while not self._stop.is_set():
                name, body = self.body()
                auth = {"Authorization": f"Bearer {self.keys[name]['key']}"}
                try:
                    response = client.post("/v1/jobs", json=body, headers=auth)
                    self.result.answers[str(response.status_code)] += 1
                    if 200 <= response.status_code < 300:
                        job_id = response.json()["id"]
                        self.result.accepted[job_id] = name
                        recent = [*recent[-49:], (job_id, name)]
                    if recent and self.rng.random() < 0.04:
                        job_id, owner = self.rng.choice(recent)
                        key = {"Authorization": f"Bearer {self.keys[owner]['key']}"}
                        answer = client.post(f"/v1/jobs/{job_id}/cancel", headers=key)
                        self.result.cancels[str(answer.status_code)] += 1
                except httpx.HTTPError as exc:
                    self.result.answers[f"error:{type(exc).__name__}"] += 1
                    time.sleep(0.1)
                self._stop.wait(self.rng.uniform(0.02, 0.12))
