"""Classification and OOD metrics: pure numpy functions of labels, predictions and logits.

The OOD scores and their AUROC / FPR@95%TPR live in lowbit/core/scores.py; `ood_metrics`
applies every score to known and unknown samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lowbit.core.scores import all_scores, auroc, fpr_at_95_tpr


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


def feature_metrics(
    features_in: np.ndarray, features_out: np.ndarray, stats: dict
) -> dict[str, dict[str, float]]:
    """Returns {feature score name: {"auroc": ..., "fpr95": ...}} of in vs out feature codes."""
    from lowbit.core.feature_scores import SCORE_FUNCTIONS

    result = {}
    for name, function in SCORE_FUNCTIONS.items():
        scores_in, scores_out = function(features_in, stats), function(features_out, stats)
        result[name] = {
            "auroc": auroc(scores_in, scores_out),
            "fpr95": fpr_at_95_tpr(scores_in, scores_out),
        }
    return result


def view_score_metrics(
    splits, summed: Callable[[str], np.ndarray], views: int, stats: dict | None = None
) -> dict[str, dict[str, float]]:
    """Returns {"<score>@<views>views": {"auroc", "fpr95"}} for every score of VIEW_SCORES:
    statistics fitted on the training split's features summed over the views, splits.test
    against splits.ood. `summed(split name)` gives that split's summed features from one
    executor (fake-quant model, integer runtime): equal codes give equal numbers. `stats`:
    those statistics when the caller has them (an export fitted them on the same codes)."""
    from lowbit.core.feature_scores import fit_feature_stats
    from lowbit.core.scores import VIEW_SCORES, detector_name

    if stats is None:
        stats = fit_feature_stats(summed("train"), splits.train.y, len(splits.class_names))
    scored = feature_metrics(summed("test"), summed("ood"), stats)
    return {detector_name(name, views): scored[name] for name in VIEW_SCORES}


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
