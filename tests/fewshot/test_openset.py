"""Open-set calibration: the threshold keeps the target TPR of known samples, and no more."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.core.scores import LOGIT_SCORES
from lowbit.errors import ConfigError
from lowbit.fewshot.openset import calibrate_threshold, is_known, ood_score


def kept(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores >= threshold))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    # few distinct values: ties are the rule, not the exception
    st.lists(st.integers(-20, 20), min_size=1, max_size=60),
    st.integers(1, 1000),
    st.sampled_from([1.0, 0.1, 1e-3]),
)
def test_threshold_is_the_largest_keeping_the_tpr(values, permille, unit) -> None:
    scores = np.array(values, dtype=np.float64) * unit
    tpr = permille / 1000  # k / 1000: the decimal TPRs a user writes (0.95, 0.999, ...)
    threshold = calibrate_threshold(scores, tpr)
    assert threshold in scores  # the threshold is a calibration score
    assert kept(scores, threshold) >= tpr
    larger = scores[scores > threshold]
    if larger.size:  # the next score up already loses too many known samples
        assert kept(scores, larger.min()) < tpr


@pytest.mark.parametrize(
    ("tpr", "expected"),
    [
        (1.0, 0.1),  # everything kept: the smallest score
        (0.8, 0.5),  # 4 of 5: the ties at 0.5 all stay
        (0.6, 0.5),  # 3 of 5: still 0.5 (0.9 alone keeps only 1 of 5)
        (0.4, 0.5),  # 2 of 5: t = 0.5 keeps 4 of 5, t = 0.9 only 1
        (0.2, 0.9),  # 1 of 5
        (1e-9, 0.9),  # at least one sample is kept
    ],
)
def test_threshold_with_ties_by_hand(tpr: float, expected: float) -> None:
    scores = np.array([0.5, 0.1, 0.9, 0.5, 0.5])
    assert calibrate_threshold(scores, tpr) == expected


def test_ninety_five_percent_of_twenty() -> None:
    scores = np.arange(20, dtype=np.float64)
    threshold = calibrate_threshold(scores, 0.95)
    assert threshold == 1.0 and kept(scores, threshold) == 0.95  # 19 of 20, not 20


@pytest.mark.parametrize("tpr", [0.0, -0.1, 1.01, 2.0, math.nan])
def test_bad_tpr(tpr: float) -> None:
    with pytest.raises(ConfigError):
        calibrate_threshold(np.array([0.1, 0.2]), tpr)


def test_empty_calibration_set() -> None:
    with pytest.raises(ConfigError):
        calibrate_threshold(np.array([]), 0.95)


LOGITS = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-5.0, 10.0, 2.5]])


def by_hand(row: np.ndarray) -> dict[str, float]:
    total = sum(math.exp(v) for v in row)
    return {
        "max_logit": max(row),
        "energy": math.log(total),
        "msp": math.exp(max(row)) / total,
    }


@pytest.mark.parametrize("score", LOGIT_SCORES)
def test_scores_by_hand(score: str) -> None:
    got = ood_score(LOGITS, score)
    expected = [by_hand(row)[score] for row in LOGITS.tolist()]
    # float64 exp/log against Python's: a few ulps apart at most
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)
    assert ood_score(LOGITS, "msp")[1] == pytest.approx(1 / 3, rel=1e-15)


def test_scores_stable_for_large_logits() -> None:
    big = LOGITS + 1000.0  # exp(1000) overflows: the scores must shift by the max first
    assert np.array_equal(ood_score(big, "max_logit"), ood_score(LOGITS, "max_logit") + 1000.0)
    np.testing.assert_allclose(ood_score(big, "msp"), ood_score(LOGITS, "msp"), rtol=1e-12)
    np.testing.assert_allclose(ood_score(big, "energy"), ood_score(LOGITS, "energy") + 1000.0)
    assert np.all(np.isfinite(ood_score(big * 10, "energy")))


def test_higher_means_more_known() -> None:
    confident = np.array([[10.0, 0.0, 0.0]])
    unsure = np.array([[1.0, 1.0, 1.0]])
    for score in LOGIT_SCORES:
        assert ood_score(confident, score)[0] > ood_score(unsure, score)[0], score


def test_unknown_score() -> None:
    with pytest.raises(ConfigError, match="softmax"):
        ood_score(LOGITS, "softmax")


def test_is_known_uses_the_threshold() -> None:
    threshold = ood_score(LOGITS, "max_logit")[0]  # 3.0
    assert is_known(LOGITS, "max_logit", threshold).tolist() == [True, False, True]
