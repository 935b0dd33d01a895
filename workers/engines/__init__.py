"""Engines turn a group of compatible jobs into results. One file per engine."""

from __future__ import annotations

from llmq.catalog import ModelSpec, resolve_engine
from llmq.settings import Settings
from workers.engines.base import ContinuousEngine, Engine


def build_engine(spec: ModelSpec, settings: Settings) -> Engine | ContinuousEngine:
    """Construct (and load) the engine the catalog names for this model; `auto` is resolved by
    the same rule the API reads the model's capabilities from."""
    cuda = spec.engine == "auto" and _cuda()  # echo workers never import torch
    engine = resolve_engine(spec.engine, spec.device, cuda)
    if engine == "echo":
        from workers.engines.echo import EchoEngine

        return EchoEngine(spec)
    if engine == "openai":
        from workers.engines.remote import RemoteEngine

        return RemoteEngine(spec)
    if engine == "hf-continuous":
        from workers.engines.continuous import HFContinuousEngine

        return HFContinuousEngine(spec, settings)
    from workers.engines.hf import HFEngine

    return HFEngine(spec, settings)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
