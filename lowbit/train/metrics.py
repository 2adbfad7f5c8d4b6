"""Classification and OOD metrics: pure numpy functions of labels, predictions and logits.

OOD scores follow one convention: higher means more in-distribution. In-distribution samples
are the positive class of AUROC and of the true-positive rate in FPR@95%TPR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lowbit.core.scores import all_scores, energy, max_logit, msp

__all__ = ["energy", "max_logit", "msp"]


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Returns the fraction of `pred` equal to `y`."""
    y, pred = np.asarray(y), np.asarray(pred)
    if not len(y):
        raise ValueError("accuracy of no samples")
    return float(np.mean(y == pred))


def per_class_accuracy(
    y: np.ndarray, pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, float | None]:
    """Returns {class name: recall of that class}; None for a class with no samples."""
    y, pred = np.asarray(y), np.asarray(pred)
    result: dict[str, float | None] = {}
    for label, name in enumerate(class_names):
        mask = y == label
        result[name] = float(np.mean(pred[mask] == label)) if mask.any() else None
    return result


def confusion_matrix(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Returns int64 [K, K] counts: row = true class, column = predicted class."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    counts = np.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _check_scores(scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores_in = np.asarray(scores_in, dtype=np.float64).ravel()
    scores_out = np.asarray(scores_out, dtype=np.float64).ravel()
    if not len(scores_in) or not len(scores_out):
        raise ValueError("OOD metrics need at least one in-distribution and one OOD score")
    if np.isnan(scores_in).any() or np.isnan(scores_out).any():
        raise ValueError("OOD scores contain NaN")
    return scores_in, scores_out


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Returns P(s_in > s_out) + P(s_in == s_out) / 2: the area under the ROC curve.

    This is the Mann-Whitney U statistic over n_in * n_out, counted exactly in integers: each
    (in, out) pair scores 2 when the in-distribution score is higher, 1 on a tie, 0 otherwise.
    """
    scores_in, scores_out = _check_scores(scores_in, scores_out)
    ordered = np.sort(scores_in)
    below_or_equal = np.searchsorted(ordered, scores_out, side="right")
    below = np.searchsorted(ordered, scores_out, side="left")
    higher = len(ordered) - below_or_equal
    ties = below_or_equal - below
    twice_u = int(np.sum(2 * higher + ties, dtype=np.int64))
    return twice_u / (2 * len(scores_in) * len(scores_out))


def fpr_at_95_tpr(scores_in: np.ndarray, scores_out: np.ndarray, tpr: float = 0.95) -> float:
    """Returns the fraction of OOD scores >= t, for the largest t that keeps >= tpr of in-dist.

    A sample is called in-distribution when its score >= t. With k = ceil(tpr * n_in), t is the
    k-th largest in-distribution score: every larger threshold keeps fewer than k samples. Ties
    at t are all kept, so the true-positive rate may exceed `tpr`, and OOD scores equal to t count
    as false positives (the pessimistic reading of a tie).
    """
    scores_in, scores_out = _check_scores(scores_in, scores_out)
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr={tpr} must lie in (0, 1]")
    # 1e-9 absorbs float error in tpr * n: 0.55 * 100 is 55.00000000000001, and 55 must be kept
    keep = max(1, math.ceil(tpr * len(scores_in) - 1e-9))
    threshold = np.sort(scores_in)[::-1][keep - 1]
    return float(np.mean(scores_out >= threshold))


def ood_metrics(
    logits_in: np.ndarray,
    logits_out: np.ndarray,
    features_in: np.ndarray | None = None,
    features_out: np.ndarray | None = None,
    stats: dict | None = None,
) -> dict[str, dict[str, float]]:
    """Returns {score name: {"auroc": ..., "fpr95": ...}} for every logit score, and for every
    feature score when feature codes and their fitted statistics are given."""
    scores_in = all_scores(logits_in, features_in, stats)
    scores_out = all_scores(logits_out, features_out, stats)
    return {
        name: {
            "auroc": auroc(scores_in[name], scores_out[name]),
            "fpr95": fpr_at_95_tpr(scores_in[name], scores_out[name]),
        }
        for name in scores_in
    }
