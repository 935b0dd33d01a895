"""The Kubernetes backend through the official client, against a small scale-subresource server."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client as k8s

from llmq.settings import get_settings
from scheduler.backends.kubernetes import KubernetesBackend
from scheduler.policy import Knobs, Memory, Pool, decide

SCALE_PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$")


class FakeApiServer:
    """Serves GET and PATCH of deployments/<name>/scale and records every call."""

    def __init__(self, replicas: dict[tuple[str, str], int]):
        self.replicas = dict(replicas)
        self.calls: list[tuple[str, str, str | None, dict | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _scale(self, ns: str, name: str) -> None:
                n = server.replicas[(ns, name)]
                body = json.dumps({
                    "apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"replicas": n}, "status": {"replicas": n, "selector": f"app={name}"},
                }).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, method: str) -> None:
                match = SCALE_PATH.match(self.path.split("?")[0])
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length)) if length else None
                server.calls.append((method, self.path, self.headers["Content-Type"], payload))
                if not match or (match[1], match[2]) not in server.replicas:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if method == "PATCH":
                    server.replicas[(match[1], match[2])] = payload["spec"]["replicas"]
                self._scale(match[1], match[2])

            def do_GET(self) -> None:
                self._route("GET")

            def do_PATCH(self) -> None:
                self._route("PATCH")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def apiserver():
    server = FakeApiServer({("llmq", "llmq-worker-alpha"): 0, ("llmq", "llmq-worker-beta"): 3})
    yield server
    server.close()


def _backend(url: str) -> KubernetesBackend:
    config = k8s.Configuration(host=url)
    return KubernetesBackend(get_settings(), k8s.AppsV1Api(k8s.ApiClient(config)))


def test_reads_and_sets_the_scale_of_one_deployment_per_model(apiserver):
    backend = _backend(apiserver.url)
    assert backend.current("alpha") == 0 and backend.current("beta") == 3
    assert backend.running("beta") == 3

    backend.scale("alpha", 2)
    backend.scale("beta", 1)
    assert apiserver.replicas == {("llmq", "llmq-worker-alpha"): 2, ("llmq", "llmq-worker-beta"): 1}
    patches = [c for c in apiserver.calls if c[0] == "PATCH"]
    assert [(p[1], p[3]) for p in patches] == [
        ("/apis/apps/v1/namespaces/llmq/deployments/llmq-worker-alpha/scale", {"spec": {"replicas": 2}}),
        ("/apis/apps/v1/namespaces/llmq/deployments/llmq-worker-beta/scale", {"spec": {"replicas": 1}}),
    ]  # fmt: skip
    assert all("patch" in (p[2] or "") for p in patches)  # a merge/strategic patch body

    backend.tick()  # forget cached sizes: the next decision reads afresh
    gets_before = sum(1 for c in apiserver.calls if c[0] == "GET")
    assert backend.current("alpha") == 2
    assert sum(1 for c in apiserver.calls if c[0] == "GET") == gets_before + 1


def test_a_policy_decision_becomes_one_patch(apiserver):
    backend = _backend(apiserver.url)
    pool = Pool("alpha", waiting=1, in_flight=0, current=backend.current("alpha"),
                min_replicas=0, max_replicas=4, target_backlog_per_replica=8)  # fmt: skip
    decision = decide(pool, Memory(), 0.0, Knobs())
    assert decision.changes and decision.desired == 1
    backend.scale("alpha", decision.desired)
    assert apiserver.replicas[("llmq", "llmq-worker-alpha")] == 1


def test_a_missing_deployment_is_an_error_not_a_silent_zero(apiserver):
    backend = _backend(apiserver.url)
    with pytest.raises(k8s.ApiException) as err:
        backend.current("gamma")
    assert err.value.status == 404


def test_a_scheduler_step_scales_the_deployment_and_records_it(client, auth, redis_client):
    """The loop's step with the Kubernetes backend: a waiting job becomes one PATCH, one
    scaling_events row, the gauges and the pool state that GET /v1/models shows."""
    import sqlalchemy as sa

    from llmq import events, metrics
    from llmq.catalog import get_catalog
    from llmq.db import session_scope
    from llmq.models import ScalingEvent
    from llmq.queues import make_celery
    from scheduler.main import Scheduler
    from tests.conftest import REDIS_PREFIX

    model = "unserved"
    server = FakeApiServer({("llmq", f"llmq-worker-{model}"): 0})
    try:
        settings = get_settings()
        sched = Scheduler(
            settings, get_catalog(), _backend(server.url), make_celery(settings), [model]
        )
        job = client.post("/v1/jobs", json={"model": model, "prompt": "x"}, headers=auth).json()
        [decision] = sched.step()
        assert (decision.current, decision.desired) == (0, 1)
        assert server.replicas[("llmq", f"llmq-worker-{model}")] == 1
        with session_scope() as session:
            event = session.scalars(
                sa.select(ScalingEvent)
                .where(ScalingEvent.model == model)
                .order_by(ScalingEvent.id.desc())
            ).first()
        assert (event.from_replicas, event.to_replicas, event.backend) == (0, 1, "kubernetes")
        assert event.reason == "scale_up_from_zero" and event.waiting >= 1
        assert metrics.DESIRED_REPLICAS.labels(model)._value.get() == 1
        state = events.read_pools(redis_client, REDIS_PREFIX)[model]
        assert state["desired_replicas"] == 1 and state["backend"] == "kubernetes"

        def pool() -> dict:
            models = client.get("/v1/models", headers=auth).json()["data"]
            return next(m for m in models if m["id"] == model)["pool"]

        assert pool()["desired_replicas"] == 1
        assert pool()["actual_replicas"] == 0  # the pods it counted before the PATCH

        def rows() -> int:
            with session_scope() as session:
                return session.scalar(sa.select(sa.func.count()).where(ScalingEvent.model == model))

        patches, before = len([c for c in server.calls if c[0] == "PATCH"]), rows()
        sched.step()  # nothing changed: no second PATCH, no second row
        assert len([c for c in server.calls if c[0] == "PATCH"]) == patches
        assert rows() == before
        assert pool()["actual_replicas"] == 1  # read afresh from the Deployment
    finally:
        server.close()
        with session_scope() as session:
            session.execute(sa.text("DELETE FROM jobs WHERE id = :id"), {"id": job["id"]})
        from llmq.queues import queue_keys

        redis_client.delete(*queue_keys(model, REDIS_PREFIX))
