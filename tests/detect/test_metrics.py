"""AUPRO (lowbit/detect/metrics.py) against a brute-force evaluation of its definition."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.detect.metrics import aupro, pro_curve, region_labels


def brute_force_aupro(values, masks, max_fpr=0.3):
    """Every distinct value as threshold: PRO = mean over regions of the covered share,
    FPR = share of defect-free pixels flagged; trapezoid up to max_fpr, cut by interpolation."""
    labels = region_labels(masks)
    regions = [labels == r for r in range(1, labels.max() + 1)]
    good = labels == 0
    points = [(0.0, 0.0)]
    for t in sorted(set(values.ravel().tolist()), reverse=True):
        flagged = values >= t
        points.append((flagged[good].mean(), np.mean([flagged[r].mean() for r in regions])))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@pytest.mark.parametrize("seed", range(12))
def test_aupro_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, h, w = rng.integers(1, 4), rng.integers(3, 9), rng.integers(3, 9)
    masks = rng.random((n, h, w)) < rng.uniform(0.05, 0.4)
    masks[0, 0, 0] = True  # at least one region
    masks[-1, -1, -1] = False  # at least one defect-free pixel
    values = rng.integers(0, rng.choice([3, 20, 1000]), (n, h, w))  # ties when few values
    values = values + 2 * masks * rng.integers(0, 3)  # defects somewhat higher
    for max_fpr in (0.05, 0.3, 1.0):
        expected = brute_force_aupro(values, masks, max_fpr)
        # float sums in another order: equal up to rounding (a metric, no exactness claim)
        assert aupro(values, region_labels(masks), max_fpr) == pytest.approx(expected, rel=1e-12)


def test_perfect_and_inverted_maps():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:8, 0:2] = True
    masks[1, 0, 7] = True  # a one-pixel region weighs as much as the others
    labels = region_labels(masks)
    assert labels.max() == 3
    assert aupro(masks.astype(int), labels) == 1.0
    assert aupro(-masks.astype(int), labels) == 0.0
    flat = np.zeros(masks.shape)  # one threshold: everything flagged at FPR 1
    assert aupro(flat, labels, 1.0) == pytest.approx(0.5)


def test_each_region_weighs_the_same():
    """A map that finds the small region and misses the big one scores half of PRO."""
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 0:6, 0:6] = True  # 36 px
    masks[0, 9, 9] = True  # 1 px
    values = np.zeros((1, 10, 10))
    values[0, 9, 9] = 1
    fpr, pro = pro_curve(values, region_labels(masks))
    assert fpr[1] == 0 and pro[1] == 0.5


def test_bad_inputs():
    masks = np.zeros((1, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="defect region"):
        aupro(np.zeros((1, 4, 4)), region_labels(masks))
    masks[0, 1, 1] = True
    with pytest.raises(ValueError, match="NaN"):
        aupro(np.full((1, 4, 4), np.nan), region_labels(masks))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(np.zeros((1, 4, 4)), region_labels(masks), 0)
