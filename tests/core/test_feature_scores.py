"""Feature scores against hand-computed cases and against textbook formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lowbit.core.feature_scores import (
    add_class,
    drop_class,
    feature_score,
    fit_feature_stats,
    normalize_rows,
    stats_from_bytes,
    stats_to_bytes,
)
from lowbit.core.scores import SCORES, all_scores, score

# Integer codes whose normalized rows are (1, 0), (0.8, 0.6) for class 0 and their mirror
# images for class 1. By hand: class means (+-0.9, 0.3); within-class covariance diag(0.01,
# 0.09); all-data mean (0, 0.3), covariance diag(0.82, 0.09).
TRAIN = np.array([[5, 0], [4, 3], [-5, 0], [-4, 3]], dtype=np.int64)
LABELS = np.array([0, 0, 1, 1])
QUERY = np.array([[0, 2]], dtype=np.int64)  # normalized: (0, 1)


@pytest.fixture
def stats() -> dict:
    return fit_feature_stats(TRAIN, LABELS, 2)


def test_mahalanobis_by_hand(stats):
    # MD_c((0, 1)) = 0.9^2 / 0.01 + 0.7^2 / 0.09 = 81 + 49/9 for both classes
    expected = -(81 + 49 / 9)
    assert feature_score(QUERY, stats, "mahalanobis")[0] == pytest.approx(expected, rel=1e-12)


def test_rel_mahalanobis_by_hand(stats):
    # MD_0((0, 1)) = 0^2 / 0.82 + 0.7^2 / 0.09 = 49/9, so RMD_c = 81 for both classes
    assert feature_score(QUERY, stats, "rel_mahalanobis")[0] == pytest.approx(-81, rel=1e-12)


def test_prototype_by_hand(stats):
    # cos((0, 1), (0.9, 0.3) / |.|) = 0.3 / sqrt(0.9) = 1 / sqrt(10)
    assert feature_score(QUERY, stats, "prototype")[0] == pytest.approx(1 / math.sqrt(10))


def test_training_points_score_higher_than_an_outlier(stats):
    for name in ("prototype", "mahalanobis", "rel_mahalanobis"):
        inside = feature_score(TRAIN, stats, name)
        outside = feature_score(QUERY, stats, name)
        assert inside.min() > outside[0], name


def test_against_textbook_formulas():
    """Random data: the whitened form equals (z - mu)^T pinv(S) (z - mu) (Lee et al. 2018,
    Ren et al. 2021 eq. 3) computed directly."""
    rng = np.random.default_rng(0)
    features = rng.integers(0, 4, size=(300, 12))
    labels = rng.integers(0, 3, size=300)
    query = rng.integers(0, 4, size=(50, 12))
    stats = fit_feature_stats(features, labels, 3)
    z, q = normalize_rows(features), normalize_rows(query)
    means = np.stack([z[labels == c].mean(0) for c in range(3)])
    shared = np.cov((z - means[labels]).T, bias=True)
    background = np.cov(z.T, bias=True)
    inv, inv0 = np.linalg.pinv(shared), np.linalg.pinv(background)
    md = np.stack([np.einsum("nf,fg,ng->n", q - m, inv, q - m) for m in means], axis=1)
    md0 = np.einsum("nf,fg,ng->n", q - z.mean(0), inv0, q - z.mean(0))
    np.testing.assert_allclose(feature_score(query, stats, "mahalanobis"), -md.min(1), rtol=1e-8)
    np.testing.assert_allclose(
        feature_score(query, stats, "rel_mahalanobis"), -(md - md0[:, None]).min(1), rtol=1e-8
    )


def test_dead_channel_is_dropped_not_inverted():
    """A feature channel that is always 0 has zero variance: the pseudo-inverse ignores it."""
    rng = np.random.default_rng(1)
    features = rng.integers(1, 4, size=(200, 6))
    features[:, 2] = 0
    stats = fit_feature_stats(features, rng.integers(0, 2, size=200), 2)
    assert stats["class_whitening"].shape[0] == 5
    scores = feature_score(rng.integers(0, 4, size=(20, 6)), stats, "rel_mahalanobis")
    assert np.all(np.isfinite(scores))


def test_zero_feature_row_stays_finite(stats):
    for name in ("prototype", "mahalanobis", "rel_mahalanobis"):
        assert np.isfinite(feature_score(np.zeros((1, 2), np.int64), stats, name)).all()


def test_missing_class_is_an_error():
    with pytest.raises(ValueError, match="every class"):
        fit_feature_stats(TRAIN, LABELS, 3)


def test_add_and_drop_class(stats):
    support = np.array([[0, 3], [1, 3]])
    grown = add_class(stats, support)
    assert grown["prototypes"].shape == (3, 2)
    mean = normalize_rows(support).mean(0)
    assert np.array_equal(grown["prototypes"][2], normalize_rows(mean[None])[0])
    assert np.array_equal(grown["class_means_white"][2], mean @ stats["class_whitening"].T)
    # the new class is where the query is: it is now the most "known" of the three
    assert feature_score(QUERY, grown, "prototype")[0] > feature_score(QUERY, stats, "prototype")[0]
    back = drop_class(grown, 2)
    for name in stats:
        assert np.array_equal(back[name], stats[name]), name


def test_stats_round_trip_exactly(stats):
    again = stats_from_bytes(stats_to_bytes(stats), "x.npz")
    for name in stats:
        assert np.array_equal(again[name], stats[name]), name


@pytest.mark.parametrize("blob", [b"", b"not a zip", b"PK\x03\x04broken"])
def test_bad_stats_file_is_a_value_error(blob):
    with pytest.raises(ValueError, match="x.npz"):
        stats_from_bytes(blob, "x.npz")


def test_stats_version_checked(stats):
    with pytest.raises(ValueError, match="version"):
        stats_from_bytes(stats_to_bytes({**stats, "version": np.array(99)}), "x.npz")


def test_score_names():
    logits = np.array([[2.0, 0.0], [1.0, 1.0]])
    assert set(all_scores(logits)) == {"msp", "max_logit", "energy"}
    with pytest.raises(ValueError, match="needs feature codes"):
        score("rel_mahalanobis", logits)
    with pytest.raises(ValueError, match="unknown OOD score"):
        score("nope", logits)
    assert set(SCORES) >= {"msp", "prototype", "rel_mahalanobis"}


def test_residual_and_vim_by_hand():
    # all-data scatter diag(3.28, 0.36): x holds 90.1 % >= PRINCIPAL_ENERGY, so the residual is
    # the y offset from the mean 0.3: 0.7 for the query, 0.3 for every training point
    logits = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    stats = fit_feature_stats(TRAIN, LABELS, 2, logits)
    assert feature_score(QUERY, stats, "residual")[0] == pytest.approx(-0.7, rel=1e-12)
    assert float(stats["vim_alpha"]) == pytest.approx(2 / 0.3, rel=1e-12)
    query_logits = np.array([[1.0, 1.0]])
    expected = math.log(2 * math.e) - 2 / 0.3 * 0.7
    got = feature_score(QUERY, stats, "vim", query_logits)[0]
    assert got == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="logits"):
        feature_score(QUERY, stats, "vim")
