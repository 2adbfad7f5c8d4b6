"""Every unknown-type score lowbit computes, by name, and how a score is judged and deployed:
AUROC, FPR at 95 % TPR, and the threshold that keeps a target share of known samples.

One convention: higher = more like a known class. In-distribution samples are the positive
class of AUROC and of the true-positive rate. Logit scores (lowbit/core/logit_scores.py) need
the head's logits only; feature scores (lowbit/core/feature_scores.py) need the backbone's
feature codes and statistics fitted on the training split.
"""

from __future__ import annotations

import math

import numpy as np

from lowbit.core.feature_scores import FEATURE_SCORES, feature_score
from lowbit.core.logit_scores import LOGIT_SCORES, energy, max_logit, msp

__all__ = [
    "DEFAULT_OOD_SCORE",
    "DEFAULT_OOD_VIEWS",
    "VIEW_SCORES",
    "check_detector",
    "default_views",
    "detector_name",
    "ood_detector",
    "ood_views",
    "LOGIT_SCORES",
    "SCORES",
    "all_scores",
    "auroc",
    "energy",
    "fpr_at_95_tpr",
    "is_feature_score",
    "max_logit",
    "msp",
    "score",
    "threshold_at_tpr",
]


SCORES = (*LOGIT_SCORES, *FEATURE_SCORES)


def is_feature_score(name: str) -> bool:
    return name in FEATURE_SCORES


def score(
    name: str,
    logits: np.ndarray | None = None,
    features: np.ndarray | None = None,
    stats: dict | None = None,
) -> np.ndarray:
    """Returns the float64 score `name` per sample; feature scores need features and stats."""
    if name in LOGIT_SCORES:
        return LOGIT_SCORES[name](logits)
    if name in FEATURE_SCORES:
        if features is None or stats is None:
            raise ValueError(f"score {name!r} needs feature codes and fitted statistics")
        return feature_score(features, stats, name, logits)
    raise ValueError(f"unknown OOD score {name!r}: choose from {', '.join(SCORES)}")


def all_scores(
    logits: np.ndarray, features: np.ndarray | None = None, stats: dict | None = None
) -> dict[str, np.ndarray]:
    """Returns {name: scores} for every logit score, and every feature score given stats."""
    names = list(LOGIT_SCORES) + (list(FEATURE_SCORES) if stats is not None else [])
    return {name: score(name, logits, features, stats) for name in names}


# The detector an export deploys by default (model.json "ood": score and views), chosen by
# leave-one-known-type-out validation (lowbit/bench/ood_selection.py; docs/unknown_types.md gives
# the command and table): relative Mahalanobis on the features summed over 8 dihedral views.
DEFAULT_OOD_SCORE = "rel_mahalanobis"
DEFAULT_OOD_VIEWS = 8

# Feature scores that read the features summed over a crop's dihedral views (lowbit/core/views.py).
# vim also reads the logits, which stay those of view 0, so it is left at one view.
VIEW_SCORES = ("prototype", "mahalanobis", "rel_mahalanobis", "residual")


def default_views(name: str) -> int:
    """Returns the view count an export uses for score `name` unless told otherwise."""
    return DEFAULT_OOD_VIEWS if name in VIEW_SCORES else 1


def check_detector(name: str, views: int) -> None:
    """ValueError unless score `name` can read `views` views (1, 2, 4 or 8)."""
    from lowbit.core.views import check_views

    check_views(views)
    if name not in SCORES:
        raise ValueError(f"unknown OOD score {name!r}: choose from {', '.join(SCORES)}")
    if views > 1 and name not in VIEW_SCORES:
        raise ValueError(
            f"score {name!r} reads one view; views > 1 work with {', '.join(VIEW_SCORES)}"
        )


def detector_name(name: str, views: int = 1) -> str:
    """Returns the detector's name in metrics.json and reports: the score, with its view count
    when it reads more than one view ("rel_mahalanobis@8views")."""
    return name if views == 1 else f"{name}@{views}views"


def ood_views(ood: dict | None) -> int:
    """Returns model.json's "ood" view count (1 when absent: one view, the crop itself);
    ValueError naming the field when it is not 1, 2, 4 or 8."""
    from lowbit.core.views import check_views

    views = (ood or {}).get("views")
    return 1 if views is None else check_views(views, "model.json: ood.views")


def ood_detector(ood: dict | None) -> tuple[str, int]:
    """Returns model.json's "ood" (score, view count) (msp and 1 when absent); ValueError
    naming ood.views when the count is not 1, 2, 4 or 8, or the score reads one view."""
    score = (ood or {}).get("score") or "msp"
    views = ood_views(ood)
    if views > 1 and score not in VIEW_SCORES:
        raise ValueError(
            f"model.json: ood.views: {views} views, but score {score!r} reads one view; "
            f"views > 1 work with {', '.join(VIEW_SCORES)}; re-export the model"
        )
    return score, views


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


def threshold_at_tpr(scores_in: np.ndarray, tpr: float = 0.95) -> float:
    """Returns the largest threshold t with mean(scores_in >= t) >= tpr: with
    k = ceil(tpr * n), the k-th largest score (ValueError for a tpr outside (0, 1] or no scores).

    A sample is called known when its score >= t; every larger threshold keeps fewer than k.
    Ties at t are all kept, so the kept share may exceed `tpr`.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr={tpr} must lie in (0, 1]")
    ordered = np.sort(np.asarray(scores_in, dtype=np.float64).ravel())[::-1]
    if ordered.size == 0:
        raise ValueError("no scores to take a threshold of")
    # 1e-9 absorbs float error in tpr * n: 0.55 * 100 is 55.00000000000001, and 55 must be kept
    keep = max(1, math.ceil(tpr * ordered.size - 1e-9))
    return float(ordered[keep - 1])


def fpr_at_95_tpr(scores_in: np.ndarray, scores_out: np.ndarray, tpr: float = 0.95) -> float:
    """Returns the fraction of OOD scores >= threshold_at_tpr(scores_in, tpr).

    OOD scores equal to the threshold count as false positives (the pessimistic reading of a tie).
    """
    scores_in, scores_out = _check_scores(scores_in, scores_out)
    return float(np.mean(scores_out >= threshold_at_tpr(scores_in, tpr)))
