"""Shaping and merging on their own (the gateway tests cover them end to end)."""

from __future__ import annotations

import copy
import random

import pytest
from bascule_aggregate.settings import Backend
from bascule_aggregate.shaping import MissingField, merge, nesting_exceeds, shape
from bascule_sdk.settings import parse


def random_json(rng: random.Random, budget: int = 4):
    """A random JSON value nested at most ``budget`` deep, keys from a small alphabet (so paths hit)."""
    kind = rng.randrange(4 if budget else 2)
    if kind == 0:
        return rng.choice([None, True, 0, 1.5, "", "x"])
    if kind == 1:
        return rng.randrange(100)
    if kind == 2:
        return [random_json(rng, budget - 1) for _ in range(rng.randrange(3))]
    return {rng.choice("abc"): random_json(rng, budget - 1) for _ in range(rng.randrange(4))}


SAMPLES = [random_json(random.Random(seed), 5) for seed in range(300)]


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def backend(**rules) -> Backend:
    return parse(Backend, {"name": "b", "service": "s", **rules})


@pytest.mark.parametrize("limit", [1, 2, 3, 4])
def test_nesting_limit_matches_depth(limit):
    assert {depth(v) for v in SAMPLES} >= {0, 1, 2, 3, 4, 5}  # the samples cover every depth
    for value in SAMPLES:
        assert nesting_exceeds(value, limit) == (depth(value) > limit), value


RULES = [
    backend(**r)
    for r in ({"allow": ["a", "b.c"]}, {"deny": ["a", "b.c"]}, {"mapping": {"a": "b"}}, {"target": "b"}, {"group": "g"})
]


def test_shaping_leaves_the_raw_answer_intact():
    for value in SAMPLES:
        before = copy.deepcopy(value)
        for rule in RULES:
            try:
                assert isinstance(shape(value, rule), dict)
            except MissingField:
                assert rule.target  # only a target can be missing
        assert value == before  # later backends read fields of the raw answer


def test_deny_of_an_absent_path_changes_nothing():
    assert shape({"a": {"b": 1}}, backend(deny=["x.y", "a.z"])) == {"a": {"b": 1}}


def test_merge_rule():
    merged: dict = {}
    merge(merged, {"ride": {"id": 1, "tags": ["a"]}, "n": 1, "x": {"k": 1}})
    merge(merged, {"ride": {"eta": 4, "tags": ["b"]}, "n": {"v": 2}, "x": None})
    assert merged == {"ride": {"id": 1, "eta": 4, "tags": ["b"]}, "n": {"v": 2}, "x": None}
