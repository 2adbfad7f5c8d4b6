"""Unknown-type scores of a head's logits alone (higher = more like a known class), float64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
