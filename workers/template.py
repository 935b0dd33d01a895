"""The warm template: a process that has imported what a worker imports and loaded no model,
and forks a new worker on request, so the worker skips the interpreter start and the imports.

The local backend runs it (`python -m workers.template MODEL...`) and speaks to it over its
stdin and stdout, one JSON line each way: `{"ready": true, "gpu": …}` once the imports are done (`gpu`:
whether it may fork workers that use CUDA), then for each request `{"model", "node", "env",
"log"}` the child's `{"pid"}`. It exits when its stdin
closes; the workers it forked live on (they are the backend's, found by their pids).

Forking is safe because this process makes no connection, no CUDA context and no thread of
its own: the child sets its environment (the GPU it may see) before CUDA starts, and opens its
Redis, Postgres and broker connections itself, as a fresh worker does. Only the forking thread
lives on in a child, so torch's idle import-time threads are not carried over.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import IO

from llmq.catalog import ModelSpec

log = logging.getLogger("llmq.template")

READY = "ready"
# What every worker imports before its model loads; the model's architecture comes on top.
PRELOADED = (
    "torch",
    "transformers",
    "safetensors.torch",
    "workers.app",
    "workers.runner",
    "workers.engines.hf",
    "workers.engines.continuous",
    "celery.bin.celery",  # the worker's command line, with its plugins
    "celery.bin.worker",
    "celery.apps.worker",
    "celery.worker.worker",
    "celery.worker.consumer.consumer",
    "celery.concurrency.thread",
    "celery.events.dispatcher",
    "kombu.transport.redis",
)
_private_fds: list[int] = []  # the template's own ends of its pipes, closed in each child


def preload(models: list[str]) -> None:
    """Import every module a worker of these models imports before its first job: the
    engines, torch, transformers and each model's architecture (read from its config, never
    its weights)."""
    for module in PRELOADED:
        importlib.import_module(module)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from llmq.catalog import get_catalog
    from llmq.settings import get_settings

    _warm_transformers()
    catalog, cache_dir = get_catalog(), get_settings().cache_dir
    for name in models:
        with contextlib.suppress(Exception):  # a model that cannot load fails in its worker
            spec = catalog.get(name)
            if not spec.loads_weights:
                continue
            model_class = MODEL_FOR_CAUSAL_LM_MAPPING[_config_class(spec, cache_dir)]
            importlib.import_module(model_class.__module__)


def _warm_transformers() -> None:
    """Build what transformers builds on a process's first load and keeps for the next: its
    table of checkpoint conversions (a few hundred compiled patterns, a third of a small
    model's load). Plain Python objects, no tensors."""
    with contextlib.suppress(Exception):  # an internal that may move between versions
        from transformers import conversion_mapping

        conversion_mapping.get_checkpoint_conversion_mapping("llama")


def _config_class(spec: ModelSpec, cache_dir: Path) -> type:
    """The model's transformers config class, from its directory or its prepared cache."""
    from transformers import AutoConfig

    source = spec.resolve_source()
    directory = source.directory
    if source.gguf_file:
        prepared = sorted(cache_dir.glob(f"{spec.name}-*/config.json"))  # any dtype's will do
        if not prepared:
            raise LookupError(f"{spec.name} is not prepared")
        directory = prepared[0].parent
    return type(AutoConfig.from_pretrained(directory))


def fork_worker(request: dict) -> int:
    """Fork; the child becomes the requested worker and never returns here."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = _become_worker(request)
    except BaseException:  # the child must exit here, never run the loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _become_worker(request: dict) -> int:
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.update(request.get("env") or {})
    out = os.open(request.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the template's pipes to the backend close in the child
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in (out, null, *_private_fds):
        os.close(fd)
    sys.argv = ["llmq-worker", "--model", request["model"]]
    from workers.app import run_worker, worker_argv

    argv = worker_argv(request["model"], request["node"], None, request.get("loglevel", "INFO"))
    return run_worker(argv)


def _reap(*_: object) -> None:
    """Collect the forked workers that have exited, so none stays a zombie."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def cuda_untouched() -> bool:
    """Whether this process has left the CUDA driver alone (it is not loaded), so a child may
    start CUDA on the GPU it is given; a driver started before a fork does not work after it."""
    with open("/proc/self/maps") as f:
        return "libcuda.so" not in f.read()


def serve(requests: IO[str], replies: IO[str]) -> None:
    """Answer fork requests until the backend closes its end."""
    signal.signal(signal.SIGCHLD, _reap)
    print(json.dumps({READY: True, "gpu": cuda_untouched()}), file=replies, flush=True)
    for line in requests:
        try:
            reply = {"pid": fork_worker(json.loads(line))}
        except (ValueError, KeyError, OSError) as exc:
            reply = {"error": str(exc)}
        print(json.dumps(reply), file=replies, flush=True)


def main(models: list[str]) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: os._exit(0))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    replies = os.fdopen(os.dup(1), "w")  # the protocol's own; stray prints go to stderr
    _private_fds.append(replies.fileno())
    os.dup2(2, 1)
    preload(models)
    log.info("warm template ready (pid %d) for %s", os.getpid(), ", ".join(models) or "-")
    serve(sys.stdin, replies)


if __name__ == "__main__":
    main(sys.argv[1:])
