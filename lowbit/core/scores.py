"""Every unknown-type score lowbit computes, by name: logit scores and feature scores.

One convention: higher = more like a known class. Logit scores need the head's logits only;
feature scores (lowbit/core/feature_scores.py) need the backbone's feature codes and statistics
fitted on the training split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lowbit.core.feature_scores import FEATURE_SCORES, feature_score


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1)
    return top + np.log(np.exp(logits - top[:, None]).sum(axis=1))


def msp(logits: np.ndarray) -> np.ndarray:
    """Returns the maximum softmax probability per row (Hendrycks & Gimpel 2017), float64."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(logits.max(axis=1) - _logsumexp(logits))


def max_logit(logits: np.ndarray) -> np.ndarray:
    """Returns the largest logit per row (Hendrycks et al. 2022, MaxLogit), float64."""
    return np.asarray(logits, dtype=np.float64).max(axis=1)


def energy(logits: np.ndarray) -> np.ndarray:
    """Returns the negative free energy logsumexp(logits) at T = 1 (Liu et al. 2020), float64."""
    return _logsumexp(logits)


LOGIT_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "msp": msp,
    "max_logit": max_logit,
    "energy": energy,
}
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


# The score an export deploys by default (model.json "ood"), chosen by leave-one-known-type-out
# validation (lowbit/bench/ood_selection.py; docs/unknown_types.md gives the command and table).
DEFAULT_OOD_SCORE = "rel_mahalanobis"
