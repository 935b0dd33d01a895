"""Kubernetes backend: one worker Deployment per model, resized through its scale subresource.

Draining is Kubernetes's own: a pod removed from the Deployment gets SIGTERM (Celery's warm
shutdown: stop consuming, finish what it holds) and is killed only after the pod's
`terminationGracePeriodSeconds`, which the manifests set longer than the drain. The jobs of a
killed pod go back to the queue through the sweeper once their leases run out.
"""

from __future__ import annotations

import logging

from kubernetes import client, config

from llmq.settings import Settings

log = logging.getLogger("llmq.scheduler")


def default_api() -> client.AppsV1Api:
    """In a pod: its service account; elsewhere: the user's kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.AppsV1Api()


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, settings: Settings, api: client.AppsV1Api | None = None):
        self.api = api or default_api()
        self.namespace = settings.k8s_namespace
        self.prefix = settings.k8s_deployment_prefix
        self._spec: dict[str, int] = {}
        self._ready: dict[str, int] = {}

    def deployment(self, model: str) -> str:
        return f"{self.prefix}{model}"

    def _read(self, model: str) -> None:
        scale = self.api.read_namespaced_deployment_scale(self.deployment(model), self.namespace)
        self._spec[model] = int(scale.spec.replicas or 0) if scale.spec else 0
        self._ready[model] = int(scale.status.replicas or 0) if scale.status else 0

    def current(self, model: str) -> int:
        if model not in self._spec:
            self._read(model)
        return self._spec[model]

    def running(self, model: str) -> int:
        if model not in self._ready:
            self._read(model)
        return self._ready[model]

    def scale(self, model: str, replicas: int) -> None:
        name = self.deployment(model)
        log.info("scaling deployment %s/%s to %d", self.namespace, name, replicas)
        scale = self.api.patch_namespaced_deployment_scale(
            name, self.namespace, {"spec": {"replicas": replicas}}
        )
        self._spec[model] = int(scale.spec.replicas or 0) if scale.spec else replicas

    def tick(self) -> int:
        """Forget cached sizes, so each decision reads the Deployments afresh."""
        self._spec.clear()
        self._ready.clear()
        return 0

    def close(self) -> None:
        """Pods belong to Kubernetes; leaving the Deployments as they are is right."""
