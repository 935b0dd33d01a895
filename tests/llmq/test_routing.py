"""Aliases: the pure choice of a model (rules, then a sticky weighted variant) and the
catalog's checks of `[aliases.<name>]` tables."""

from __future__ import annotations

from collections import Counter

import pytest

from llmq.catalog import load_catalog
from llmq.errors import CatalogError
from llmq.routing import Alias, Choice, Facts, bucket, pick_variant, route

ALIAS = Alias(
    name="chat",
    sticky="user",
    variants=[
        {"name": "control", "model": "small", "weight": 90},
        {"name": "candidate", "model": "tiny", "weight": 10},
    ],
    rules=[
        {"when": {"prompt_tokens_over": 2000}, "model": "big", "name": "long"},
        {"when": {"keyword": "Proof"}, "model": "strong"},
        {"when": {"max_tokens_over": 512}, "model": "big"},
        {"when": {"metadata": {"tier": "gold"}}, "model": "strong", "name": "gold"},
        {"when": {"keyword": "poem", "metadata": {"lang": "fr"}}, "model": "strong"},
    ],
)
USER = "u-0"  # lands on "control"


@pytest.mark.parametrize(
    ("facts", "choice"),
    [
        (Facts("k", USER, "hi", 2), Choice("small", "control")),
        (Facts("k", USER, "x" * 8004, 8004), Choice("big", "long", rule=True)),
        (Facts("k", USER, "x" * 8000, 8000), Choice("small", "control")),  # 2000 is not over
        (Facts("k", USER, "a PROOF of it", 13), Choice("strong", "rule-2", rule=True)),
        (Facts("k", USER, "hi", 2, max_tokens=513), Choice("big", "rule-3", rule=True)),
        (Facts("k", USER, "hi", 2, max_tokens=512), Choice("small", "control")),
        (Facts("k", USER, "hi", 2, max_tokens=None), Choice("small", "control")),
        (Facts("k", USER, "hi", 2, metadata={"tier": "gold"}), Choice("strong", "gold", rule=True)),
        (Facts("k", USER, "hi", 2, metadata={"tier": "silver"}), Choice("small", "control")),
        # every condition of a rule must hold
        (Facts("k", USER, "a poem", 6, metadata={"lang": "fr"}), Choice("strong", "rule-5", True)),
        (Facts("k", USER, "a poem", 6, metadata={"lang": "en"}), Choice("small", "control")),
        # the first matching rule wins
        (
            Facts("k", USER, "proof " * 2000, 12000, metadata={"tier": "gold"}),
            Choice("big", "long", rule=True),
        ),
    ],
)
def test_rules_first_in_order_else_the_variant(facts, choice):
    assert route(ALIAS, facts) == choice


def test_the_variant_is_sticky_per_user_or_per_key():
    assert route(ALIAS, Facts("k1", "someone")) == route(ALIAS, Facts("k2", "someone"))
    by_key = Alias(name="chat", variants=ALIAS.variants)  # sticky = "key"
    for key in ("k1", "k2", "k3"):
        picks = {route(by_key, Facts(key, f"user-{i}")).variant for i in range(50)}
        assert len(picks) == 1
    # sticky = "user" with no user named falls back to the key
    assert route(ALIAS, Facts("k9")) == route(by_key, Facts("k9", "whoever"))


def test_weights_split_many_sticky_ids_as_they_say():
    counts = Counter(route(ALIAS, Facts("k", f"user-{i}")).variant for i in range(10_000))
    assert abs(counts["control"] / 10_000 - 0.9) < 0.02


@pytest.mark.parametrize(
    ("point", "expected"), [(0.0, "a"), (0.249, "a"), (0.25, "c"), (0.999, "c")]
)
def test_points_map_onto_cumulative_weights_skipping_zero_weights(point, expected):
    variants = Alias(
        name="x",
        variants=[
            {"name": "a", "model": "m", "weight": 1},
            {"name": "b", "model": "m", "weight": 0},
            {"name": "c", "model": "m", "weight": 3},
        ],
    ).variants
    assert pick_variant(variants, point).name == expected


def test_buckets_depend_on_the_alias_and_the_sticky_id_only():
    assert bucket("chat", "user:1") == bucket("chat", "user:1")
    assert bucket("chat", "user:1") != bucket("other", "user:1")
    assert 0 <= bucket("chat", "user:1") < 1


MODELS = '[models.a]\nengine = "echo"\n[models.b]\nengine = "echo"\n'


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('[aliases.a]\nvariants = [{ name = "v", model = "b", weight = 1 }]\n', "a model has"),
        ('[aliases.x]\nvariants = [{ name = "v", model = "zz", weight = 1 }]\n', "'zz'"),
        ('[aliases.x]\nvariants = [{ name = "v", model = "x", weight = 1 }]\n', "'x'"),
        ('[aliases.x]\nvariants = [{ name = "v", model = "a", weight = 0 }]\n', "add up"),
        ('[aliases.x]\nvariants = [{ name = "v", model = "a", weight = -1 }]\n', "weight"),
        ("[aliases.x]\nvariants = []\n", "variants"),
        (
            '[aliases.x]\nsticky = "ip"\nvariants = [{ name = "v", model = "a", weight = 1 }]',
            "sticky",
        ),
        (
            '[aliases.x]\nvariants = [{ name = "v", model = "a", weight = 1 }]\n'
            'rules = [{ when = {}, model = "b" }]\n',
            "needs a condition",
        ),
        (
            '[aliases.x]\nvariants = [{ name = "v", model = "a", weight = 1 }]\n'
            'rules = [{ when = { words_over = 3 }, model = "b" }]\n',
            "words_over",
        ),
        (
            '[aliases.x]\nvariants = [{ name = "v", model = "a", weight = 1 }]\n'
            'rules = [{ when = { keyword = "k" }, model = "nope" }]\n',
            "'nope'",
        ),
        (
            '[aliases.x]\nvariants = [{ name = "v", model = "a", weight = 1 },'
            ' { name = "v", model = "b", weight = 1 }]\n',
            "must differ: v",
        ),
        ("[aliases.x]\nweights = 3\n", "weights"),
    ],
)
def test_a_bad_alias_names_the_alias_and_the_fault(tmp_path, body, fragment):
    path = tmp_path / "models.toml"
    path.write_text(MODELS + body)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert "alias" in str(info.value) and fragment in str(info.value)


def test_a_good_alias_loads_beside_the_models(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        MODELS + '[aliases.x]\nvariants = [{ name = "v", model = "a", weight = 1 }]\n'
        'rules = [{ when = { keyword = "k" }, model = "b" }]\n'
    )
    catalog = load_catalog(path)
    assert catalog.names() == ["a", "b"] and catalog.knows("x") and "x" not in catalog
    assert catalog.aliases["x"].rules[0].name == "rule-1"
