"""Open-set decision: a score threshold calibrated on known classes at a target TPR."""

from __future__ import annotations

import numpy as np

from lowbit.artifacts import INT_GRAPH_FILE
from lowbit.core import scores as score_lib
from lowbit.core.scores import SCORES
from lowbit.errors import ConfigError


def _check_score_name(score: str) -> None:
    if score not in SCORES:
        raise ConfigError(f"unknown OOD score {score!r}: choose from {', '.join(SCORES)}")


def ood_score(
    logits: np.ndarray,
    score: str,
    features: np.ndarray | None = None,
    stats: dict | None = None,
) -> np.ndarray:
    """Returns the per-sample score (higher = more in-distribution) in the head's own units;
    feature scores (lowbit.core.feature_scores) need the feature codes and fitted stats."""
    _check_score_name(score)
    try:
        return score_lib.score(score, logits, features, stats)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def calibrate_threshold(scores: np.ndarray, tpr: float = 0.95) -> float:
    """Returns the largest threshold t with mean(scores >= t) >= tpr (known samples kept)."""
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr={tpr}: must lie in (0, 1]")
    if np.asarray(scores).size == 0:
        raise ConfigError("cannot calibrate an OOD threshold on an empty calibration set")
    return score_lib.threshold_at_tpr(scores, tpr)


def is_known(
    logits: np.ndarray,
    score: str,
    threshold: float,
    features: np.ndarray | None = None,
    stats: dict | None = None,
) -> np.ndarray:
    """Returns a boolean per sample: score >= threshold (known) or not (unknown)."""
    return ood_score(logits, score, features, stats) >= threshold


def integer_calibration(
    x_val: np.ndarray,
    score: str = "msp",
    tpr: float = 0.95,
    calibrated_on: str = "val",
    *,
    fit: tuple[np.ndarray, np.ndarray, int] | None = None,
    stats: dict | None = None,
    views: int = 1,
):
    """Returns graph -> model.json's "ood" entry, calibrated on that integer graph's outputs.

    The threshold is in the units the integer graph's float64 tail produces (for the cosine head
    scale * d_c / (sqrt(n) * |w_c|) from exact integers d_c, n; for a feature score, the score of
    the exact feature codes), so the runtime, and any consumer computing the same tail, keeps
    exactly the target TPR of the calibration images. Feature statistics are fitted on the
    graph's own feature codes of `fit` = (x_train, y_train, classes), or taken from `stats`; the
    entry then carries them under "stats_arrays" (export_model writes them to model.ood.npz).
    With `views` > 1 the feature codes are summed over that many dihedral views of each image
    (lowbit.core.views), for the statistics and the threshold alike; the entry says so.
    """
    from lowbit.core.feature_scores import FEATURE_SCORES, fit_feature_stats
    from lowbit.core.scores import check_detector

    if score in FEATURE_SCORES and fit is None and stats is None:
        raise ConfigError(f"OOD score {score!r} needs feature statistics: fit them on train")
    try:
        check_detector(score, views)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    def calibrate(int_graph) -> dict:
        from lowbit.fewshot.features import FEATURE_TENSOR, runtime_view_outputs
        from lowbit.runtime import Runtime

        runtime = Runtime(int_graph)
        fitted, fitted_images = stats, None
        if fit is not None:
            x_train, y_train, classes = fit
            train_logits, train_features = runtime_view_outputs(runtime, x_train, views)
            fitted = fit_feature_stats(train_features, y_train, classes, train_logits)
            fitted_images = int(len(x_train))
        logits, features = runtime_view_outputs(runtime, x_val, views)
        scores = ood_score(logits, score, features, fitted)
        entry = {
            "score": score,
            "views": views,
            "threshold": calibrate_threshold(scores, tpr),
            "tpr": tpr,
            "calibrated_on": calibrated_on,
            "calibration_images": int(len(x_val)),
            "units": f"{score} of {INT_GRAPH_FILE}'s outputs"
            + (f", features summed over {views} dihedral views" if views > 1 else ""),
        }
        if fitted is not None:
            entry["stats"] = {
                "fitted_on": "train" if fit is not None else "previous export + support images",
                "fitted_images": fitted_images,
                "feature_tensor": FEATURE_TENSOR,
            }
            entry["stats_arrays"] = fitted
        return entry

    _check_score_name(score)  # fails before any export work
    return calibrate
