"""Webhook receivers on loopback. `Receiver` verifies each Standard Webhooks signature and keeps
the ids it accepted. A delivery that fails verification is answered 401 and counted, so
the sender retries it and the suite sees the fault."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


class LoopbackHooks:
    """An HTTP server on 127.0.0.1 whose POSTs go to `accept(name, headers, body)`, where
    `name` is the last part of the path; it answers with the status `accept` returns."""

    def __init__(self) -> None:
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                name = self.path.rstrip("/").rsplit("/", 1)[-1]
                code = hooks.accept(name, dict(self.headers.items()), body)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True).start()

    def accept(self, name: str, headers: dict[str, str], body: bytes) -> int:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.server.shutdown()
            self.server.server_close()


class CountingReceiver(LoopbackHooks):
    """Answers 200 to every delivery and counts them (`url` takes them all)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        super().__init__()
        self.url = f"{self.base_url}/any"

    def accept(self, name: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.count += 1
        return 200


class Receiver(LoopbackHooks):
    """`url_for(name)` is the endpoint of the key `name`, verified with that key's secret."""

    def __init__(self, secrets_by_name: dict[str, str]):
        self.verifiers = {name: Webhook(secret) for name, secret in secrets_by_name.items()}
        self.lock = threading.Lock()
        self.received: dict[str, int] = {}  # webhook-id -> verified deliveries
        self.status: dict[str, str] = {}  # webhook-id -> the job status the event carried
        self.bodies: dict[str, set[bytes]] = {}  # webhook-id -> distinct bodies seen
        self.rejected = 0
        super().__init__()

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def accept(self, name: str, headers: dict[str, str], body: bytes) -> int:
        verifier = self.verifiers.get(name)
        try:
            if verifier is None:
                raise WebhookVerificationError(f"no secret for {name!r}")
            verifier.verify(body, {k.lower(): v for k, v in headers.items()})
            event = json.loads(body)
        except (WebhookVerificationError, ValueError):
            with self.lock:
                self.rejected += 1
            return 401
        msg_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        with self.lock:
            self.received[msg_id] = self.received.get(msg_id, 0) + 1
            self.status[msg_id] = event.get("data", {}).get("status", "")
            self.bodies.setdefault(msg_id, set()).add(body)
        return 200

    def snapshot(self) -> tuple[dict[str, int], dict[str, str], dict[str, int]]:
        """(deliveries per id, status per id, distinct bodies per id), copied under the lock."""
        with self.lock:
            return (
                dict(self.received),
                dict(self.status),
                {k: len(v) for k, v in self.bodies.items()},
            )
