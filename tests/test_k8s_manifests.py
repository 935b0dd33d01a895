"""The Kubernetes manifests parse and keep the promises the scheduler relies on."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmq.settings import Settings

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"


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
