"""Open-set decision: a score threshold calibrated on known classes at a target TPR."""

from __future__ import annotations

import numpy as np

from lowbit.errors import ConfigError

SCORES = ("msp", "max_logit", "energy")


def ood_score(logits: np.ndarray, score: str) -> np.ndarray:
    """Returns the per-sample score (higher = more in-distribution) in the head's own units."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1)
    if score == "max_logit":
        return top
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    if score == "energy":
        return lse  # negative free energy, T = 1
    if score == "msp":
        return np.exp(top - lse)
    raise ConfigError(f"unknown OOD score {score!r}: choose from {', '.join(SCORES)}")


def calibrate_threshold(scores: np.ndarray, tpr: float = 0.95) -> float:
    """Returns the largest threshold t with mean(scores >= t) >= tpr (known samples kept)."""
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr={tpr}: must lie in (0, 1]")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if ordered.size == 0:
        raise ConfigError("cannot calibrate an OOD threshold on an empty calibration set")
    keep = int(np.ceil(tpr * ordered.size - 1e-9))  # samples that must stay at or above t
    return float(ordered[max(keep, 1) - 1])


def is_known(logits: np.ndarray, score: str, threshold: float) -> np.ndarray:
    """Returns a boolean per sample: score >= threshold (known) or not (unknown)."""
    return ood_score(logits, score) >= threshold


def integer_calibration(
    x_val: np.ndarray, score: str = "msp", tpr: float = 0.95, calibrated_on: str = "val"
):
    """Returns graph -> model.json's "ood" entry, calibrated on that integer graph's logits.

    The threshold is in the units the integer graph's float64 tail produces (for the cosine head
    scale * d_c / (sqrt(n) * |w_c|) from exact integers d_c, n), so the runtime, and any consumer
    computing the same tail, keeps exactly the target TPR of the calibration images. The torch
    float model's logits agree within the tail tolerance of lowbit/verify/compare.py.
    """

    def calibrate(int_graph) -> dict:
        from lowbit.runtime import Runtime

        logits = Runtime(int_graph).run(x_val)["logits"]
        threshold = calibrate_threshold(ood_score(logits, score), tpr)
        return {
            "score": score,
            "threshold": threshold,
            "tpr": tpr,
            "calibrated_on": calibrated_on,
            "calibration_images": int(len(x_val)),
            "units": "score of model.int.onnx's logits",
        }

    ood_score(np.zeros((1, 2)), score)  # an unknown score name fails before any export work
    return calibrate
