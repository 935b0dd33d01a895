"""Real processes for the tenancy tests: API replicas (uvicorn), a webhook worker, a receiver."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from llmq.processes import stop_process
from tests.conftest import REDIS_PREFIX, REDIS_URL, ROOT, wait_for


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process in its own group, logging to a file under the run's folder."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None):
        self.log_path = ROOT / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 30, group=True)
        self.log.close()


class ApiServer(Process):
    """One API replica: `uvicorn --factory api.app:create_app` on a free port."""

    def __init__(self, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info",
        ]  # fmt: skip
        super().__init__(f"api-{self.port}", argv, env)

    def wait_ready(self, timeout_s: float = 60) -> ApiServer:
        wait_for(
            lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200,
            timeout_s,
            "API ready",
            process=self,
            ignore=(httpx.HTTPError,),
        )
        return self


class WebhookWorker(Process):
    def __init__(self, env: dict[str, str] | None = None):
        argv = [sys.executable, "-m", "cli", "webhook-worker", "--concurrency", "4"]
        super().__init__("webhook-worker", argv, env)

    def wait_ready(self, timeout_s: float = 60) -> WebhookWorker:
        wait_for(lambda: "ready." in self.output(), timeout_s, "webhook worker ready", process=self)
        return self


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers from `script` (status codes), then 200."""

    script: list[int] = field(default_factory=list)
    headers_for: dict[int, dict[str, str]] = field(default_factory=dict)
    delay_s: float = 0.0
    body_bytes: int = 0
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                index = len(receiver.requests)
                receiver.requests.append(
                    Received(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.time(),
                    )
                )
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)  # a slow receiver is what the test is about
                status = receiver.script[index] if index < len(receiver.script) else 200
                self.send_response(status)
                for name, value in receiver.headers_for.get(status, {}).items():
                    self.send_header(name, value)
                payload = b"x" * receiver.body_bytes
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

            do_GET = do_POST

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 60) -> list[Received]:
        wait_for(lambda: len(self.requests) >= count, timeout_s, f"{count} webhook requests")
        return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def redis_values_containing(needle: str) -> list[str]:
    """Redis keys of this run whose value (string, list, hash, set, zset) holds `needle`."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    hits = []
    for key in client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = list(client.hgetall(key).values())
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        else:
            values = []
        if any(needle.encode() in _decoded(v or b"") for v in values):
            hits.append(key.decode())
    return hits


def _decoded(value: bytes) -> bytes:
    """A value plus, for a kombu message, its base64-encoded body in clear."""
    import base64

    try:
        envelope = json.loads(value)
        body = base64.b64decode(envelope["body"]) if isinstance(envelope, dict) else b""
    except (ValueError, KeyError, TypeError):
        body = b""
    return value + b"\n" + body


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)


# Far past the request limits, and well past what the kernel's socket buffers can hold in
# flight (tcp_rmem may grow to 32 MiB), so an answer before half of it is sent came early.
UPLOAD_BYTES = 128 * 1_048_576
UPLOAD_FRAME = b"x" * 65_536
JOB_BODY = (b'{"model": "parked", "prompt": "', b'"}')


def chunked_upload(
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    around: tuple[bytes, bytes] = JOB_BODY,
    content_type: str = "application/json",
    upload_bytes: int = UPLOAD_BYTES,
) -> tuple[int, dict, int]:
    """POST a chunked body over a raw socket: `around[0]`, x's up to `upload_bytes`, then
    `around[1]`; it stops sending once an answer arrives. Returns (status, problem, bytes
    sent)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
    head += "Transfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    frame = b"%x\r\n%s\r\n" % (len(UPLOAD_FRAME), UPLOAD_FRAME)
    opening, closing = around
    outgoing = bytearray(head.encode() + b"%x\r\n%s\r\n" % (len(opening), opening))
    sent, queued, answer = 0, len(outgoing), b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setblocking(False)
        while True:
            if not outgoing and queued < upload_bytes:
                outgoing += frame
                queued += len(frame)
                if queued >= upload_bytes:
                    outgoing += b"%x\r\n%s\r\n0\r\n\r\n" % (len(closing), closing)
            readable, writable, _ = select.select([sock], [sock] if outgoing else [], [], 60)
            if not readable and not writable:
                raise TimeoutError("no answer")
            if readable:
                data = sock.recv(1_048_576)
                answer += data
                if not data or _complete(answer):
                    break
            elif writable:
                n = sock.send(outgoing)
                del outgoing[:n]
                sent += n
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(body), sent


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False
