"""Localization metric of stage 1: AUPRO, the area under the per-region-overlap curve.

Pixel AUROC weighs every defect pixel alike, so one large defect outweighs many small ones.
PRO (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021) gives every
ground-truth region the same weight: at a threshold t, PRO(t) is the mean over regions of the
share of the region's pixels with value >= t, and FPR(t) the share of defect-free pixels with
value >= t. AUPRO integrates PRO over FPR in [0, max_fpr] (0.3, as MVTec AD and anomalib
report it) with the trapezoid rule, the curve cut at max_fpr by linear interpolation, and
divides by max_fpr, so a perfect map scores 1 and a map that ranks pixels at random about
max_fpr / 2.
"""

from __future__ import annotations

import numpy as np

from lowbit.detect.maps import label_regions

MAX_FPR = 0.3


def region_labels(masks: np.ndarray) -> np.ndarray:
    """Return int64 labels [N, H, W] of bool masks [N, H, W]: 0 for defect-free pixels, and
    1..R for the 4-connected regions of all masks, numbered image after image."""
    masks = np.asarray(masks, dtype=bool)
    labels = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for index, mask in enumerate(masks):
        regions, count = label_regions(mask)
        labels[index] = np.where(regions > 0, regions + offset, 0)
        offset += count
    return labels


def pro_curve(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (FPR, PRO) at every distinct value as threshold, highest first, from (0, 0).

    values: any numbers per pixel (higher = more anomalous); labels: region_labels' numbering,
    same shape. ValueError without a defect-free pixel, a region, or with a NaN value.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if values.shape != labels.shape:
        raise ValueError(f"values and labels differ in size: {values.size} vs {labels.size}")
    if np.isnan(values).any():
        raise ValueError("anomaly values contain NaN")
    sizes = np.bincount(labels)
    regions = np.count_nonzero(sizes[1:])
    negatives = sizes[0] if len(sizes) else 0
    if not negatives or not regions:
        raise ValueError("AUPRO needs defect-free pixels and at least one defect region")
    # each region pixel carries 1 / (its region's size x the number of regions)
    weights = np.where(labels > 0, 1.0 / (sizes[labels] * regions), 0.0)
    order = np.argsort(-values, kind="stable")
    ordered = values[order]
    last_of_value = np.flatnonzero(np.diff(ordered) != 0)
    ends = np.append(last_of_value, len(ordered) - 1)  # thresholds: each distinct value
    fpr = np.cumsum(labels[order] == 0)[ends] / negatives
    pro = np.cumsum(weights[order])[ends]
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def aupro(values: np.ndarray, labels: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """Return the normalized area under PRO(FPR) for FPR in [0, max_fpr] (module docstring)."""
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr={max_fpr} must lie in (0, 1]")
    fpr, pro = pro_curve(values, labels)
    inside = int(np.searchsorted(fpr, max_fpr, side="right"))  # FPR never decreases
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < max_fpr:  # the curve's last point is FPR 1: cut the next segment at max_fpr
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        x = np.append(x, max_fpr)
        y = np.append(y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2 / max_fpr)
