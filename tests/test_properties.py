"""Property-based tests (hypothesis): the config parser on arbitrary text, batch k-means on arbitrary shapes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crosslevel.cluster import batch_kmeans
from crosslevel.config import CHOICES, FIELDS, Config, _field_type, apply_overrides, coerce, load_config, save_config
from crosslevel.errors import CrossLevelError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NONE_WORDS = ("none", "null", "")


def value_of(kind: type) -> st.SearchStrategy:
    """A valid value of a config field type, as Python would hold it."""
    return {
        bool: st.booleans(),
        int: st.integers(-(10**12), 10**12),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=20).filter(lambda t: t.strip().lower() not in NONE_WORDS),
    }[kind]


@FAST
@given(st.sampled_from(sorted(FIELDS)), st.data())
def test_coerce_round_trips_every_field_through_its_text(name: str, data: st.DataObject) -> None:
    kind = _field_type(name)
    value = data.draw(value_of(kind))
    parsed = coerce(name, str(value))
    assert type(parsed) is kind and parsed == value


@FAST
@given(st.sampled_from(sorted(FIELDS)), st.text(max_size=30))
@example("base_lr", "nan")
@example("instance_temperature", "-inf")
@example("epochs", "1.5")
@example("epochs", "9" * 5000)
@example("progress", "2")
@example("resume", "None")
def test_coerce_of_any_text_gives_the_field_type_or_a_clear_error(name: str, text: str) -> None:
    try:
        parsed = coerce(name, text)
    except CrossLevelError as err:
        assert f"'{name}'" in str(err) and repr(text) in str(err)
        return
    kind = _field_type(name)
    assert type(parsed) is kind or (parsed is None and text.strip().lower() in NONE_WORDS)
    if kind is float:
        assert math.isfinite(parsed)  # nan / inf are refused: they would poison training silently


@FAST
@given(st.lists(st.text(max_size=25), max_size=4))
def test_any_override_list_gives_a_valid_config_or_a_clear_error(items: list[str]) -> None:
    try:
        cfg = apply_overrides(Config(), items)
    except CrossLevelError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert isinstance(cfg, Config)


def valid_value_of(name: str) -> st.SearchStrategy:
    """A value of config key ``name`` that its own rules accept: one of its choices, or within its bounds."""
    if name in CHOICES:
        return st.sampled_from(CHOICES[name])
    meta, kind = FIELDS[name].metadata, _field_type(name)
    if kind not in (int, float) or not {"min", "gt", "max", "lt"} & set(meta):
        return value_of(kind)
    low, high = meta.get("min", meta.get("gt", -(10**6))), meta.get("max", meta.get("lt", 10**6))
    if kind is int:
        return st.integers(int(low) + ("gt" in meta), int(high) - ("lt" in meta))
    return st.floats(low, high, exclude_min="gt" in meta, exclude_max="lt" in meta)


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=6, unique=True))
    return [f"{name}={draw(valid_value_of(name))}" for name in names]


@settings(FAST, max_examples=25)
@given(overrides())
def test_saved_config_reads_back_equal(tmp_path_factory: pytest.TempPathFactory, items: list[str]) -> None:
    try:
        cfg = apply_overrides(Config(), items)
    except CrossLevelError:
        assume(False)
    path = Path(tmp_path_factory.mktemp("cfg")) / "config.json"
    save_config(cfg, path)
    assert load_config(path) == cfg


@st.composite
def kmeans_problems(draw: st.DrawFn) -> tuple[torch.Tensor, int, int]:
    rows = draw(st.integers(1, 24))
    dim = draw(st.integers(1, 6))
    values = draw(arrays(np.float64, (rows, dim), elements=st.floats(-100, 100, allow_subnormal=False)))
    return torch.from_numpy(values), draw(st.integers(1, rows)), draw(st.integers(1, 4))


@FAST
@given(kmeans_problems())
def test_batch_kmeans_labels_and_centroids_are_consistent(problem: tuple[torch.Tensor, int, int]) -> None:
    x, k, iters = problem
    labels, centroids = batch_kmeans(x, k, iters)
    assert labels.shape == (len(x),) and labels.dtype == torch.long
    assert centroids.shape == (k, x.shape[1]) and centroids.dtype == x.dtype
    assert int(labels.min()) >= 0 and int(labels.max()) < k
    for j in range(k):  # every centroid is the plain mean of exactly the returned assignment (0 if empty)
        members = x[labels == j]
        expected = members.mean(dim=0) if len(members) else torch.zeros(x.shape[1], dtype=x.dtype)
        torch.testing.assert_close(centroids[j], expected, rtol=1e-9, atol=1e-9)


@FAST
@given(kmeans_problems())
def test_batch_kmeans_with_one_iteration_assigns_to_the_nearest_first_rows(problem: tuple[torch.Tensor, int, int]) -> None:
    x, k, _ = problem
    labels, _ = batch_kmeans(x, k, iters=1)
    distances = torch.cdist(x, x[:k]) ** 2
    chosen = distances.gather(1, labels[:, None]).squeeze(1)
    assert (chosen <= distances.min(dim=1).values * (1 + 1e-9) + 1e-6).all()


@FAST
@given(st.integers(1, 8), st.integers(1, 5), st.integers(-3, 12), st.integers(-1, 3))
def test_batch_kmeans_rejects_impossible_arguments(rows: int, dim: int, k: int, iters: int) -> None:
    x = torch.randn(rows, dim)
    if k >= 1 and iters >= 1:  # k > rows follows the reference (singletons, zero centroids)
        assert batch_kmeans(x, k, iters)[1].shape == (k, dim)
    else:
        with pytest.raises(ValueError, match="batch_kmeans needs"):
            batch_kmeans(x, k, iters)


def test_field_strategies_cover_every_config_type() -> None:
    assert {_field_type(f.name) for f in dataclasses.fields(Config)} <= {bool, int, float, str}
