"""The Kubernetes manifests parse and keep the promises the scheduler relies on."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmq.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _docs() -> list[dict]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_workers_get_a_gpu_and_a_grace_period_longer_than_the_drain():
    config = next(d for d in _docs() if d["kind"] == "ConfigMap")
    drain_s = float(config["data"]["LLMQ_DRAIN_TIMEOUT_S"])
    workers = [
        d for d in _docs()
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith(Settings().k8s_deployment_prefix)
    ]  # fmt: skip
    assert workers
    for dep in workers:
        pod = dep["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > drain_s
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert dep["spec"]["replicas"] == 0  # the scheduler owns the size


def test_scheduler_may_only_scale_the_worker_deployments():
    role = next(d for d in _docs() if d["kind"] == "Role")
    workers = {
        d["metadata"]["name"]
        for d in _docs()
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("llmq-worker-")
    }
    [rule] = role["rules"]
    assert rule["resources"] == ["deployments/scale"]
    assert set(rule["resourceNames"]) == workers
    assert set(rule["verbs"]) <= {"get", "patch", "update"}


def _containers() -> list[dict]:
    return [
        c
        for d in _docs()
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def _argv(container: dict) -> list[str]:
    return container.get("command", []) + container.get("args", [])


LONG_RUNNING = {"api", "worker", "webhook-worker", "scheduler"}


def test_webhook_sender_runs_and_every_process_gets_the_secret_key():
    runs = {_argv(c)[1] for c in _containers() if _argv(c)[:1] == ["llmq"]}
    assert runs >= LONG_RUNNING, LONG_RUNNING - runs
    (sender,) = [
        d for d in _docs() if d["kind"] == "Deployment"
        and _argv(d["spec"]["template"]["spec"]["containers"][0])[:2] == ["llmq", "webhook-worker"]
    ]  # fmt: skip
    assert sender["spec"]["replicas"] >= 1
    for container in _containers():
        if _argv(container)[1] in LONG_RUNNING:
            secrets = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
            assert "llmq-secrets" in secrets, container["name"]
    # The operator creates the Secret; the README says how, with the secret key in it.
    readme = (K8S / "README.md").read_text()
    assert "kubectl -n llmq create secret generic llmq-secrets" in readme
    assert "LLMQ_SECRET_KEY" in readme and "LLMQ_DATABASE_URL" in readme


def test_no_password_is_shipped_or_passed_on_a_command_line():
    for path in K8S.glob("*.yaml"):
        assert "change-me" not in path.read_text(), path.name
    assert not [d for d in _docs() if d["kind"] == "Secret"]  # made by the operator
    for container in _containers():
        argv = " ".join(_argv(container)).lower()
        assert "basic-auth" not in argv and "password" not in argv and "$" not in argv, argv
    (flower,) = [c for c in _containers() if _argv(c)[:2] == ["llmq", "flower"]]
    (auth,) = [e for e in flower["env"] if e["name"] == "LLMQ_FLOWER_BASIC_AUTH"]
    assert auth["valueFrom"]["secretKeyRef"]["name"] == "llmq-flower"
    assert "kubectl -n llmq create secret generic llmq-flower" in (K8S / "README.md").read_text()


def test_api_metrics_are_scraped_on_the_internal_port_only():
    port = Settings.model_fields["api_metrics_port"].default
    (api,) = [
        d for d in _docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "llmq-api"
    ]
    pod = api["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == port and ports["http"] != port
    (service,) = [
        d for d in _docs() if d["kind"] == "Service" and d["metadata"]["name"] == "llmq-api"
    ]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}


def test_only_worker_pods_run_the_image_with_torch():
    for container in _containers():
        worker = _argv(container)[:2] == ["llmq", "worker"]
        assert container["image"] == ("llmq:cuda" if worker else "llmq:api"), _argv(container)
