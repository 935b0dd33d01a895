"""Aliases: a name clients send as `model` that the API turns into a concrete model before
the job exists.

An alias (`[aliases.<name>]` in `models.toml`) has weighted variants for A/B tests and
complexity rules. `route` is pure: the rules first, in order, the first whose conditions all
hold wins; else a variant drawn by a stable hash of (alias, sticky id) mapped onto the
cumulative weights, so the same key (or end user) always lands on the same variant, and
many of them split as the weights say.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Sticky = Literal["key", "user"]
BYTES_PER_TOKEN = 4  # about what BPE tokenizers average on English text
HASH_SPACE = 2**64


class Condition(BaseModel):
    """What a rule asks of a request; every condition given must hold."""

    model_config = ConfigDict(extra="forbid")
    prompt_tokens_over: int | None = Field(None, ge=0, description="Estimated prompt tokens")
    max_tokens_over: int | None = Field(None, ge=0, description="The request's own max_tokens")
    keyword: str | None = Field(None, min_length=1, description="In the input, any case")
    metadata: dict[str, str] | None = Field(None, min_length=1, description="Every pair equal")

    @model_validator(mode="after")
    def _some(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError(
                "a rule's `when` needs a condition: prompt_tokens_over, max_tokens_over, "
                "keyword or metadata"
            )
        return self


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: Condition
    model: str
    name: str = ""  # recorded as the job's variant; `rule-<n>` when left out


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    model: str
    weight: int = Field(ge=0)


class Alias(BaseModel):
    """One `[aliases.<name>]` table."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    sticky: Sticky = "key"
    variants: list[Variant] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Alias:
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("the variants' weights must add up to more than 0")
        for i, rule in enumerate(self.rules, 1):
            rule.name = rule.name or f"rule-{i}"
        names = [v.name for v in self.variants] + [r.name for r in self.rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant and rule names must differ: {', '.join(repeated)}")
        return self

    def models(self) -> list[str]:
        """Every model the alias may pick."""
        return list(dict.fromkeys([v.model for v in self.variants] + [r.model for r in self.rules]))


@dataclass(frozen=True)
class Facts:
    """What routing may read of a request, known before the job exists."""

    key_id: str
    user: str | None = None
    text: str = ""  # the prompt, or the messages' contents joined
    text_bytes: int = 0
    max_tokens: int | None = None  # as the request gave it; None matches no max_tokens rule
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return math.ceil(self.text_bytes / BYTES_PER_TOKEN)


@dataclass(frozen=True)
class Choice:
    model: str
    variant: str  # the variant's name, or the rule's when a rule picked
    rule: bool = False


def matches(when: Condition, facts: Facts) -> bool:
    """Whether every condition the rule gives holds (a request without `max_tokens` is
    over no bound)."""
    meta = when.metadata or {}
    return all(
        (
            when.prompt_tokens_over is None or facts.prompt_tokens > when.prompt_tokens_over,
            when.max_tokens_over is None or (facts.max_tokens or 0) > when.max_tokens_over,
            when.keyword is None or when.keyword.casefold() in facts.text.casefold(),
            all(k in facts.metadata and str(facts.metadata[k]) == v for k, v in meta.items()),
        )
    )


def sticky_id(alias: Alias, facts: Facts) -> str:
    """Who stays on one variant: the key, or the end user (the key when none is named)."""
    if alias.sticky == "user" and facts.user:
        return f"user:{facts.user}"
    return f"key:{facts.key_id}"


def bucket(alias_name: str, sticky: str) -> float:
    """A point in [0, 1) that depends only on the alias and the sticky id."""
    digest = hashlib.sha256(f"{alias_name}\x00{sticky}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / HASH_SPACE


def pick_variant(variants: list[Variant], point: float) -> Variant:
    """The variant whose share of the cumulative weights holds `point`."""
    total = sum(v.weight for v in variants)
    target = point * total
    running = 0
    for variant in variants:
        running += variant.weight
        if target < running:
            return variant
    return next(v for v in reversed(variants) if v.weight > 0)


def route(alias: Alias, facts: Facts) -> Choice:
    for rule in alias.rules:
        if matches(rule.when, facts):
            return Choice(rule.model, rule.name, rule=True)
    variant = pick_variant(alias.variants, bucket(alias.name, sticky_id(alias, facts)))
    return Choice(variant.model, variant.name)
