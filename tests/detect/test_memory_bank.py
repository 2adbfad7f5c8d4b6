"""The integer memory bank against brute force, the coreset's determinism and radii, the bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.detect.memory_bank import (
    INT64_LIMIT,
    anomaly_map,
    distance_bound,
    fit_memory_bank,
    greedy_coreset,
    image_scores,
    nearest_squared_distance,
    patch_vectors,
)


def brute_force(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Return min over bank rows of the squared distance, by the textbook pairwise formula."""
    differences = queries.astype(np.int64)[:, None, :] - bank.astype(np.int64)[None, :, :]
    return np.min((differences**2).sum(axis=2), axis=1)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    code_range=st.sampled_from([(0, 1), (0, 3), (-1, 1), (0, 15), (-128, 127), (0, 2**20)]),
    channels=st.integers(1, 9),
    n_queries=st.integers(1, 12),
    n_bank=st.integers(1, 12),
)
def test_nearest_distance_equals_brute_force(seed, code_range, channels, n_queries, n_bank):
    rng = np.random.default_rng(seed)
    low, high = code_range
    queries = rng.integers(low, high + 1, size=(n_queries, channels))
    bank = rng.integers(low, high + 1, size=(n_bank, channels))
    got = nearest_squared_distance(queries, bank, code_range)
    assert got.dtype == np.int64 and np.array_equal(got, brute_force(queries, bank))


def test_anomaly_map_of_a_fitted_bank_equals_brute_force():
    rng = np.random.default_rng(0)
    good = rng.integers(0, 4, size=(3, 5, 4, 4), dtype=np.uint8)  # N, C, H, W of 2-bit codes
    test = rng.integers(0, 4, size=(2, 5, 4, 4), dtype=np.uint8)
    bank = fit_memory_bank(good, max_entries=1000, code_range=(0, 3))  # every distinct patch
    assert len(bank) == len(np.unique(patch_vectors(good), axis=0))
    maps = anomaly_map(bank, test, (0, 3))
    expected = brute_force(patch_vectors(test), patch_vectors(good)).reshape(2, 4, 4)
    assert np.array_equal(maps, expected)
    assert np.array_equal(anomaly_map(bank, good, (0, 3)), np.zeros((3, 4, 4), dtype=np.int64))
    assert np.array_equal(image_scores(maps), expected.reshape(2, -1).max(axis=1))


def test_patch_vectors_order():
    codes = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    vectors = patch_vectors(codes)
    assert vectors.shape == (8, 3)
    assert np.array_equal(vectors[5], codes[1, :, 0, 1])  # image 1, row 0, column 1


def test_coreset_is_deterministic_and_radii_do_not_increase():
    rng = np.random.default_rng(1)
    vectors = rng.integers(0, 4, size=(300, 6))
    picks, radii = greedy_coreset(vectors, 40, (0, 3))
    again, radii_again = greedy_coreset(vectors.copy(), 40, (0, 3))
    assert np.array_equal(picks, again) and np.array_equal(radii, radii_again)
    assert picks[0] == 0 and len(set(picks.tolist())) == len(picks) == 40
    assert np.all(np.diff(radii) <= 0)
    for count in (1, 10, 40):  # radius after `count` picks, by brute force
        assert radii[count - 1] == brute_force(vectors, vectors[picks[:count]]).max()
    # the bank's nearest distance of every row is at most the final radius
    bank = fit_memory_bank(vectors.T.reshape(1, 6, 300, 1), 40, (0, 3))
    assert len(bank) == 40
    assert nearest_squared_distance(vectors, bank, (0, 3)).max() == radii[-1]


def test_coreset_stops_when_every_row_is_covered():
    vectors = np.array([[0, 0], [1, 1], [0, 0], [1, 1]])
    picks, radii = greedy_coreset(vectors, 10, (0, 1))
    assert np.array_equal(picks, [0, 1]) and np.array_equal(radii, [2, 0])


def test_overflow_bound():
    assert distance_bound((0, 3), 64) == 4 * 64 * 9  # ||a - b||^2 <= C (high - low)^2 <= this
    assert distance_bound((-128, 127), 512) == 4 * 512 * 128**2
    # the widest codes that still fit: C m^2 * 4 <= 2^63 - 1
    widest = 2**30 - 1
    assert distance_bound((0, widest), 2) <= INT64_LIMIT < distance_bound((0, widest + 1), 2)
    with pytest.raises(ValueError, match="exceeds int64"):
        nearest_squared_distance(np.zeros((1, 2), int), np.zeros((1, 2), int), (0, widest + 1))
    extreme = np.array([[0, 0], [widest, widest]], dtype=np.int64)  # dots in int64, no float
    got = nearest_squared_distance(extreme[::-1], extreme[:1], (0, widest))
    assert np.array_equal(got, [2 * widest**2, 0])


def test_codes_outside_the_range_are_refused():
    with pytest.raises(ValueError, match="outside"):
        nearest_squared_distance(np.array([[4]]), np.array([[0]]), (0, 3))
    with pytest.raises(ValueError, match="integers"):
        nearest_squared_distance(np.array([[0.5]]), np.array([[0]]), (0, 3))
