"""Layer-by-layer exact comparison of integer codes, and the float tail's stated tolerance."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# A mismatch is *explained* when the float model's pre-rounding value lies within this many
# float32 ulps of a rounding boundary (k + 1/2), or within the layer's float summation bound
# (model.json's `float_error_steps`, Higham's gamma_n bound: non-zero only for float scales):
# a float-rounding artifact of the float model, not a lowering bug. Anything farther is
# *unexplained*.
EXPLAINED_ULPS = 4


def boundary_distance_steps(pre: np.ndarray) -> np.ndarray:
    """Returns the distance of each pre-rounding value to its nearest k + 1/2, in output steps."""
    pre = pre.astype(np.float64)
    return np.abs(pre - (np.floor(pre) + 0.5))


def boundary_distance_ulps(pre: np.ndarray) -> np.ndarray:
    """Returns the distance of each pre-rounding value to its nearest k + 1/2, in float32 ulps."""
    pre = pre.astype(np.float64)
    boundary = np.floor(pre) + 0.5
    spacing = np.spacing(np.abs(boundary).astype(np.float32)).astype(np.float64)
    return np.abs(pre - boundary) / spacing


def tail_tolerance(scale: float, features: int) -> float:
    """Returns the stated bound on |logit_runtime - logit_torch| for the cosine head.

    torch computes the cosine in float32: a length-F dot product of unit vectors plus two
    normalizations (the features' and the class rows'), each with relative error <= (F + 8) *
    2^-24 (Higham's gamma_n bound, u = 2^-24). The bound allows four such terms, hence the
    factor 4: three for these, the fourth for the product with the head's scale (one more
    rounding) and the second-order cross terms of the three, each far below (F + 8) * 2^-24.
    Times the head's scale, since |cos| <= 1. The runtime's float64 tail is exact by
    comparison.
    """
    return float(scale) * (features + 8) * 2.0**-24 * 4


def compare_codes(
    reference: dict[str, np.ndarray],
    pre: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    executor: str,
    error_steps: dict[str, float | Callable[[np.ndarray], np.ndarray]] | None = None,
) -> tuple[list[dict], dict | None, np.ndarray | None]:
    """Returns (per-layer rows, first mismatch or None, per-sample "some code differs").

    `reference` is in data-flow order (the torch forward order). A mismatch is explained when
    its pre-rounding value is near a tie (EXPLAINED_ULPS, or the tensor's float summation bound
    `error_steps[name]` in output steps), or when an earlier tensor already mismatched in the same
    sample: the executor then computed this tensor from other inputs than the float model did.
    """
    error_steps = error_steps or {}
    rows, first = [], None
    inherited: np.ndarray | None = None  # per sample: an earlier tensor mismatched
    for name, expected in reference.items():
        if name not in candidate:
            continue
        got = candidate[name]
        if got.shape != expected.shape:
            rows.append(
                {
                    "executor": executor,
                    "tensor": name,
                    "checked_values": 0,
                    "mismatches": -1,
                    "unexplained": int(expected.size),
                    "error": f"shape {got.shape} != {expected.shape}",
                }
            )
            continue
        diff = got != expected
        mismatches = int(diff.sum())
        unexplained = 0
        if mismatches:
            near = pre[name][diff]
            far = boundary_distance_ulps(near) > EXPLAINED_ULPS
            bound = error_steps.get(name, 0.0)
            limit = bound(np.argwhere(diff)) if callable(bound) else bound
            far &= boundary_distance_steps(near) > limit
            if inherited is not None:  # every code tensor has the batch as its first axis
                far &= ~inherited[np.nonzero(diff)[0]]
            unexplained = int(far.sum())
            hit = diff.reshape(len(diff), -1).any(axis=1)
            inherited = hit if inherited is None else inherited | hit
            if first is None:
                index = tuple(int(i) for i in np.argwhere(diff)[0])
                value = float(pre[name][index])
                first = {
                    "executor": executor,
                    "tensor": name,
                    "index": list(index),
                    "channel": index[1] if len(index) > 1 else None,
                    "expected": int(expected[index]),
                    "got": int(got[index]),
                    "pre_rounding": value,
                    "distance_ulps": float(boundary_distance_ulps(np.array([value]))[0]),
                    "distance_steps": float(boundary_distance_steps(np.array([value]))[0]),
                    "float_error_steps": float(np.ravel(np.asarray(limit, dtype=float))[0]),
                }
        rows.append(
            {
                "executor": executor,
                "tensor": name,
                "checked_values": int(expected.size),
                "mismatches": mismatches,
                "unexplained": unexplained,
            }
        )
    return rows, first, inherited  # None: nothing differs


def compare_tail(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: float | np.ndarray,
    skip: np.ndarray | None = None,
) -> dict:
    """Returns the float tail's max abs difference against its stated tolerance.

    `skip` marks samples whose codes already (explainedly) differ: their tails start from other
    integers, so the tolerance, which bounds only the tail's own float error, does not apply.
    """
    stated = float(np.max(tolerance))  # reported; an array is checked element by element
    if reference.shape != candidate.shape:
        return {"max_abs_diff": None, "tolerance": stated, "ok": False}
    keep = slice(None) if skip is None else ~skip
    difference = np.abs(reference[keep].astype(np.float64) - candidate[keep].astype(np.float64))
    limit = tolerance[keep] if np.ndim(tolerance) else tolerance
    worst = float(difference.max(initial=0.0))
    return {
        "max_abs_diff": worst,
        "tolerance": stated,
        "ok": bool(np.all(difference <= limit)),
        "argmax_agree": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


# Every logit score lowbit deploys (msp, max_logit, energy) moves by at most max_c |d logit_c|
# when the logits move: the gradients of energy and max_logit have L1 norm 1, msp's at most
# 2 p (1 - p) <= 1/2. So the logit tail's tolerance bounds the score's. The float64 score
# computation adds rounding of order 1e-15 of its inputs: SCORE_ROUNDING covers it.
SCORE_ROUNDING = 1e-12


def compare_decisions(
    reference: np.ndarray,
    candidate: np.ndarray,
    threshold: float,
    tolerance: float,
    skip: np.ndarray | None = None,
) -> dict:
    """Returns counts of equal scores and of known/unknown decisions that differ.

    A decision that differs is explained when the reference score lies within `tolerance` of
    the threshold (the two executors' scores may then fall either side), or when the sample's
    codes already (explainedly) differ (`skip`); any other difference is unexplained.
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    flips = (reference >= threshold) != (candidate >= threshold)
    near = np.abs(reference - threshold) <= tolerance
    if skip is not None:
        near = near | skip
    keep = slice(None) if skip is None else ~skip
    difference = np.abs(reference[keep] - candidate[keep])
    return {
        "checked": int(len(reference)),
        "scores_equal": int(np.sum(reference == candidate)),
        "max_abs_diff": float(difference.max(initial=0.0)),
        "decisions_differ": int(flips.sum()),
        "unexplained": int(np.sum(flips & ~near)),
        "score_out_of_tolerance": int(np.sum(difference > tolerance)),
    }
